r"""Noise-rate schedules :math:`\beta(t)` for the variance-preserving family.

A schedule gives :math:`\beta(t)`, its integral :math:`B(t) = \int_0^t \beta(s)\,\mathrm{d}s` (so that
:math:`\bar\alpha(t) = e^{-B(t)}`), the inverse :math:`B^{-1}`, and the discrete DDPM betas it is the
continuous limit of. VP and sub-VP SDEs take any schedule.
"""

from __future__ import annotations

import abc
import math

import torch

from .checks import check_positive
from .configurable import Configurable


class BetaSchedule(abc.ABC, Configurable):
    """A positive noise rate :math:`\\beta(t)` on ``[0, t_max]``."""

    #: the largest time at which the schedule is finite
    t_max: float = math.inf

    @abc.abstractmethod
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """:math:`\\beta(t)`."""

    @abc.abstractmethod
    def integral(self, t: torch.Tensor) -> torch.Tensor:
        """:math:`B(t) = \\int_0^t \\beta(s)\\,ds`."""

    @abc.abstractmethod
    def integral_inverse(self, B: torch.Tensor) -> torch.Tensor:
        """The time :math:`t` with :math:`B(t) = B`."""

    @abc.abstractmethod
    def discrete_betas(self, N: int, T: float) -> torch.Tensor:
        """The ``N`` DDPM betas (float64) that this schedule is the continuous limit of on ``[0, T]``."""


class LinearBeta(BetaSchedule):
    r""":math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})` (Song et al. 2021, App. B).

    DDPM's discrete :math:`\beta_i`, :math:`i = 1..N`, are :math:`\beta(t)/N` on the uniform grid
    :math:`t \in \{0, 1/(N-1), \dots, 1\}`: with :math:`\beta_{\min} = 0.1`, :math:`\beta_{\max} = 20`,
    :math:`N = 1000` this is ``linspace(1e-4, 0.02, 1000)`` of Ho et al. (2020).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if beta_max < beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min, got beta_min={beta_min}, beta_max={beta_max}"
            )

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t):
        return t * (self.beta_min + 0.5 * t * (self.beta_max - self.beta_min))

    def integral_inverse(self, B):
        # root of beta_min t + (d/2) t^2 = B, written without cancellation for small B
        d = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))

    def discrete_betas(self, N, T=1.0):
        t = torch.linspace(0.0, T, N, dtype=torch.float64)
        return self.beta(t) * T / N


class CosineBeta(BetaSchedule):
    r"""The cosine schedule of improved DDPM (Nichol & Dhariwal 2021, eq. 17), continuous in time.

    :math:`\bar\alpha(t) = \cos^2\phi(t) / \cos^2\phi(0)`, :math:`\phi(t) = \frac{\pi}{2}\frac{t + s}{1 + s}`,
    so :math:`B(t) = -2\log(\cos\phi(t)/\cos\phi(0))` and :math:`\beta(t) = \frac{\pi}{1+s}\tan\phi(t)`.
    It reaches :math:`\bar\alpha = 0` at :math:`t = 1`, so a VP SDE with it needs a horizon :math:`T < 1`
    (DPM-Solver uses 0.9946).
    """

    t_max = 1.0

    def __init__(self, s: float = 0.008):
        self.s = check_positive("s", s)
        self._phi0 = 0.5 * math.pi * s / (1 + s)

    def _phi(self, t):
        return 0.5 * math.pi * (t + self.s) / (1 + self.s)

    def beta(self, t):
        return math.pi / (1 + self.s) * torch.tan(self._phi(t))

    def integral(self, t):
        # cos(phi0 + d)/cos(phi0) - 1 = -2 sin^2(d/2) - tan(phi0) sin(d), d = phi(t) - phi0: through
        # log1p this is exact at t = 0 (B = 0, not a rounding-error negative; sigma(0) was NaN) and
        # accurate for small t
        d = 0.5 * math.pi * t / (1 + self.s)
        return -2 * torch.log1p(-2 * torch.sin(0.5 * d) ** 2 - math.tan(self._phi0) * torch.sin(d))

    def integral_inverse(self, B):
        # cos(phi) = c (1 - y) with y = 1 - exp(-B/2); d = phi - phi0 from
        # sin d = c (sin phi - (1 - y) sin phi0) and
        # sin phi - sin phi0 = c^2 (2y - y^2) / (sin phi + sin phi0): positive terms only, so
        # small t keeps its relative accuracy (arccos near 1 loses it)
        c, sn = math.cos(self._phi0), math.sin(self._phi0)
        y = -torch.expm1(-0.5 * B)
        sin_phi = torch.sqrt(sn**2 + c**2 * y * (2 - y))
        sin_d = c * (c**2 * y * (2 - y) / (sin_phi + sn) + y * sn)
        return torch.arcsin(sin_d) * (2 * (1 + self.s) / math.pi)

    def discrete_betas(self, N, T=1.0):
        r"""Improved DDPM's betas: :math:`\beta_i = \min(1 - \bar\alpha(i/N)/\bar\alpha((i-1)/N), 0.999)`.

        Always over :math:`t \in [0, 1]` (``T`` is ignored): the discrete schedule ends at
        :math:`\bar\alpha = 0` where the continuous one must stop short.
        """
        t = torch.linspace(0.0, 1.0, N + 1, dtype=torch.float64)
        alpha_bar = torch.cos(self._phi(t)) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
