r"""Predictor–corrector samplers (Song et al. 2021, §4.2 and Alg. 2–5): any predictor × corrector.

A step from :math:`t` to :math:`s < t` runs the predictor, then ``n_corrector`` corrector steps at
:math:`s`. With the forward kernel :math:`x_t \mid x_s \sim \mathcal N(a\,x_s, \sigma_{t|s}^2 I)`,
:math:`a = \alpha_t/\alpha_s`, :math:`\sigma_{t|s}^2 = \sigma_t^2(1 - e^{\lambda_t - \lambda_s})`,
and :math:`z \sim \mathcal N(0, I)`, the predictors are

- ``"euler_maruyama"``: :math:`x_s = x_t - [f x_t - g^2 s_\theta](t - s) + g\sqrt{t - s}\,z`;
- ``"reverse_diffusion"`` (App. E, eq. 46): the forward discretization
  :math:`x_t = a x_s + \sigma_{t|s} z` reversed,
  :math:`x_s = (2 - a)\,x_t + \sigma_{t|s}^2 s_\theta + \sigma_{t|s} z`;
- ``"ancestral"`` (App. E, eq. 47):
  :math:`x_s = (x_t + \sigma_{t|s}^2 s_\theta)/a + \varsigma z`, with DDPM's
  :math:`\varsigma^2 = \sigma_{t|s}^2 = \beta` for a :class:`~sdekit.VPSDE` (Ho et al. 2020, Alg. 2)
  and the posterior variance :math:`\varsigma^2 = \sigma_s^2\sigma_{t|s}^2/\sigma_t^2` otherwise
  (SMLD for the VE SDE). The mean is the posterior mean :math:`\mathbb E[x_s \mid x_t, \hat x_0]`
  in both cases;
- ``"none"``.

The correctors, at time :math:`s`, with :math:`r = a^2` (the :math:`\alpha_i` of Alg. 5; 1 for VE):

- ``"langevin"`` (Alg. 4–5): :math:`\epsilon = 2r\,(\mathrm{snr}\,\|z\| / \|s_\theta\|)^2`,
  :math:`x \leftarrow x + \epsilon s_\theta + \sqrt{2\epsilon}\,z`, norms per sample averaged over
  the batch as in score_sde;
- ``"ald"``, annealed Langevin dynamics (Song & Ermon 2019, Alg. 1, step size as in score_sde):
  :math:`\epsilon = 2r\,(\mathrm{snr}\,\sigma_s)^2`;
- ``"none"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

from ..checks import check_choice
from ..linear import VPSDE, LinearSDE
from ..sde import ScoreFn
from .grids import batch_time
from .noise import NoiseSource
from .registry import register, run_callback

Predictor = Literal["euler_maruyama", "reverse_diffusion", "ancestral", "none"]
Corrector = Literal["langevin", "ald", "none"]
PREDICTORS = get_args(Predictor)
CORRECTORS = get_args(Corrector)


def _coefficients(sde: LinearSDE, ts: torch.Tensor, predictor: str) -> dict[str, torch.Tensor]:
    """Per-step schedule quantities in float64, index ``i`` for the step ``ts[i] -> ts[i+1]``."""
    t, s = ts[:-1], ts[1:]
    log_a = sde.log_alpha(t) - sde.log_alpha(s)
    var_ts = sde.sigma(t) ** 2 * -torch.expm1(sde.log_snr(t) - sde.log_snr(s))
    c = {
        "a": torch.exp(log_a),
        "var_ts": var_ts,
        "r": torch.exp(2 * log_a),
        "sigma_s": sde.sigma(s),
    }
    if predictor == "euler_maruyama":
        c["f"], c["g2"], c["h"] = sde.f(t), sde.g2(t), t - s
    if predictor == "ancestral":
        c["std"] = (
            var_ts.sqrt() if isinstance(sde, VPSDE) else c["sigma_s"] / sde.sigma(t) * var_ts.sqrt()
        )
    return c


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).mean()


@register(
    "pc",
    order=1,
    stochastic=True,
    needs_marginal=True,
    evals_per_step=2,
    aliases=("predictor_corrector",),
    paper="Song et al. 2021 (score SDE), Alg. 2-5",
)
def predictor_corrector(
    score: ScoreFn,
    sde: LinearSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    predictor: Predictor = "reverse_diffusion",
    corrector: Corrector = "langevin",
    snr: float = 0.16,
    n_corrector: int = 1,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Predictor–corrector sampling; ``n_corrector + 1`` score evaluations per step by default.

    Args:
        predictor: one of :data:`PREDICTORS`.
        corrector: one of :data:`CORRECTORS`.
        snr: the corrector's target signal-to-noise ratio, > 0.
        n_corrector: corrector steps per grid step, >= 0.
    """
    check_choice("predictor", predictor, PREDICTORS)
    check_choice("corrector", corrector, CORRECTORS)
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be an integer >= 0, got {n_corrector!r}")
    c = {k: v.to(x.dtype) for k, v in _coefficients(sde, ts, predictor).items()}
    for i in range(ts.shape[0] - 1):
        t, s = batch_time(ts[i], x), batch_time(ts[i + 1], x)
        if predictor != "none":
            score_t = score(x, t)
            if predictor == "euler_maruyama":
                drift = c["f"][i] * x - c["g2"][i] * score_t
                x = x - drift * c["h"][i] + torch.sqrt(c["g2"][i] * c["h"][i]) * noise(x)
            elif predictor == "reverse_diffusion":
                x = (
                    (2 - c["a"][i]) * x
                    + c["var_ts"][i] * score_t
                    + c["var_ts"][i].sqrt() * noise(x)
                )
            else:
                x = (x + c["var_ts"][i] * score_t) / c["a"][i] + c["std"][i] * noise(x)
        for _ in range(n_corrector if corrector != "none" else 0):
            grad, z = score(x, s), noise(x)
            if corrector == "langevin":
                ratio = snr * _per_sample_norm(z) / _per_sample_norm(grad)
                eps = 2 * c["r"][i] * ratio**2
            else:
                eps = 2 * c["r"][i] * (snr * c["sigma_s"][i]) ** 2
            x = x + eps * grad + torch.sqrt(2 * eps) * z
        x = run_callback(callback, i, x)
    return x


# Ancestral sampling is the predictor-only PC sampler with the "ancestral" predictor.
register(
    "ancestral",
    order=1,
    stochastic=True,
    needs_marginal=True,
    evals_per_step=1,
    aliases=("Euler a", "ddpm", "smld"),
    paper="Ho et al. 2020 (DDPM), Alg. 2; Song et al. 2021, eq. 47",
    fixed={"predictor": "ancestral", "corrector": "none", "n_corrector": 0},
)(predictor_corrector)
