r"""Distances between samples and exact distributions, for tests and benchmarks.

In 1D the Wasserstein-1 distance is :math:`W_1(\mu, \nu) = \int |F_\mu(x) - F_\nu(x)|\,\mathrm{d}x`
(Vallender 1974). Against an exact CDF :math:`F` it is computed between the empirical CDF of the samples
and :math:`F` on a fine grid. The sliced :math:`W_1` averages the 1D distance over random unit
directions :math:`v` (Bonneel et al. 2015); for a :class:`~sdekit.GaussianMixture` each projection is an
exact 1D mixture, so no reference sample is needed.

Samples must be finite: a NaN or inf raises ``ValueError`` (instead of returning a NaN distance).
"""

from __future__ import annotations

import torch

from .checks import check_float_input
from .mixture import GaussianMixture


def _check_samples(samples: torch.Tensor) -> torch.Tensor:
    """At least one sample, all finite: a distance of NaN samples would be NaN."""
    if not isinstance(samples, torch.Tensor) or samples.numel() == 0:
        got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"samples must be a non-empty tensor, got {got}")
    samples = samples.detach()
    if not samples.is_floating_point():  # integers are finite; the distance works in float64
        return samples
    return check_float_input(
        "samples",
        samples,
        fix="a distance to non-finite samples is undefined; find where the sampler diverged",
    )


def w1_to_cdf(samples: torch.Tensor, cdf, lo: float, hi: float, points: int = 20001) -> float:
    """:math:`W_1` between 1D ``samples`` and the law with CDF ``cdf`` (a callable on a float64 grid).

    The integral runs over ``[lo, hi]`` with the trapezoid rule on ``points`` nodes; choose the interval
    to hold both the samples and the law's mass. Computed on the samples' device.
    """
    if points < 2 or not lo < hi:
        raise ValueError(f"need points >= 2 and lo < hi, got points={points}, lo={lo}, hi={hi}")
    s = torch.sort(_check_samples(samples).reshape(-1).to(torch.float64)).values
    grid = torch.linspace(lo, hi, points, dtype=torch.float64, device=s.device)
    empirical = torch.searchsorted(s, grid, right=True).to(torch.float64) / s.numel()
    return float(torch.trapezoid((empirical - cdf(grid)).abs(), grid))


def w1_to_mixture(samples: torch.Tensor, target: GaussianMixture, points: int = 20001) -> float:
    """:math:`W_1` between 1D samples (``(n,)`` or ``(n, 1)``) and a 1D mixture's data law."""
    if target.dim != 1:
        raise ValueError(f"target must be a 1D mixture, got d={target.dim}")
    return _sliced(samples.reshape(-1, 1), target, torch.ones(1, 1, dtype=torch.float64), points)


def sliced_w1(
    samples: torch.Tensor,
    target: GaussianMixture,
    directions: int = 64,
    *,
    generator: torch.Generator | None = None,
    points: int = 4001,
) -> float:
    """Sliced :math:`W_1` between ``(n, d)`` samples and a mixture, over random unit directions.

    The directions are drawn on the CPU from ``generator`` (the same ones on every device); the
    projections, sorts and exact projected CDFs are computed for all directions at once on the
    samples' device.
    """
    if samples.ndim != 2 or samples.shape[1] != target.dim:
        raise ValueError(f"samples must be (n, {target.dim}), got {tuple(samples.shape)}")
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    v = torch.randn(directions, target.dim, generator=generator, dtype=torch.float64)
    return _sliced(samples, target, v / v.norm(dim=1, keepdim=True), points)


def _sliced(samples, target: GaussianMixture, v: torch.Tensor, points: int) -> float:
    """Mean over the rows of ``v`` of W1 between the projected samples and projected mixture."""
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    x = _check_samples(samples).to(torch.float64)
    v = v.to(x.device)
    proj = torch.sort((x @ v.T).T.contiguous(), dim=1).values  # (directions, n)
    means = target.means.to(x.device) @ v.T  # (components, directions)
    stds = ((target.stds.to(x.device) ** 2) @ (v**2).T).sqrt()
    lo = torch.minimum(proj[:, 0], (means - 10 * stds).min(0).values)
    hi = torch.maximum(proj[:, -1], (means + 10 * stds).max(0).values)
    u = torch.linspace(0, 1, points, dtype=torch.float64, device=x.device)
    grid = lo[:, None] + (hi - lo)[:, None] * u  # (directions, points)
    empirical = torch.searchsorted(proj, grid, right=True).to(torch.float64) / proj.shape[1]
    z = (grid[:, :, None] - means.T[:, None, :]) / stds.T[:, None, :]
    cdf = (torch.special.ndtr(z) * target.weights.to(x.device)).sum(-1)
    return float(torch.trapezoid((empirical - cdf).abs(), grid, dim=1).mean())
