r"""Distances between samples and exact distributions, for tests and benchmarks.

In 1D the Wasserstein-1 distance is :math:`W_1(\mu, \nu) = \int |F_\mu(x) - F_\nu(x)|\,\mathrm{d}x`
(Vallender 1974). Against an exact CDF :math:`F` it is computed between the empirical CDF of the samples
and :math:`F` on a fine grid. The sliced :math:`W_1` averages the 1D distance over random unit
directions :math:`v` (Bonneel et al. 2015); for a :class:`~sdekit.GaussianMixture` each projection is an
exact 1D mixture, so no reference sample is needed.
"""

from __future__ import annotations

import torch

from .mixture import GaussianMixture


def w1_to_cdf(samples: torch.Tensor, cdf, lo: float, hi: float, points: int = 20001) -> float:
    """:math:`W_1` between 1D ``samples`` and the law with CDF ``cdf`` (a callable on a float64 grid).

    The integral runs over ``[lo, hi]`` with the trapezoid rule on ``points`` nodes; choose the interval
    to hold both the samples and the law's mass.
    """
    if points < 2 or not lo < hi:
        raise ValueError(f"need points >= 2 and lo < hi, got points={points}, lo={lo}, hi={hi}")
    s = torch.sort(samples.detach().reshape(-1).to("cpu", torch.float64)).values
    grid = torch.linspace(lo, hi, points, dtype=torch.float64)
    empirical = torch.searchsorted(s, grid, right=True).to(torch.float64) / s.numel()
    return float(torch.trapezoid((empirical - cdf(grid)).abs(), grid))


def w1_to_mixture(samples: torch.Tensor, target: GaussianMixture, points: int = 20001) -> float:
    """:math:`W_1` between 1D samples (``(n,)`` or ``(n, 1)``) and a 1D mixture's data law."""
    m, s = target.means[:, 0], target.stds[:, 0]
    x = samples.detach().to("cpu", torch.float64)
    lo = min(float((m - 10 * s).min()), float(x.min()))
    hi = max(float((m + 10 * s).max()), float(x.max()))
    return w1_to_cdf(x, lambda g: target.cdf(g), lo, hi, points)


def sliced_w1(
    samples: torch.Tensor,
    target: GaussianMixture,
    directions: int = 64,
    *,
    generator: torch.Generator | None = None,
    points: int = 4001,
) -> float:
    """Sliced :math:`W_1` between ``(n, d)`` samples and a mixture, over random unit directions."""
    if samples.ndim != 2 or samples.shape[1] != target.dim:
        raise ValueError(f"samples must be (n, {target.dim}), got {tuple(samples.shape)}")
    v = torch.randn(directions, target.dim, generator=generator, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    x = samples.detach().to("cpu", torch.float64)
    return sum(w1_to_mixture(x @ d, target.project(d), points) for d in v) / directions
