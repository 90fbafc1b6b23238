r"""Denoising score matching for linear SDEs, with every output parameterization and weighting.

For :math:`x_t = \alpha(t)x_0 + \sigma(t)\varepsilon` the conditional score is
:math:`\nabla\log p_{t|0}(x_t \mid x_0) = -\varepsilon/\sigma(t)`, and the denoising score-matching
objective (Vincent 2011; Song et al. 2021, eq. 7) is

.. math:: \mathcal L(\theta) = \mathbb E_{t}\,\lambda(t)\,\mathbb E_{x_0, \varepsilon}
          \bigl\lVert s_\theta(x_t, t) - \nabla\log p_{t|0}(x_t \mid x_0)\bigr\rVert^2 ,

summed over data dimensions and averaged over the batch. It equals the explicit score-matching loss
:math:`\mathbb E\,\lambda\lVert s_\theta - \nabla\log p_t\rVert^2` plus a constant independent of
:math:`\theta`, so its minimiser is the true score :math:`\nabla\log p_t`.

**Weightings** :math:`\lambda(t)`, always stated on the score error above:

- ``"sigma2"``: :math:`\lambda = \sigma^2(t)` (Song et al. 2021; Ho et al. 2020's
  :math:`L_\text{simple}`);
- ``"likelihood"``: :math:`\lambda = g^2(t)`, which makes the loss an upper bound on the negative
  log-likelihood (Song et al. 2021b, "Maximum likelihood training of score-based diffusion models",
  Thm. 1);
- ``"edm"``: :math:`\lambda = \lambda_\text{EDM}(\tilde\sigma)\,\sigma^4/\alpha^2` with
  :math:`\tilde\sigma = \sigma/\alpha` and
  :math:`\lambda_\text{EDM}(\tilde\sigma) = (\tilde\sigma^2 + \sigma_d^2)/(\tilde\sigma\sigma_d)^2`
  (Karras et al. 2022, Table 1): that is :math:`\lambda_\text{EDM}` on the :math:`x_0` error, which
  makes the preconditioned network's own target unit-weighted;
- ``"none"``: the plain MSE of whatever the network predicts (:math:`\lambda = 1/c` below).

**How it maps to each prediction's MSE.** With :math:`\hat\varepsilon = -\sigma \hat s`,
:math:`\hat x_0 = (x_t - \sigma\hat\varepsilon)/\alpha` and
:math:`v = \alpha\varepsilon - \sigma x_0`, the prediction errors are multiples of the score error,
:math:`\lVert\hat y - y\rVert^2 = c(t)\,\lVert s_\theta - \nabla\log p_{t|0}\rVert^2` with

.. math:: c_\text{score} = 1, \qquad c_\text{eps} = \sigma^2, \qquad
          c_{x_0} = c_\text{edm} = \sigma^4/\alpha^2, \qquad
          c_v = \sigma^2(\alpha^2 + \sigma^2)^2/\alpha^2,

so the loss is computed as :math:`(\lambda(t)/c(t))\,\lVert\hat y - y\rVert^2` on the prediction's
own target (:func:`sdekit.parameterization.target`). Thus ``"sigma2"`` is the unweighted
:math:`\varepsilon`-MSE, ``"likelihood"`` is the :math:`\varepsilon`-MSE weighted by
:math:`g^2/\sigma^2`, and ``"edm"`` with ``prediction="edm"`` is Karras et al.'s eq. 8.
``"default"`` picks ``"sigma2"`` for ``score``/``eps``, ``"none"`` for ``x0``/``v`` and ``"edm"``
for ``edm``.

**Time sampling** (the loss is :math:`\mathbb E_{t\sim U[t_{\min}, T]}[\dots]` for the first two):

- ``"uniform"``: :math:`t \sim U[t_{\min}, T]`;
- ``"importance"``: :math:`t \sim q(t) \propto g^2(t)/\sigma^2(t) = -\mathrm d\ell/\mathrm dt`
  with :math:`\ell(t) = \log(\alpha^2/\sigma^2)` the log-SNR, i.e. uniform in log-SNR (the proposal
  of Song et al. 2021b, §5, and Huang et al. 2021), with each sample weighted by
  :math:`1/((T - t_{\min})\,q(t))` so the estimate is unbiased for the same objective as
  ``"uniform"``. With ``"likelihood"`` weighting the per-sample weight becomes the constant
  :math:`(\ell(t_{\min}) - \ell(T))/(T - t_{\min})` on the :math:`\varepsilon`-MSE, which is the
  point (a far smaller variance);
- ``"lognormal"``: :math:`\ln\tilde\sigma \sim \mathcal N(P_\text{mean}, P_\text{std}^2)`, truncated
  to :math:`[t_{\min}, T]` (Karras et al. 2022, Table 1; :math:`\tilde\sigma = t` for
  :class:`~sdekit.linear.EDMSDE`). This distribution *defines* the EDM objective: no correction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from .checks import check_batch_time, check_choice, check_float_input, check_output, check_positive
from .conditioning import Cond
from .linear import LinearSDE
from .parameterization import Prediction, target
from .sampling.registry import SAMPLERS
from .sde import broadcast_to_data

LossPrediction = Literal[Prediction, "edm"]
Weighting = Literal["default", "sigma2", "likelihood", "edm", "none"]
TimeSampling = Literal["uniform", "importance", "lognormal"]
LOSS_PREDICTIONS = get_args(LossPrediction)
WEIGHTINGS = get_args(Weighting)
T_SAMPLINGS = get_args(TimeSampling)
_DEFAULT_WEIGHTING = {"score": "sigma2", "eps": "sigma2", "x0": "none", "v": "none", "edm": "edm"}


class DenoisingScoreMatching:
    r"""The denoising score-matching loss of a network predicting ``prediction`` (see module docs).

    Args:
        sde: the linear SDE that perturbs the data.
        prediction: ``"score"``, ``"eps"``, ``"x0"``, ``"v"`` or ``"edm"`` (an
            :class:`~sdekit.networks.EDMPrecond` denoiser: its output is :math:`\hat x_0`).
        weighting: ``"default"``, ``"sigma2"``, ``"likelihood"``, ``"edm"`` or ``"none"``.
        t_sampling: ``"uniform"``, ``"importance"`` or ``"lognormal"``.
        sigma_data: :math:`\sigma_d` of the ``"edm"`` weighting (0.5 in EDM).
        p_mean, p_std: :math:`P_\text{mean}, P_\text{std}` of ``"lognormal"`` sampling (EDM:
            -1.2, 1.2).

    ``loss_fn(model, x0, cond=None, generator=None)`` returns the scalar loss; the model is called
    as ``model(x_t, t)`` (or ``model(x_t, t, cond)``). Schedule coefficients and weights are
    computed in float64 and the squared error in at least float32, also under autocast.
    """

    def __init__(
        self,
        sde: LinearSDE,
        prediction: LossPrediction = "eps",
        weighting: Weighting = "default",
        t_sampling: TimeSampling = "uniform",
        *,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ):
        if not isinstance(sde, LinearSDE):
            general = sorted(name for name, spec in SAMPLERS.items() if not spec.needs_marginal)
            raise ValueError(
                f"sde must be a LinearSDE, got {type(sde).__name__}: denoising score matching "
                "needs the closed-form marginal x_t = alpha(t) x0 + sigma(t) eps. A general SDE "
                f"works with simulate, log_likelihood (a score model) and the samplers {general}"
            )
        self.sde = sde
        self.prediction = check_choice("prediction", prediction, LOSS_PREDICTIONS)
        weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.weighting = _DEFAULT_WEIGHTING[prediction] if weighting == "default" else weighting
        self.t_sampling = check_choice("t_sampling", t_sampling, T_SAMPLINGS)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.p_mean = float(p_mean)
        self.p_std = check_positive("p_std", p_std)
        ends = torch.tensor([sde.T, sde.t_min], dtype=torch.float64)
        # log-SNR range [lambda(T), lambda(t_min)] for the proposals that sample in log-SNR
        self._lam_lo, self._lam_hi = (float(v) for v in sde.log_snr(ends))
        if not (math.isfinite(self._lam_lo) and math.isfinite(self._lam_hi)):
            raise ValueError(
                "t_min must be > 0 where the log-SNR is infinite at t = 0; got "
                f"log-SNR range [{self._lam_lo}, {self._lam_hi}] on [t_min, T] = "
                f"[{sde.t_min}, {sde.T}]"
            )
        normal = torch.distributions.Normal(self.p_mean, self.p_std)
        self._lognormal_cdf_range = tuple(
            float(normal.cdf(torch.tensor(-0.5 * v))) for v in (self._lam_hi, self._lam_lo)
        )

    def _in_domain(self, t64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``t64`` in ``dtype``, kept in [t_min, T] against round-off (float32 may round T upwards)."""
        t = t64.clamp(self.sde.t_min, self.sde.T).to(dtype)
        T = torch.tensor(self.sde.T, dtype=dtype)
        if float(T) > self.sde.T:
            T = torch.nextafter(T, torch.zeros_like(T))
        return torch.minimum(t, T.to(t.device))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        r"""The factor :math:`\lambda(t)/c(t)` on the prediction's squared error (float64)."""
        t64 = t.to(torch.float64)
        alpha, sigma = self.sde.marginal(t64)
        a2, s2 = alpha**2, sigma**2
        c = {
            "score": torch.ones_like(s2),
            "eps": s2,
            "x0": s2**2 / a2,
            "edm": s2**2 / a2,
            "v": s2 * (a2 + s2) ** 2 / a2,
        }[self.prediction]
        if self.weighting == "none":
            return torch.ones_like(c)
        if self.weighting == "sigma2":
            lam = s2
        elif self.weighting == "likelihood":
            lam = self.sde.g2(t64)
        else:
            sd2, st2 = self.sigma_data**2, s2 / a2
            lam = (st2 + sd2) / (st2 * sd2) * s2**2 / a2
        return lam / c

    def sample_t(
        self,
        batch: int,
        *,
        device=None,
        dtype=torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(t, w)``: proposal times and unbiasing weights :math:`1/((T - t_{\min})q(t))`.

        ``w`` is 1 for ``"uniform"`` and ``"lognormal"``; float64.
        """
        u = torch.rand(batch, device=device, dtype=torch.float64, generator=generator)
        T, t_min = self.sde.T, self.sde.t_min
        if self.t_sampling == "uniform":
            return self._in_domain(t_min + (T - t_min) * u, dtype), torch.ones_like(u)
        if self.t_sampling == "lognormal":
            # ln(sigma/alpha) = -lambda/2 ~ N(p_mean, p_std^2) truncated to [t_min, T], inverse CDF
            lo, hi = self._lognormal_cdf_range
            log_s = self.p_mean + self.p_std * torch.special.ndtri(lo + (hi - lo) * u)
            t = self._in_domain(self.sde.log_snr_inverse(-2 * log_s), dtype)
            return t, torch.ones_like(u)
        lam = self._lam_hi + (self._lam_lo - self._lam_hi) * u
        t = self._in_domain(self.sde.log_snr_inverse(lam), dtype)
        t64 = t.to(torch.float64)
        # q(t) = (g^2 / sigma^2) / (lambda(t_min) - lambda(T)) on [t_min, T]
        q = self.sde.g2(t64) / self.sde.sigma(t64) ** 2 / (self._lam_hi - self._lam_lo)
        return t, 1 / ((T - t_min) * q)

    def per_sample(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        cond: Cond = None,
    ) -> torch.Tensor:
        r""":math:`\lambda(t)\lVert s_\theta - \nabla\log p_{t|0}\rVert^2` at given ``t``.

        Returns ``(batch,)``. The model must return a tensor shaped like ``x0`` (never
        broadcast).
        """
        _check_data(x0)
        return self._per_sample(model, x0, t, noise, cond)

    def _per_sample(self, model, x0, t, noise, cond) -> torch.Tensor:
        check_batch_time(t, x0)
        # coefficients in float64, elementwise work in the data's precision (at least float32)
        dtype = torch.promote_types(x0.dtype, torch.float32)
        alpha, sigma = (
            broadcast_to_data(c, x0).to(dtype) for c in self.sde.marginal(t.to(torch.float64))
        )
        x_t = (alpha * x0 + sigma * noise).to(x0.dtype)
        args = () if cond is None else (cond,)
        out = check_output("model", model(x_t, t, *args), x_t)
        prediction = "x0" if self.prediction == "edm" else self.prediction
        y = target(prediction, x0, noise, alpha, sigma)
        err = (out.to(dtype) - y.to(dtype)).square().flatten(1).sum(1)
        return self.weight(t).to(dtype) * err

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        cond: Cond = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The scalar loss: batch mean of the per-sample loss at sampled ``t`` and noise.

        ``x0`` must be a non-empty, finite, floating-point batch: NaN or inf data raise a
        ``ValueError`` naming ``x0`` here, rather than a NaN loss later (the check is enqueued
        without a host sync on an accelerator).
        """
        _check_data(x0)
        time_dtype = torch.promote_types(x0.dtype, torch.float32)
        t, w = self.sample_t(x0.shape[0], device=x0.device, dtype=time_dtype, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        per = self._per_sample(model, x0, t, noise, cond)
        return (w.to(per.dtype) * per).mean()


def _check_data(x0: torch.Tensor) -> None:
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2 or x0.shape[0] == 0:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(
            f"x0 must be a batch of data (batch, *data_shape) with batch >= 1, got {shape}"
        )
    check_float_input(
        "x0", x0, fix="the training data must be finite: check the data set and its scaling"
    )
