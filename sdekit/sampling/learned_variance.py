r"""Ancestral and DDIM sampling with a learned reverse variance (Nichol & Dhariwal 2021, eq. 15, §4).

On a step :math:`t \to s` of the grid, with :math:`a = \alpha_t/\alpha_s`, the forward kernel's
variance :math:`\sigma_{t|s}^2 = \sigma_t^2(1 - e^{\lambda_t - \lambda_s})` (:math:`\beta` on DDPM's
own levels) and the posterior's :math:`\sigma_s^2\sigma_{t|s}^2/\sigma_t^2` (:math:`\tilde\beta`),
the network's :math:`v` (:class:`~sdekit.elbo.LearnedVariance`) gives

.. math:: \Sigma_\theta = \exp\Bigl(v\log\sigma_{t|s}^2
          + (1 - v)\log\frac{\sigma_s^2\sigma_{t|s}^2}{\sigma_t^2}\Bigr),

elementwise. The samplers read :math:`v` from the same network call as the score (no extra
evaluation), so pass the network given to :func:`~sdekit.sampling.sample` also as ``v``; a number
``v`` instead fixes the interpolation for every step (0: :math:`\tilde\beta`, 1: :math:`\beta`):

.. code-block:: python

   x, info = sample(net, sde, shape, method="ancestral_learned", prediction="eps", v=net, steps=50)

- ``"ancestral_learned"``: the posterior mean given :math:`\hat x_0` plus that variance,
  :math:`x_s = (x_t + \sigma_{t|s}^2 s_\theta)/a + \Sigma_\theta^{1/2} z` (Ho et al. 2020, Alg. 2 with
  :math:`\sigma^2 = \Sigma_\theta`). On the chain's own levels (:func:`sdekit.elbo.level_times`) it is
  improved DDPM's sampler; on a coarser grid it is their strided sampling (§4), whose :math:`\beta`
  and :math:`\tilde\beta` are those of the coarse steps.
- ``"ddim_learned"``: the DDIM family (Song, Meng & Ermon 2021, eq. 12) with the learned variance as
  its noise, :math:`c^2 = \min(\eta^2\Sigma_\theta, \sigma_s^2)` (the family needs
  :math:`c \le \sigma_s`): :math:`x_s = \alpha_s\hat x_0 + \sqrt{\sigma_s^2 - c^2}\,\hat\varepsilon +
  c z`, which keeps the marginals of :math:`q` whatever the variance. At :math:`v = 0`,
  :math:`\eta = 1` it is DDIM with :math:`\eta = 1` (and ancestral sampling with :math:`\tilde\beta`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..checks import check_probability
from ..elbo.learned import find_learned_variance, take_v
from ..linear import LinearSDE
from ..sde import ScoreFn
from .grids import batch_time
from .noise import NoiseSource
from .registry import register, run_callback


def _v_reader(v) -> Callable[[torch.Tensor], torch.Tensor]:
    """``read(x)``: the v of the latest network call (shaped like ``x``), or the fixed number."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        if not math.isfinite(v):
            raise ValueError(f"v must be finite, got {v}")
        return lambda x: torch.tensor(float(v), dtype=x.dtype, device=x.device)
    if not callable(v):
        raise ValueError(
            "v must be the LearnedVariance network that is sampled (its v is read from each call) "
            f"or a number, got {type(v).__name__}"
        )
    find_learned_variance(v)
    return lambda x: take_v(v, x).to(x.dtype)


def _step_variances(sde: LinearSDE, ts: torch.Tensor):
    """Per step ``ts[i] -> ts[i+1]`` (float64): log a, log sigma_{t|s}^2, log of the posterior's."""
    t, s = ts[:-1], ts[1:]
    log_a = sde.log_alpha(t) - sde.log_alpha(s)
    log_var_ts = 2 * sde.log_sigma(t) + torch.log(-torch.expm1(sde.log_snr(t) - sde.log_snr(s)))
    log_post = log_var_ts + 2 * (sde.log_sigma(s) - sde.log_sigma(t))
    return log_a, log_var_ts, log_post


@register(
    "ancestral_learned",
    order=1,
    stochastic=True,
    needs_marginal=True,
    evals_per_step=1,
    aliases=("iddpm",),
    paper="Nichol & Dhariwal 2021 (improved DDPM), eq. 15; Ho et al. 2020, Alg. 2",
)
def ancestral_learned(
    score: ScoreFn,
    sde: LinearSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    v: Callable | float,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Ancestral sampling whose variance is the network's (module notes).

    Args:
        v: the :class:`~sdekit.elbo.LearnedVariance` network that is sampled, or a fixed v.
    """
    read_v = _v_reader(v)
    log_a, log_var_ts, log_post = _step_variances(sde, ts)
    inv_a = torch.exp(-log_a).to(x.dtype)
    var_ts = torch.exp(log_var_ts).to(x.dtype)
    log_var_ts, log_post = log_var_ts.to(x.dtype), log_post.to(x.dtype)
    for i in range(ts.shape[0] - 1):
        score_t = score(x, batch_time(ts[i], x))
        v_i = read_v(x)
        std = torch.exp(0.5 * (v_i * log_var_ts[i] + (1 - v_i) * log_post[i]))
        x = (x + var_ts[i] * score_t) * inv_a[i] + std * noise(x)
        x = run_callback(callback, i, x)
    return x


@register(
    "ddim_learned",
    order=1,
    stochastic=True,
    needs_marginal=True,
    evals_per_step=1,
    default_grid="quadratic",
    paper="Song, Meng & Ermon 2021 (DDIM), eq. 12, with Nichol & Dhariwal's eq. 15 variance",
)
def ddim_learned(
    score: ScoreFn,
    sde: LinearSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    v: Callable | float,
    eta: float = 1.0,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """DDIM whose noise variance is ``eta**2`` times the network's, capped at sigma_s^2.

    Args:
        v: the :class:`~sdekit.elbo.LearnedVariance` network that is sampled, or a fixed v.
        eta: the scale in [0, 1]; 0 is the deterministic DDIM (and ignores the variance).
    """
    read_v = _v_reader(v)
    eta = check_probability("eta", eta)
    log_a, log_var_ts, log_post = _step_variances(sde, ts)
    sigma = sde.sigma(ts)
    log_s2 = 2 * sde.log_sigma(ts[1:])
    # e^h = sqrt(SNR_s / SNR_t): the coefficient of eps_hat is sigma_s (sqrt(1 - c^2/sigma_s^2) - e^h)
    exp_h = torch.exp(0.5 * (sde.log_snr(ts[1:]) - sde.log_snr(ts[:-1])))
    keep = torch.exp(-log_a).to(x.dtype)
    sigma, s_next, exp_h = sigma.to(x.dtype), sigma[1:].to(x.dtype), exp_h.to(x.dtype)
    # log(eta^2 Sigma / sigma_s^2) = 2 log eta + v log_var_ts + (1 - v) log_post - log sigma_s^2
    rel_ts, rel_post = (log_var_ts - log_s2).to(x.dtype), (log_post - log_s2).to(x.dtype)
    for i in range(ts.shape[0] - 1):
        eps = -sigma[i] * score(x, batch_time(ts[i], x))
        v_i = read_v(x)
        if eta == 0:
            x = keep[i] * x + s_next[i] * (1 - exp_h[i]) * eps
        else:
            r = (eta**2 * torch.exp(v_i * rel_ts[i] + (1 - v_i) * rel_post[i])).clamp(max=1.0)
            x = keep[i] * x + s_next[i] * (torch.sqrt(1 - r) - exp_h[i]) * eps
            x = x + s_next[i] * torch.sqrt(r) * noise(x)
        x = run_callback(callback, i, x)
    return x
