r"""An adaptive-step reverse-SDE solver with an embedded error estimate ("Gotta Go Fast").

Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When Generating Data with Score-Based Models"
(arXiv:2105.14080), Alg. 1. Going backwards from :math:`t` to :math:`t - h` on the reverse SDE
:math:`\mathrm{d}x = \bar f(x, t)\,\mathrm{d}t + g(t)\,\mathrm{d}\bar w` (drift
:math:`\bar f = f - g^2\nabla\log p_t`, see :meth:`sdekit.SDE.reverse`), with one draw
:math:`z \sim \mathcal N(0, I)` shared by both stages,

.. math:: x' = x - h\bar f(x, t) + \sqrt h\, g(t)\, z \quad\text{(Euler–Maruyama)},

.. math:: \tilde x = x - h\bar f(x', t - h) + \sqrt h\, g(t - h)\, z, \qquad
          x'' = \tfrac12 (x' + \tilde x) \quad\text{(stochastic improved Euler)}.

The difference of the two is the local error estimate, scaled by a mixed tolerance and measured
in the root-mean-square norm over the :math:`n` data dimensions:

.. math:: \delta = \max\bigl(\varepsilon_{\rm abs},\ \varepsilon_{\rm rel}
          \max(|x'|, |x'_{\rm prev}|)\bigr), \qquad
          E = \Bigl\| \frac{x' - x''}{\delta} \Bigr\|_2 \big/ \sqrt n .

The step is accepted when :math:`E \le 1` (then :math:`x \leftarrow x''` with extrapolation, else
:math:`x'`, and :math:`x'_{\rm prev} \leftarrow x'`), and in either case the next step is
:math:`h \leftarrow \min(t - t_{\rm end},\ \theta h E^{-r})`. Every sample has its own time and step
size, as in the paper's code, so a hard sample does not slow the others down.

One departure from the paper: a rejected step does not throw its Brownian increment away. The
error estimate grows with the step's length :math:`|x' - x|`, so redrawing the noise until a step
is accepted favours increments that cancel the drift, a bias that grows as the tolerance tightens
(on a Gaussian, +15 % in the standard deviation at :math:`\varepsilon_{\rm rel} = 0.01`).
As in Rackauckas & Nie 2017 ("Adaptive methods for stochastic differential equations via natural
embeddings and rejection sampling with memory"), each sample keeps the known future of its
Brownian path as a stack of pieces, a shorter retry draws its increment from the Brownian bridge
inside the rejected one, and a step never straddles two known pieces. The simulated path is then
an exact Brownian path and the step control cannot bias it.

With a diffusion :math:`g(t)` independent of :math:`x` the shared-noise Heun average is consistent
with the Itô SDE; for a state-dependent diffusion it would converge to the Stratonovich solution,
so such SDEs are refused.
"""

from __future__ import annotations

import torch

from ..checks import check_positive
from ..sde import SDE, ScoreFn
from .noise import NoiseSource
from .registry import register

# Most consecutive rejections the Brownian memory holds (each shrinks the step by at least 0.9x).
_MEMORY = 16


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(..., batch)`` per-sample values shaped to broadcast against ``(..., batch, *data)``."""
    return v.reshape(*v.shape, *([1] * (x.ndim - v.ndim)))


def _check_additive(sde: SDE, x: torch.Tensor, t: torch.Tensor) -> None:
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        g = sde.diffusion(x_, t)
    if g.requires_grad:
        raise ValueError(
            "sde must have a diffusion independent of x for adaptive_sde (the shared-noise improved "
            "Euler step is consistent with Ito only for additive noise)"
        )


@register(
    "adaptive_sde",
    order=1,
    stochastic=True,
    needs_marginal=False,
    evals_per_step=None,
    aliases=("Gotta Go Fast",),
    default_grid="uniform",
    paper="Jolicoeur-Martineau et al. 2021, Gotta Go Fast (arXiv:2105.14080), Alg. 1",
)
def adaptive_sde(
    score: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    eps_abs: float = 0.0078,
    eps_rel: float = 0.05,
    h_init: float = 0.01,
    safety: float = 0.9,
    exponent: float = 0.9,
    extrapolate: bool = True,
    max_iterations: int = 100_000,
) -> torch.Tensor:
    r"""Integrate the reverse SDE from ``ts[0]`` to ``ts[-1]`` with adaptive per-sample steps.

    Only the ends of ``ts`` are used. Each iteration calls ``score`` twice on the whole batch
    (samples that have arrived take zero steps), so the number of score evaluations is
    ``2 * iterations``.

    Args:
        eps_abs, eps_rel: absolute and relative tolerances (the paper's defaults, for data in
            :math:`[-1, 1]`: ``eps_abs = 0.0078``; ``eps_rel`` 0.01 for quality to 0.05 for speed).
        h_init: the first step, as a fraction of ``ts[0] - ts[-1]`` (the paper's 0.01 for T = 1).
        safety, exponent: :math:`\theta` and :math:`r` of the step update (paper: 0.9, 0.9).
        extrapolate: continue from the improved-Euler value :math:`x''` (True) or from :math:`x'`.
        max_iterations: iterations after which it gives up with a ``RuntimeError``.
    """
    check_positive("eps_abs", eps_abs)
    check_positive("eps_rel", eps_rel)
    if not (0 < h_init <= 1):
        raise ValueError(f"h_init must lie in (0, 1], got {h_init}")
    if not (0 < safety <= 1):
        raise ValueError(f"safety must lie in (0, 1], got {safety}")
    check_positive("exponent", exponent)
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1D grid of at least 2 times, got shape {tuple(ts.shape)}")
    t_start, t_end = ts[0].to(torch.float64), ts[-1].to(torch.float64)
    if ts.device.type == "cpu" and not bool(t_end < t_start):
        raise ValueError(
            f"ts must decrease from ts[0] to ts[-1], got {float(t_start)} -> {float(t_end)}"
        )
    batch = x.shape[0]
    _check_additive(sde, x, t_start.to(x.dtype).expand(batch))
    reverse = sde.reverse(score)

    # Per-sample time and step in float64, so that the end time is hit exactly.
    t = t_start.expand(batch).clone()
    h = torch.full_like(t, h_init) * (t_start - t_end)
    x_prev = x
    n = x[0].numel()
    # Brownian memory: the known future of each sample's Brownian path, as a stack of contiguous
    # pieces (length, increment), the nearest on top at index depth - 1.
    lengths = torch.zeros(_MEMORY, batch, dtype=torch.float64, device=x.device)
    increments = x.new_zeros((_MEMORY, *x.shape))
    depth = torch.zeros(batch, dtype=torch.long, device=x.device)
    slots = torch.arange(_MEMORY, device=x.device)[:, None]
    # The loop must know when every sample has arrived: one host sync per iteration (two score
    # evaluations) is negligible next to the network, and avoids both a fixed iteration budget
    # and evaluating the score for samples that are done.
    for _ in range(max_iterations):
        active = t > t_end
        has = depth > 0
        top = slots == depth - 1
        top_len = (lengths * top).sum(0)
        top_inc = (increments * _bc(top, increments)).sum(0)
        h = torch.where(has, torch.minimum(h, top_len), h)  # a step never straddles two pieces
        whole = has & (h >= top_len)
        # Brownian bridge inside the top piece, or a fresh increment beyond the known path.
        safe_len = torch.where(has, top_len, torch.ones_like(top_len))
        mean = torch.where(has, h / safe_len, torch.zeros_like(h))
        var = torch.where(has, h * (top_len - h) / safe_len, h)
        dw = _bc(mean.to(x.dtype), x) * top_inc + _bc(var.sqrt().to(x.dtype), x) * noise(x)

        h_x = _bc(h.to(x.dtype), x)
        t_x, s_x = t.to(x.dtype), (t - h).to(x.dtype)
        drift, g = reverse.drift(x, t_x), _bc(reverse.diffusion(x, t_x), x)
        x_em = x - h_x * drift + g * dw
        drift_2 = reverse.drift(x_em, s_x)
        g_2 = _bc(reverse.diffusion(x_em, s_x), x)
        x_ie = x - 0.5 * h_x * (drift + drift_2) + 0.5 * (g + g_2) * dw
        delta = torch.clamp(eps_rel * torch.maximum(x_em.abs(), x_prev.abs()), min=eps_abs)
        err = torch.sqrt((((x_em - x_ie) / delta) ** 2).flatten(1).sum(1) / n).to(torch.float64)

        accept = (err <= 1) & active
        x = torch.where(_bc(accept, x), x_ie if extrapolate else x_em, x)
        x_prev = torch.where(_bc(accept, x), x_em, x_prev)
        # The step's part of the path is now known: the top piece keeps what lies beyond the
        # step; a rejected step pushes its own piece, to be bridged by the shorter retries.
        rest = has & ~whole & active
        lengths = torch.where(top & rest, top_len - h, lengths)
        increments = torch.where(_bc(top & rest, increments), top_inc - dw, increments)
        push = active & ~accept & ~whole
        new = (slots == depth) & push
        lengths = torch.where(new, h, lengths)
        increments = torch.where(_bc(new, increments), dw, increments)
        overflow = (push & (depth >= _MEMORY)).any()
        depth = depth + push.long() - (accept & whole).long()

        arrived = h >= t - t_end  # the step was capped at the distance to the end
        t = torch.where(accept, torch.where(arrived, t_end, t - h), t)
        # E = 0 gives an infinite proposal, capped by the distance to the end.
        proposal = safety * h * err.pow(-exponent)
        h = torch.where(t > t_end, torch.minimum(t - t_end, proposal), torch.zeros_like(h))

        status = torch.stack([(t > t_end).any(), torch.isfinite(err).all(), overflow]).tolist()
        running, finite, overflowed = status
        if not finite:
            raise FloatingPointError(
                "the error estimate of adaptive_sde is not finite: the score returned NaN or inf"
            )
        if overflowed:
            raise RuntimeError(
                f"adaptive_sde rejected more than {_MEMORY} steps in a row; loosen eps_abs / eps_rel"
            )
        if not running:
            return x
    raise RuntimeError(
        f"adaptive_sde did not reach t = {float(t_end)} in max_iterations = {max_iterations} "
        "iterations; loosen eps_abs / eps_rel or raise max_iterations"
    )
