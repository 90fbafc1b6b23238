r"""The variational bound (ELBO) of diffusion models: DDPM's discrete chain term by term, learned
reverse variances, and the continuous-time bound of any linear SDE.

- :mod:`sdekit.elbo.discrete`: :func:`ddpm_bound` (the prior term, every KL term and the
  discretized-Gaussian decoder of Ho et al. 2020; the exact sum or an importance-sampled Monte-Carlo
  estimate), for reverse variances :math:`\beta_t`, :math:`\tilde\beta_t` or learned; its
  Gaussian pieces in :mod:`sdekit.elbo.gaussian`, the sampler of the terms in
  :mod:`sdekit.elbo.importance`;
- :mod:`sdekit.elbo.learned`: :class:`LearnedVariance`, a network that outputs Nichol & Dhariwal's
  variance interpolation :math:`v` next to its prediction;
- :mod:`sdekit.elbo.hybrid`: :class:`HybridLoss`, :math:`L_\text{simple} + \lambda L_\text{vlb}`;
- :mod:`sdekit.elbo.continuous`: :func:`continuous_bound` and :class:`ContinuousBoundLoss`, the
  bound of Song et al. 2021b / Kingma et al. 2021 for any linear SDE, which is the
  likelihood-weighted DSM loss times :math:`(T - t_{\min})/2` plus terms free of :math:`\theta`.

Samplers that use a learned variance are in :mod:`sdekit.sampling.learned_variance`.
"""

from .continuous import ContinuousBound, ContinuousBoundLoss, continuous_bound
from .discrete import (
    VARIANCES,
    DiscreteBound,
    Variance,
    ddpm_bound,
    ddpm_term,
    level_times,
    marginal_schedule,
)
from .gaussian import discretized_gaussian_log_likelihood, gaussian_kl
from .hybrid import HybridLoss
from .importance import SecondMomentSampler
from .learned import LearnedVariance

__all__ = [
    "ddpm_bound",
    "ddpm_term",
    "DiscreteBound",
    "Variance",
    "VARIANCES",
    "SecondMomentSampler",
    "level_times",
    "marginal_schedule",
    "gaussian_kl",
    "discretized_gaussian_log_likelihood",
    "LearnedVariance",
    "HybridLoss",
    "continuous_bound",
    "ContinuousBound",
    "ContinuousBoundLoss",
]
