r"""The Gaussian pieces of the variational bound: the KL divergence between two Gaussians and the
decoders' log-likelihoods, continuous and discretized (Ho et al. 2020, eq. 13).

Elementwise functions of means and log-variances; the bound sums them over the data dimensions.
"""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mean1, log_var1, mean2, log_var2) -> torch.Tensor:
    r"""Elementwise :math:`\mathrm{KL}(\mathcal N(m_1, e^{l_1})\,\Vert\,\mathcal N(m_2, e^{l_2}))
    = \frac12(l_2 - l_1 + e^{l_1 - l_2} + (m_1 - m_2)^2 e^{-l_2} - 1)`."""
    return 0.5 * (
        log_var2
        - log_var1
        - 1
        + torch.exp(log_var1 - log_var2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
    )


def _log_diff_ndtr(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(hi) - \Phi(lo))` for :math:`lo < hi`, accurate in both tails (reflected so
    that the interval never lies in the upper tail, where both CDFs round to 1)."""
    flip = lo > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + torch.log(-torch.expm1(torch.special.log_ndtr(lo) - log_hi))


def discretized_gaussian_log_likelihood(
    x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, *, levels: int = 256
) -> torch.Tensor:
    r"""Elementwise :math:`\log P(x_0)` of the discretized Gaussian decoder (Ho et al. 2020, eq. 13).

    :math:`P(x_0) = \Phi\bigl((x_0 + \delta - \mu)/\sigma\bigr) - \Phi\bigl((x_0 - \delta - \mu)/\sigma\bigr)`
    with the bin half-width :math:`\delta = 1/(L-1)`, and the lower (upper) limit replaced by
    :math:`-\infty` (:math:`+\infty`) in the first (last) bin, so the :math:`L` probabilities sum to 1.
    Exact normal CDFs in log space (the reference code uses a tanh approximation clamped at
    :math:`10^{-12}`). ``x0`` must lie on the grid :math:`2k/(L-1) - 1`.
    """
    half = 1.0 / (levels - 1)
    inv_std = torch.exp(-0.5 * log_var)
    inf = torch.full_like(x0, math.inf)
    lo = torch.where(x0 < -1 + half, -inf, (x0 - half - mean) * inv_std)
    hi = torch.where(x0 > 1 - half, inf, (x0 + half - mean) * inv_std)
    return _log_diff_ndtr(lo, hi)


def gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor):
    """Elementwise :math:`\\log\\mathcal N(x_0; \\mu, e^{l})`, the decoder for continuous data."""
    return -0.5 * (_LOG_2PI + log_var + (x0 - mean) ** 2 * torch.exp(-log_var))
