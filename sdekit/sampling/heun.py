r"""Karras et al. 2022, Algorithm 2 (Heun's method with churn), for any linear SDE.

Every linear SDE is the EDM SDE in scaled variables (Karras et al. 2022, eq. 4 and Table 1):
:math:`\tilde x = x/\alpha` has noise level :math:`\tilde\sigma = \sigma/\alpha`, and its
probability-flow ODE is

.. math:: \frac{\mathrm{d}\tilde x}{\mathrm{d}\tilde\sigma}
          = \frac{\tilde x - D(\tilde x;\tilde\sigma)}{\tilde\sigma}
          = \hat\varepsilon(x, t) = -\sigma(t)\,s_\theta(x, t),

with :math:`D` the denoiser :math:`\hat x_0`. A step from :math:`\tilde\sigma_i` to
:math:`\tilde\sigma_{i+1}` first "churns" where
:math:`S_{\rm tmin} \le \tilde\sigma_i \le S_{\rm tmax}`:
:math:`\hat\sigma = (1 + \gamma)\tilde\sigma_i`,
:math:`\gamma = \min(S_{\rm churn}/N, \sqrt2 - 1)`,
:math:`\hat x = \tilde x + \sqrt{\hat\sigma^2 - \tilde\sigma_i^2}\,S_{\rm noise}\,z`; then

.. math:: d = \hat\varepsilon(\hat x, \hat t), \quad
          \tilde x' = \hat x + (\tilde\sigma_{i+1} - \hat\sigma)\,d, \quad
          \tilde x_{i+1} = \hat x + (\tilde\sigma_{i+1} - \hat\sigma)\,
          \tfrac12\bigl(d + \hat\varepsilon(\tilde x', t_{i+1})\bigr).

Since the grid stops at :math:`t_{\min} > 0`, every step keeps its second-order correction (Alg. 2
drops it only on a last step to :math:`\sigma = 0`). :math:`\gamma` is further capped so that
:math:`\hat\sigma \le \tilde\sigma(T)`: the score is not defined beyond the horizon.

Without the correction this is Euler's method of Karras et al. ("Euler" in k-diffusion), which with
no churn equals deterministic DDIM (:mod:`sdekit.sampling.ddim`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..linear import LinearSDE
from ..sde import ScoreFn
from .grids import batch_time
from .noise import NoiseSource
from .registry import register, run_callback


def karras_sampler(
    score: ScoreFn,
    sde: LinearSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    second_order: bool,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Karras et al.'s Alg. 2 with (``second_order``, "heun") or without ("euler") the correction.

    ``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise`` as in the paper (see the module).
    """
    if not (math.isfinite(S_churn) and S_churn >= 0):
        raise ValueError(f"S_churn must be a finite number >= 0, got {S_churn}")
    if not (0 <= S_tmin <= S_tmax):
        raise ValueError(f"need 0 <= S_tmin <= S_tmax, got S_tmin={S_tmin}, S_tmax={S_tmax}")
    if not (math.isfinite(S_noise) and S_noise >= 0):
        raise ValueError(f"S_noise must be a finite number >= 0, got {S_noise}")
    n = ts.shape[0] - 1
    alpha = sde.alpha(ts)
    sig = torch.exp(sde.log_sigma(ts) - sde.log_alpha(ts))
    sig_T = torch.exp(-0.5 * sde.log_snr(ts.new_tensor([sde.T])))
    churn = (sig >= S_tmin) & (sig <= S_tmax)
    gamma = churn.to(sig.dtype) * min(S_churn / n, math.sqrt(2) - 1)
    gamma = torch.minimum(gamma, sig_T / sig - 1)
    sig_hat = sig * (1 + gamma)
    # t-hat = t_i where there is no churn (no round trip through the inverse); else a time <= T,
    # clamped only against the inverse's round-off at sig_hat = sig_T.
    t_hat = torch.where(gamma > 0, sde.log_snr_inverse(-2 * torch.log(sig_hat)), ts)
    t_hat = t_hat.clamp(max=sde.T)
    alpha_hat = sde.alpha(t_hat)
    churn_std = (torch.sqrt(sig_hat**2 - sig**2) * S_noise).to(x.dtype)
    step = (sig[1:] - sig_hat[:-1]).to(x.dtype)
    sigma_hat, sigma = (alpha_hat * sig_hat).to(x.dtype), (alpha * sig).to(x.dtype)
    alpha_hat, alpha = alpha_hat.to(x.dtype), alpha.to(x.dtype)

    xt = x / alpha[0]
    for i in range(n):
        if S_churn > 0:
            xt = xt + churn_std[i] * noise(xt)
        d = -sigma_hat[i] * score(alpha_hat[i] * xt, batch_time(t_hat[i], x))
        x_next = xt + step[i] * d
        if second_order:
            d_next = -sigma[i + 1] * score(alpha[i + 1] * x_next, batch_time(ts[i + 1], x))
            x_next = xt + step[i] * 0.5 * (d + d_next)
        xt = x_next
        if callback is not None:
            xt = run_callback(callback, i, alpha[i + 1] * xt) / alpha[i + 1]
    return alpha[-1] * xt


_PAPER = "Karras et al. 2022 (EDM), Alg. 2"
_FAMILY = {"stochastic": False, "needs_marginal": True, "default_grid": "edm"}
register("heun", order=2, evals_per_step=2, fixed={"second_order": True}, paper=_PAPER,
         **_FAMILY)(karras_sampler)  # fmt: skip
register("euler", order=1, evals_per_step=1, fixed={"second_order": False},
         paper=_PAPER + " without the correction", **_FAMILY)(karras_sampler)  # fmt: skip
