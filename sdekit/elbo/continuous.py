r"""The continuous-time variational bound of any linear SDE (Song, Durkan, Murray & Ermon 2021, Thm 1-2;
Kingma et al. 2021, VDM, eq. 17).

For :math:`x_t = \alpha(t)x_0 + \sigma(t)\varepsilon` with log-SNR :math:`\lambda(t)`, prior
:math:`\pi = \mathcal N(0, s_\pi^2 I)` and a decoder :math:`p(x_0 \mid z_{t_{\min}})`,

.. math:: -\log p(x_0) \le \mathrm{KL}\bigl(q(z_T \mid x_0)\,\Vert\,\pi\bigr)
          + \int_{t_{\min}}^{T} -\tfrac12\,\lambda'(t)\,
          \mathbb E_\varepsilon\lVert\varepsilon - \hat\varepsilon_\theta(x_t, t)\rVert^2\,\mathrm dt
          + \mathbb E_{q(z_{t_{\min}} \mid x_0)}\bigl[-\log p(x_0 \mid z_{t_{\min}})\bigr],

the prior, diffusion and reconstruction terms
(VDM eq. 17 in :math:`\varepsilon`-form; the derivation holds for any :math:`\alpha, \sigma`, not only
variance-preserving ones). The decoder carries no parameters, as in VDM:

- pixels of :math:`L` levels (``levels=L``) at :math:`c_k = 2k/(L-1) - 1`:
  :math:`p(k \mid z) \propto q(z \mid c_k) = \mathcal N(z; \alpha c_k, \sigma^2)` normalised over
  the :math:`L` levels per dimension (VDM's ``EncDec.logprob``), a probability;
- continuous data (``levels=None``): :math:`\mathcal N(x_0; z/\alpha, (\sigma/\alpha)^2 I)`, whose
  expected negative log-density is :math:`\frac D2\log(2\pi e\,\sigma^2/\alpha^2)` at
  :math:`t_{\min}` exactly.

**Relation to the likelihood-weighted DSM loss.** Since :math:`g^2 = -\sigma^2\lambda'` and
:math:`\hat\varepsilon = -\sigma s_\theta`, the diffusion integrand is
:math:`\frac12 g^2(t)\,\mathbb E\lVert s_\theta - \nabla\log p_{t|0}\rVert^2`, half the integrand of
:class:`~sdekit.losses.DenoisingScoreMatching` with ``weighting="likelihood"``, whose loss is the mean
over :math:`t \sim U[t_{\min}, T]`. So for every :math:`x_0`

.. math:: -\mathrm{ELBO}(x_0) = \frac{T - t_{\min}}{2}\,\mathcal L_\text{DSM}^{g^2}(x_0)
          + \mathrm{KL}\bigl(q(z_T \mid x_0)\,\Vert\,\pi\bigr)
          + \mathbb E\bigl[-\log p(x_0 \mid z_{t_{\min}})\bigr]:

the bound is the likelihood-weighted DSM loss times :math:`(T - t_{\min})/2` plus two terms that do
not depend on :math:`\theta` (Song et al. 2021b, Thm 2, write the same with the score terms of
:math:`\nabla\log p_{t|0}` and the drift's divergence as the constant). Training on either is the
same up to that factor.

**Estimate.** :math:`t` is drawn by the DSM loss's own proposal, ``"importance"`` (uniform in
log-SNR, the default) or ``"uniform"``, with its unbiasing weight; with ``"importance"`` the
diffusion term becomes :math:`\frac12(\lambda(t_{\min}) - \lambda(T))\lVert\varepsilon -
\hat\varepsilon\rVert^2`, which has a far smaller variance. The range is the SDE's
:math:`[t_{\min}, T]`: choose ``t_min`` where the SDE is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ..checks import check_choice
from ..conditioning import Cond, check_cond
from ..linear import LinearSDE
from ..losses import DenoisingScoreMatching, LossPrediction
from .discrete import check_levels, pixels_to_model

TimeSampling = Literal["importance", "uniform"]
TIME_SAMPLINGS: tuple[str, ...] = get_args(TimeSampling)
_LOG_2PI = math.log(2 * math.pi)


def _ends(sde: LinearSDE) -> tuple[tuple[float, float], tuple[float, float]]:
    ends = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    alpha, sigma = sde.marginal(ends)
    return (float(alpha[0]), float(sigma[0])), (float(alpha[1]), float(sigma[1]))


def prior_kl(sde: LinearSDE, x0: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\alpha_T x_0, \sigma_T^2 I)\,\Vert\,\mathcal N(0, s_\pi^2 I))`,
    ``(batch,)`` nats."""
    _, (a, s) = _ends(sde)
    r2 = (s / sde.prior_std) ** 2
    x = x0.to(torch.float64)
    per = 0.5 * ((a / sde.prior_std) ** 2 * x**2 + r2 - 1 - math.log(r2))
    return per.flatten(1).sum(1)


def reconstruction(
    sde: LinearSDE,
    x0: torch.Tensor,
    levels: int | None,
    *,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reconstruction term at :math:`t_{\\min}` (see the module notes), ``(batch,)`` nats:
    exact for continuous data, the mean over ``samples`` draws of :math:`z` for pixels."""
    (a, s), _ = _ends(sde)
    x = x0.to(torch.float64)
    D = x[0].numel()
    if levels is None:
        nll = 0.5 * D * (_LOG_2PI + 1 + 2 * math.log(s / a))
        return torch.full((x.shape[0],), nll, dtype=torch.float64, device=x.device)
    centres = torch.linspace(-1.0, 1.0, levels, dtype=torch.float64, device=x.device)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(samples):
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        # logits of level k: -(z - a c_k)^2 / (2 s^2) with z = a x + s eps, shifted by the true one
        d = (a / s) * (x[..., None] - centres)
        logits = -0.5 * (d + eps[..., None]) ** 2
        true = -0.5 * eps**2
        total += (torch.logsumexp(logits, -1) - true).flatten(1).sum(1)
    return total / samples


@dataclass
class ContinuousBound:
    """What :func:`continuous_bound` computed, per sample, in nats.

    Attributes:
        prior, diffusion, reconstruction: the three terms, ``(batch,)`` (the diffusion term the
            mean of ``samples`` draws of :math:`(t, \\varepsilon)`).
        diffusion_stderr: the standard error of that mean (``NaN`` for one draw).
        total: their sum, ``(batch,)``; ``bpd`` it in bits per dimension, :math:`\\text{total}/(D\\ln 2)`.
        nfe: network calls (each on the whole batch).
    """

    prior: torch.Tensor
    diffusion: torch.Tensor
    diffusion_stderr: torch.Tensor
    reconstruction: torch.Tensor
    total: torch.Tensor
    bpd: torch.Tensor
    nfe: int


class _Diffusion:
    """Draws of the diffusion term through the DSM loss's proposal and per-sample loss."""

    def __init__(self, sde: LinearSDE, prediction: LossPrediction, t_sampling: str):
        if not isinstance(sde, LinearSDE):
            raise ValueError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        check_choice("t_sampling", t_sampling, TIME_SAMPLINGS)
        self.dsm = DenoisingScoreMatching(sde, prediction, "likelihood", t_sampling)
        self.factor = 0.5 * (sde.T - sde.t_min)

    def __call__(self, model, x0: torch.Tensor, cond: Cond, generator) -> torch.Tensor:
        # the same draws, in the same order, as DenoisingScoreMatching.__call__
        time_dtype = torch.promote_types(x0.dtype, torch.float32)
        t, w = self.dsm.sample_t(
            x0.shape[0], device=x0.device, dtype=time_dtype, generator=generator
        )
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        args = () if cond is None else (cond,)
        per = self.dsm.per_sample(model, x0, t, noise, *args)
        return self.factor * w.to(per.dtype) * per


def continuous_bound(
    model: Callable[..., torch.Tensor],
    sde: LinearSDE,
    x: torch.Tensor,
    *,
    prediction: LossPrediction = "eps",
    levels: int | None = None,
    samples: int = 1,
    t_sampling: TimeSampling = "importance",
    cond: Cond = None,
    generator: torch.Generator | None = None,
) -> ContinuousBound:
    r"""The continuous-time bound on :math:`-\log p(x)` of a network of a linear SDE (module notes).

    Args:
        model: ``model(x, t)`` (or ``model(x, t, cond)``) predicting ``prediction`` (as
            :class:`~sdekit.losses.DenoisingScoreMatching` takes it, ``"edm"`` included).
        sde: the SDE the model was trained with; the bound covers its :math:`[t_{\min}, T]`.
        x: integer pixels with ``levels``; continuous data in model space without.
        levels: the number :math:`L` of pixel levels, or ``None`` for continuous data.
        samples: draws of :math:`(t, \varepsilon)` per sample (one network call on the batch each).
        t_sampling: ``"importance"`` (uniform in log-SNR) or ``"uniform"``.
        cond: the model's condition.
        generator: for the draws, on ``x``'s device.

    Returns:
        a :class:`ContinuousBound`.
    """
    x0 = pixels_to_model(x, levels)
    check_cond(cond, x.shape[0])
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    diffusion = _Diffusion(sde, prediction, t_sampling)
    x_model = x0.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    with torch.no_grad():
        draws = torch.stack(
            [diffusion(model, x_model, cond, generator).to(torch.float64) for _ in range(samples)]
        )
    mean = draws.mean(0)
    stderr = draws.std(0) / math.sqrt(samples) if samples > 1 else torch.full_like(mean, math.nan)
    prior = prior_kl(sde, x0)
    recon = reconstruction(sde, x0, levels, samples=samples, generator=generator)
    total = prior + mean + recon
    D = x0[0].numel()
    return ContinuousBound(prior, mean, stderr, recon, total, total / (D * math.log(2)), samples)


class ContinuousBoundLoss:
    r"""The continuous-time bound as a training loss: the batch mean of one draw of
    :math:`-\mathrm{ELBO}(x_0)` in nats (module notes).

    Its gradient is :math:`(T - t_{\min})/2` times that of
    ``DenoisingScoreMatching(sde, prediction, "likelihood", t_sampling)`` on the same draws, and its
    value differs from that loss times :math:`(T - t_{\min})/2` by the prior and reconstruction
    terms, which do not depend on :math:`\theta`; so the value is the bound itself, comparable
    across runs and with :func:`continuous_bound`.

    ``loss_fn(model, x0, cond=None, generator=None)``; ``x0`` in model space, on the pixel grid
    :math:`2k/(L-1) - 1` when ``levels`` is given.
    """

    def __init__(
        self,
        sde: LinearSDE,
        prediction: LossPrediction = "eps",
        t_sampling: TimeSampling = "importance",
        *,
        levels: int | None = None,
    ):
        self.sde = sde
        self.levels = check_levels(levels)
        self._diffusion = _Diffusion(sde, prediction, t_sampling)

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        cond: Cond = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        diffusion = self._diffusion(model, x0, cond, generator)
        with torch.no_grad():
            fixed = prior_kl(self.sde, x0)
            if self.levels is None:
                fixed = fixed + reconstruction(self.sde, x0, None)
            else:
                grid = _on_grid(x0, self.levels)
                fixed = fixed + reconstruction(self.sde, grid, self.levels, generator=generator)
        return (diffusion + fixed.to(diffusion.dtype)).mean()


def _on_grid(x0: torch.Tensor, levels: int) -> torch.Tensor:
    """``x0`` snapped to the grid :math:`2k/(L-1) - 1` it must lie on (float32 round-off allowed)."""
    k = (x0.to(torch.float64) + 1) * (levels - 1) / 2
    ok = ((k - k.round()).abs() <= 1e-3) & (k.round() >= 0) & (k.round() <= levels - 1)
    if x0.device.type == "cpu":
        if not bool(ok.all()):
            raise ValueError(
                f"x0 must lie on the pixel grid 2k/{levels - 1} - 1, k = 0..{levels - 1}, for "
                f"levels={levels} (dequantized or continuous data: levels=None)"
            )
    else:
        torch._assert_async(ok.all(), f"x0 must lie on the pixel grid of levels={levels}")
    return 2 * k.round() / (levels - 1) - 1
