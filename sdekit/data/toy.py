r"""Toy data sets generated in code, for 1D/2D experiments where the whole density can be seen.

Each is a function ``(n, generator=None) -> (n, d)`` float32 tensor, drawn on the CPU from
``generator`` (so a seeded generator gives the same points on every machine), registered in
:data:`TOY_DATASETS`. All are scaled to lie roughly in :math:`[-3, 3]^d` with a standard
deviation of order one, the scale the default SDEs (VP with :math:`\beta_{\max} = 20`, VE with
:math:`\sigma_{\max} = 50`) are designed for.
The two Gaussian mixtures are also exported as exact :class:`~sdekit.GaussianMixture` oracles, so a
trained model's samples and scores can be compared with the true ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..mixture import GaussianMixture

#: :math:`0.3\,\mathcal N(-2, 0.5^2) + 0.2\,\mathcal N(0, 0.2^2) + 0.5\,\mathcal N(1.5, 0.4^2)`
GMM_1D = GaussianMixture([0.3, 0.2, 0.5], [-2.0, 0.0, 1.5], [0.5, 0.2, 0.4])

#: eight equal Gaussians of std 0.2 at radius 2, at angles :math:`k\pi/4`.
GMM_2D = GaussianMixture(
    torch.full((8,), 1 / 8),
    [[2 * math.cos(k * math.pi / 4), 2 * math.sin(k * math.pi / 4)] for k in range(8)],
    0.2,
)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return n


def gmm_1d(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` exact samples of :data:`GMM_1D`, shape ``(n, 1)``."""
    return GMM_1D.sample(_check_n(n), generator=generator, dtype=torch.float32)


def gmm_2d(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` exact samples of :data:`GMM_2D`, shape ``(n, 2)``."""
    return GMM_2D.sample(_check_n(n), generator=generator, dtype=torch.float32)


def two_moons(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Two interleaved half circles (as scikit-learn's ``make_moons``), centred and scaled by 1.5.

    With :math:`\theta \sim U[0, \pi]`, a point is :math:`(\cos\theta, \sin\theta)` or
    :math:`(1 - \cos\theta, \tfrac12 - \sin\theta)` with probability 1/2 each, plus
    :math:`\mathcal N(0, 0.05^2 I)`; then :math:`x \mapsto 1.5\,(x - (\tfrac12, \tfrac14))`.
    """
    theta = math.pi * torch.rand(_check_n(n), generator=generator)
    lower = torch.rand(n, generator=generator) < 0.5
    x = torch.where(lower, 1 - torch.cos(theta), torch.cos(theta))
    y = torch.where(lower, 0.5 - torch.sin(theta), torch.sin(theta))
    pts = torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=generator)
    return 1.5 * (pts - torch.tensor([0.5, 0.25]))


def swiss_roll(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A 2D Swiss roll: :math:`s = \tfrac{3\pi}{2}(1 + 2u)`, :math:`u \sim U[0,1]`,
    :math:`x = (s\cos s,\ s\sin s)/5 + \mathcal N(0, 0.05^2 I)`.
    """
    s = 1.5 * math.pi * (1 + 2 * torch.rand(_check_n(n), generator=generator))
    pts = torch.stack([s * torch.cos(s), s * torch.sin(s)], 1) / 5
    return pts + 0.05 * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The uniform law on the dark squares of a 4×4 board on :math:`[-2, 2]^2`.

    The dark squares are the unit cells :math:`[i-2, i-1] \times [j-2, j-1]` with :math:`i + j` even
    (eight of them), each drawn with probability 1/8, then a uniform point inside it.
    """
    cell = torch.randint(8, (_check_n(n),), generator=generator)
    i = cell // 2
    j = 2 * (cell % 2) + i % 2  # the two columns j with i + j even
    corner = torch.stack([i, j], 1).float() - 2
    return corner + torch.rand(n, 2, generator=generator)


#: ring radii and the probability of each ring (proportional to its length: uniform along the arcs)
RING_RADII = (0.75, 1.5, 2.25)


def rings(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Three concentric circles of radii :data:`RING_RADII`, uniform along their total length,
    plus :math:`\mathcal N(0, 0.05^2 I)`.
    """
    radii = torch.tensor(RING_RADII)
    r = radii[torch.multinomial(radii / radii.sum(), _check_n(n), True, generator=generator)]
    phi = 2 * math.pi * torch.rand(n, generator=generator)
    pts = r[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], 1)
    return pts + 0.05 * torch.randn(n, 2, generator=generator)


#: name -> generator function ``(n, generator) -> (n, d)``
TOY_DATASETS: dict[str, Callable[..., torch.Tensor]] = {
    "gmm_1d": gmm_1d,
    "gmm_2d": gmm_2d,
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "rings": rings,
}
