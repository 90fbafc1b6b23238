r"""DDIM (Song, Meng and Ermon 2021, eq. 12), for any linear SDE through its :math:`\alpha, \sigma`.

From :math:`x_t` to :math:`x_s` (:math:`s < t`), with
:math:`\hat\varepsilon = -\sigma_t s_\theta(x_t, t)` and
:math:`\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t`:

.. math:: x_s = \alpha_s\hat x_0 + \sqrt{\sigma_s^2 - c^2}\;\hat\varepsilon + c\,z, \qquad
          c = \eta\,\frac{\sigma_s}{\sigma_t}\,\sigma_{t|s}
            = \eta\,\sigma_s\sqrt{1 - e^{\lambda_t - \lambda_s}},

where :math:`\sigma_{t|s}^2 = \sigma_t^2 - (\alpha_t/\alpha_s)^2\sigma_s^2` is the forward kernel's
variance. :math:`\eta = 0` is the deterministic DDIM, which is the first-order exponential
integrator of the probability-flow ODE (DPM-Solver-1, Lu et al. 2022, eq. 3.7) and Euler's method in
:math:`(\tilde x, \tilde\sigma) = (x/\alpha, \sigma/\alpha)` (Karras et al. 2022, §3).
:math:`\eta = 1` draws from the Gaussian posterior :math:`q(x_s \mid x_t, \hat x_0)`, with DDPM's
variance :math:`\tilde\beta` (Ho et al. 2020, eq. 7).

The update is computed as :math:`x_s = \frac{\alpha_s}{\alpha_t}x_t
+ \sigma_s\bigl(\sqrt{1 - \eta^2(1 - e^{-2h})} - e^{h}\bigr)\hat\varepsilon + c\,z` with
:math:`h = (\lambda_s - \lambda_t)/2`, so no :math:`\hat x_0` of size :math:`1/\alpha_T` is formed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..checks import check_probability
from ..linear import LinearSDE
from ..sde import ScoreFn
from .grids import batch_time
from .noise import NoiseSource
from .registry import register, run_callback


@register(
    "ddim",
    order=1,
    stochastic=False,
    needs_marginal=True,
    evals_per_step=1,
    default_grid="quadratic",
    paper="Song, Meng & Ermon 2021 (DDIM), eq. 12",
)
def ddim(
    score: ScoreFn,
    sde: LinearSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    eta: float = 0.0,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """DDIM with stochasticity ``eta`` in [0, 1] over the decreasing grid ``ts``."""
    eta = check_probability("eta", eta)
    log_alpha, sigma, lam = sde.log_alpha(ts), sde.sigma(ts), sde.log_snr(ts)
    h = 0.5 * (lam[1:] - lam[:-1])
    r = -torch.expm1(-2 * h)  # 1 - e^{lambda_t - lambda_s} = sigma_{t|s}^2 / sigma_t^2
    s_next = sigma[1:]
    keep = torch.exp(log_alpha[1:] - log_alpha[:-1]).to(x.dtype)
    c_eps = (s_next * (torch.sqrt(1 - eta**2 * r) - torch.exp(h))).to(x.dtype)
    c_noise = (eta * s_next * torch.sqrt(r)).to(x.dtype)
    sigma = sigma.to(x.dtype)
    for i in range(ts.shape[0] - 1):
        eps = -sigma[i] * score(x, batch_time(ts[i], x))
        x = keep[i] * x + c_eps[i] * eps
        if eta > 0:
            x = x + c_noise[i] * noise(x)
        x = run_callback(callback, i, x)
    return x
