r"""The probability-flow ODE solved with torchdiffeq, for any SDE (nonlinear ones too).

Integrates :math:`\dot x = f - \tfrac12 GG^\top s_\theta - \tfrac12\nabla\cdot(GG^\top)`
(Song et al. 2021, eq. 13 and App. D, eq. 18) from ``ts[0]`` to ``ts[-1]`` with any torchdiffeq
method (Chen et al. 2018): an adaptive one (``"dopri5"``, the default, like score_sde's RK45 with
tolerances 1e-5) or a fixed-step one (``"euler"``, ``"midpoint"``, ``"rk4"``, ...) stepping on the
grid ``ts``.

The model is only ever called at times in ``[ts[-1], ts[0]]``. Two things could take an adaptive
solver outside:

- an accepted step past the end time, interpolated back (dense output). The end time is passed as
  torchdiffeq's ``step_t``, which shortens the step to land on it;
- torchdiffeq's initial step-size probe, which ignores ``step_t``: it evaluates the ODE at
  :math:`t_0 \pm h_0` with :math:`h_0 = 0.01\,\lVert x\rVert/\lVert\dot x\rVert` (Hairer, Nørsett &
  Wanner 1993, §II.4), and on centred data the probability-flow drift at :math:`T` is nearly zero
  (VP: :math:`-\tfrac12\beta x + \tfrac12\beta x`), so :math:`h_0` can be hundreds of times the
  interval. The first step is therefore chosen here by the same algorithm with :math:`h_0` and the
  result capped at the interval length (as SciPy's ``solve_ivp`` does), and passed as
  ``first_step``: one more model call than torchdiffeq's own choice, and no probe.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchdiffeq import odeint

from ..checks import NONFINITE_HINT, check_positive
from ..sde import SDE, ScoreFn
from .noise import NoiseSource
from .registry import register

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: the order of each adaptive method's solution (torchdiffeq's ``order``); its error estimate is
#: one lower
ADAPTIVE_ORDER = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


def _rms(v: torch.Tensor) -> torch.Tensor:
    return v.pow(2).mean().sqrt()


def initial_step(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    *,
    order: int,
    rtol: float,
    atol: float,
) -> float:
    r"""The first step of an adaptive solver from ``t0`` towards ``t1``, with every probe in between.

    Hairer, Nørsett & Wanner (1993), §II.4 (the algorithm torchdiffeq and SciPy use), with
    :math:`h_0` and the result capped at :math:`|t_1 - t_0|` as in SciPy's ``select_initial_step``;
    the rule is :func:`initial_step_tensor`'s, with the RMS norm over the whole batch. Two calls of
    ``func``.
    """
    f0 = func(t0, x)
    h = initial_step_tensor(
        func, x, f0, float(t0), float(t1), order=order, rtol=rtol, atol=atol, norm=_rms
    )
    return float(h)


def initial_step_tensor(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    f0: torch.Tensor,
    t0: float,
    t1: float,
    *,
    order: int,
    rtol: float,
    atol: float,
    norm: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    r"""Hairer's first step as tensor arithmetic (no host sync): one call of ``func``.

    Hairer, Nørsett & Wanner (1993), §II.4: with :math:`f_0 = f(t_0, x)` given,
    :math:`d_0 = \lVert x/s\rVert`, :math:`d_1 = \lVert f_0/s\rVert`
    (:math:`s = \mathrm{atol} + \mathrm{rtol}|x|`), :math:`h_0 = 0.01\,d_0/d_1` (:math:`10^{-6}`
    when either is below :math:`10^{-5}`), capped at :math:`|t_1 - t_0|` as in SciPy's
    ``select_initial_step``; one Euler probe :math:`f_1 = f(t_0 \pm h_0, x \pm h_0 f_0)`,
    :math:`d_2 = \lVert (f_1 - f_0)/s\rVert / h_0` and
    :math:`h = \min(100 h_0, (0.01/\max(d_1, d_2))^{1/(q + 1)}, |t_1 - t_0|)` with :math:`q` =
    ``order``, the order of the method's error estimate (4 for dopri5). Every time ``func`` sees
    lies in :math:`[t_0, t_1]`.

    ``norm`` maps a tensor shaped like ``x`` to a 0-dim tensor (one step for the whole batch) or
    to ``(batch,)`` (one step per sample; ``func`` then receives a ``(batch,)`` time); the step has
    the norm's shape.
    """
    interval = abs(t1 - t0)
    direction = 1.0 if t1 > t0 else -1.0
    scale = atol + rtol * x.abs()
    d0, d1 = norm(x / scale), norm(f0 / scale)
    # a NaN norm (a NaN f0) takes the small branch too, so that the probe's time stays finite
    small = ~(d0 >= 1e-5) | ~(d1 >= 1e-5)
    h0 = torch.where(small, 1e-6, 0.01 * d0 / d1).clamp(max=interval)
    per_data = h0.reshape(h0.shape + (1,) * (x.ndim - h0.ndim))
    # the clamp absorbs round-off only (h0 <= interval), so the probe cannot pass t1
    t_probe = (t0 + direction * h0).clamp(min(t0, t1), max(t0, t1))
    f1 = func(t_probe, x + direction * per_data * f0)
    d2 = norm((f1 - f0) / scale) / h0
    d_max = torch.maximum(d1, d2)
    h1 = torch.where(
        d_max <= 1e-15,
        torch.clamp(1e-3 * h0, min=1e-6),
        (0.01 / d_max) ** (1.0 / (order + 1)),
    )
    return torch.minimum(100 * h0, h1).clamp(max=interval)


@register(
    "ode",
    order=5,
    stochastic=False,
    needs_marginal=False,
    evals_per_step=None,
    noise_type="general",
    observes_only=True,
    aliases=("probability_flow", "pf_ode"),
    paper="Song et al. 2021 (score SDE), eq. 13; Chen et al. 2018 (torchdiffeq)",
)
def probability_flow(
    score: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Solve the probability-flow ODE with torchdiffeq's ``solver`` (dopri5: order 5).

    Args:
        solver: a torchdiffeq method; adaptive ones (:data:`ADAPTIVE`) use ``rtol``/``atol`` and
            report their states at the grid times only, fixed-step ones step on the grid.
        rtol, atol: the adaptive solver's tolerances, > 0.

    Raises ``FloatingPointError`` when the adaptive step size collapses (torchdiffeq's "underflow
    in dt"), which a NaN or inf in the drift causes.
    """
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one sample, got shape {tuple(x.shape)}")
    ode = sde.probability_flow(score)
    options = {}
    if solver in ADAPTIVE:
        first = initial_step(
            ode, x, ts[0], ts[-1], order=ADAPTIVE_ORDER[solver] - 1, rtol=rtol, atol=atol
        )
        options = {"step_t": ts[-1:], "first_step": first}
    try:
        xs = odeint(ode, x, ts, method=solver, rtol=rtol, atol=atol, options=options)
    except AssertionError as error:
        if "underflow in dt" not in str(error):
            raise
        raise FloatingPointError(
            f"the ODE solver {solver!r} could not take a step (its step size fell to {error}); "
            f"the drift is likely NaN or inf: {NONFINITE_HINT}"
        ) from None
    if callback is not None:
        for i in range(1, xs.shape[0]):
            callback(i - 1, xs[i])
    return xs[-1]
