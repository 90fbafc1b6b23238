r"""Linear SDEs :math:`\mathrm{d}x = f(t)\,x\,\mathrm{d}t + g(t)\,\mathrm{d}w` and their Gaussian marginals.

Every linear SDE has the marginal (Song et al. 2021, App. B; Kingma et al. 2021, eq. 1)

.. math:: x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon, \qquad \varepsilon \sim \mathcal N(0, I),

with log-SNR :math:`\lambda(t) = \log(\alpha^2/\sigma^2)`, and conversely the schedule
:math:`(\alpha, \sigma)` fixes the SDE:

.. math:: f(t) = \frac{\mathrm{d}\log\alpha}{\mathrm{d}t}, \qquad
          g^2(t) = \frac{\mathrm{d}\sigma^2}{\mathrm{d}t} - 2f(t)\sigma^2
                 = -\sigma^2(t)\,\frac{\mathrm{d}\lambda}{\mathrm{d}t}.

The transition kernel from :math:`s < t` is :math:`x_t \mid x_s \sim \mathcal N(\alpha_{t|s} x_s,
\sigma^2_{t|s} I)` with :math:`\alpha_{t|s} = \alpha_t/\alpha_s` and
:math:`\sigma^2_{t|s} = \sigma_t^2 - \alpha_{t|s}^2\sigma_s^2 = \sigma_t^2\,(1 - e^{\lambda_t - \lambda_s})`
(the last form stays accurate when :math:`s \to t`).

To add your own linear SDE give :meth:`LinearSDE.alpha` and :meth:`LinearSDE.sigma`; drift, diffusion
and the inverse log-SNR follow (by autograd and bisection), and every sampler accepts it. Override the
log forms and derivatives with closed forms where you have them, as the built-in SDEs do.
"""

from __future__ import annotations

import abc
import math

import torch

from .checks import check_less, check_positive, check_time, check_time_tensor
from .configurable import Configurable
from .schedules import BetaSchedule, CosineBeta, LinearBeta
from .sde import SDE, broadcast_to_data

_LOG_2PI = math.log(2 * math.pi)


def _time_derivative(fn, t: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        t_ = t.detach().requires_grad_(True)
        y = fn(t_)
        if not y.requires_grad:  # constant in t
            return torch.zeros_like(t)
        (d,) = torch.autograd.grad(y.sum(), t_)
    return d


class LinearSDE(SDE, Configurable):
    r"""A linear SDE defined by its marginal schedule :math:`x_t = \alpha(t) x_0 + \sigma(t)\varepsilon`."""

    @abc.abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        r"""The marginal mean coefficient :math:`\alpha(t)`, shape ``(batch,)``."""

    @abc.abstractmethod
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        r"""The marginal standard deviation :math:`\sigma(t)`, shape ``(batch,)``."""

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(self.alpha(t))

    def log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(self.sigma(t))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        r"""Log-SNR :math:`\lambda(t) = 2(\log\alpha(t) - \log\sigma(t))`, decreasing in t."""
        return 2 * (self.log_alpha(t) - self.log_sigma(t))

    def log_snr_inverse(self, lam: torch.Tensor) -> torch.Tensor:
        r"""The time :math:`t = \lambda^{-1}(\text{lam})`; by default 64 bisection steps in float64.

        Fixed-count bisection keeps it free of host synchronisation; the result is clamped to
        :math:`[0, T]` only in the sense that a log-SNR outside :math:`\lambda([0, T])` maps to an end.
        """
        lam64 = lam.to(torch.float64)
        lo = torch.zeros_like(lam64)
        hi = torch.full_like(lam64, self.T)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam64
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    def f(self, t: torch.Tensor) -> torch.Tensor:
        r"""Drift coefficient :math:`f(t) = \mathrm{d}\log\alpha/\mathrm{d}t`."""
        return _time_derivative(self.log_alpha, t)

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        r"""Squared diffusion :math:`g^2(t) = -\sigma^2(t)\,\mathrm{d}\lambda/\mathrm{d}t`."""
        return -(self.sigma(t) ** 2) * _time_derivative(self.log_snr, t)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return broadcast_to_data(self.f(t), x) * x

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.g2(t))

    def diffusion_squared(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return broadcast_to_data(self.g2(t), x)

    def diffusion_divergence(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(alpha, sigma)``: :math:`x_t \mid x_0 \sim \mathcal N(\alpha(t) x_0, \sigma(t)^2 I)`.

        ``t`` is a ``(batch,)`` tensor in :math:`[0, T]`; a Python float raises ``TypeError`` (the
        schedules compute on tensors, in ``t``'s dtype and on its device).
        """
        check_time(check_time_tensor("t", t), self.T)
        return self.alpha(t), self.sigma(t)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r""":math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon` for a ``(batch,)`` time ``t``."""
        if noise.shape != x0.shape:
            raise ValueError(
                f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}"
            )
        alpha, sigma = self.marginal(t)
        return broadcast_to_data(alpha, x0) * x0 + broadcast_to_data(sigma, x0) * noise

    def transition(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(alpha_ts, sigma_ts)`` of the kernel :math:`x_t \mid x_s`, for :math:`s \le t`."""
        check_time(check_time_tensor("s", s), self.T, "s")
        check_time(check_time_tensor("t", t), self.T, "t")
        if s.device.type == "cpu" and bool((s > t).any()):
            raise ValueError("s must be <= t elementwise for the forward transition kernel")
        alpha_ts = torch.exp(self.log_alpha(t) - self.log_alpha(s))
        # s = t = 0 gives inf - inf where the log-SNR is infinite at 0; the kernel is the identity
        d_lam = torch.where(t > s, self.log_snr(t) - self.log_snr(s), torch.zeros_like(t))
        sigma_ts = self.sigma(t) * torch.sqrt(-torch.expm1(d_lam))
        return alpha_ts, sigma_ts

    @property
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior :math:`p_T \\approx \\mathcal N(0, \\sigma_T^2 I)`."""
        T = torch.tensor([self.T], dtype=torch.float64)
        return float(self.sigma(T))

    def prior_sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        s = self.prior_std
        z = (x / s).flatten(1)
        return -0.5 * (z**2).sum(1) - z.shape[1] * (math.log(s) + 0.5 * _LOG_2PI)


class _BetaScheduledSDE(LinearSDE):
    """Shared part of VP and sub-VP: drift -beta(t)/2 x, mean coefficient exp(-B(t)/2), prior N(0, I)."""

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        *,
        schedule: BetaSchedule | None = None,
        T: float = 1.0,
        t_min: float = 1e-3,
    ):
        super().__init__(T, t_min)
        self.schedule = schedule if schedule is not None else LinearBeta(beta_min, beta_max)
        if not T < self.schedule.t_max:
            raise ValueError(
                f"T must be < {self.schedule.t_max} for {type(self.schedule).__name__}, got {T}"
            )

    def beta(self, t):
        return self.schedule.beta(t)

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def log_alpha(self, t):
        return -0.5 * self.schedule.integral(t)

    def f(self, t):
        return -0.5 * self.schedule.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


class VPSDE(_BetaScheduledSDE):
    r"""Variance-preserving SDE :math:`\mathrm{d}x = -\tfrac12\beta x\,\mathrm{d}t + \sqrt\beta\,\mathrm{d}w`.

    Song et al. 2021, eq. 11; the continuous limit of DDPM (Ho et al. 2020). With
    :math:`B(t) = \int_0^t\beta`: :math:`\alpha = e^{-B/2}`, :math:`\sigma^2 = 1 - e^{-B}`,
    :math:`\lambda = -\log(e^{B} - 1)`. The prior is :math:`\mathcal N(0, I)`.

    Args:
        beta_min, beta_max: the linear schedule's end points (ignored when ``schedule`` is given).
        schedule: any :class:`~sdekit.schedules.BetaSchedule`, e.g. ``CosineBeta()``; see also
            :meth:`cosine`.
        T: horizon; must stay below the schedule's ``t_max``.
        t_min: smallest sampling time.
    """

    @classmethod
    def cosine(cls, s: float = 0.008, T: float = 0.9946, t_min: float = 1e-3) -> VPSDE:
        """VP SDE with improved DDPM's cosine schedule (Nichol & Dhariwal 2021)."""
        return cls(schedule=CosineBeta(s), T=T, t_min=t_min)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self.schedule.integral(t)))

    def log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(-self.schedule.integral(t)))

    def log_snr(self, t):
        B = self.schedule.integral(t)
        return -B - torch.log(-torch.expm1(-B))

    def log_snr_inverse(self, lam):
        return self.schedule.integral_inverse(torch.nn.functional.softplus(-lam))

    def g2(self, t):
        return self.schedule.beta(t)

    def discrete_betas(self, N: int) -> torch.Tensor:
        """The ``N`` DDPM betas (float64) this SDE discretizes to; see :mod:`sdekit.ddpm`."""
        return self.schedule.discrete_betas(N, self.T)


class SubVPSDE(_BetaScheduledSDE):
    r"""Sub-VP SDE :math:`\mathrm{d}x = -\tfrac12\beta x\,\mathrm{d}t + \sqrt{\beta(1-e^{-2B})}\mathrm{d}w`.

    Song et al. 2021, eq. 12: :math:`\alpha = e^{-B/2}`, :math:`\sigma = 1 - e^{-B}` (its variance stays
    below the VP one), :math:`\lambda = -B - 2\log(1 - e^{-B})`, inverted by
    :math:`B = 2\,\operatorname{asinh}(e^{-\lambda/2}/2)`. The prior is :math:`\mathcal N(0, I)`.
    """

    def sigma(self, t):
        return -torch.expm1(-self.schedule.integral(t))

    def log_sigma(self, t):
        return torch.log(-torch.expm1(-self.schedule.integral(t)))

    def log_snr(self, t):
        B = self.schedule.integral(t)
        return -B - 2 * torch.log(-torch.expm1(-B))

    def log_snr_inverse(self, lam):
        return self.schedule.integral_inverse(2 * torch.asinh(0.5 * torch.exp(-0.5 * lam)))

    def g2(self, t):
        return -self.schedule.beta(t) * torch.expm1(-2 * self.schedule.integral(t))


class VESDE(LinearSDE):
    r"""Variance-exploding SDE :math:`\mathrm{d}x = \sqrt{\mathrm{d}\sigma^2/\mathrm{d}t}\,\mathrm{d}w`.

    Song et al. 2021, eq. 9 (the continuous limit of SMLD/NCSN): geometric
    :math:`\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^{t/T}`, :math:`\alpha = 1`,
    :math:`g^2 = 2\sigma^2\log(\sigma_{\max}/\sigma_{\min})/T`. As in score_sde, :math:`x_0` here is the clean
    data, so the SDE's own marginal at :math:`t = 0` is the data smoothed by :math:`\sigma_{\min}`; every
    formula (marginal, kernel, Fokker–Planck) is consistent with that.
    Prior :math:`\mathcal N(0, \sigma_{\max}^2 I)`.
    """

    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        *,
        T: float = 1.0,
        t_min: float = 1e-5,
    ):
        super().__init__(T, t_min)
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        check_less("sigma_min", sigma_min, "sigma_max", sigma_max)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return torch.exp(self.log_sigma(t))

    def log_alpha(self, t):
        return torch.zeros_like(t)

    def log_sigma(self, t):
        return math.log(self.sigma_min) + (t / self.T) * self._log_ratio

    def log_snr(self, t):
        return -2 * self.log_sigma(t)

    def log_snr_inverse(self, lam):
        return self.T * (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio

    def f(self, t):
        return torch.zeros_like(t)

    def g2(self, t):
        return 2 * self._log_ratio / self.T * self.sigma(t) ** 2

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def smld_sigmas(self, N: int) -> torch.Tensor:
        """SMLD's ``N`` geometric noise levels from sigma_min to sigma_max (float64)."""
        return torch.exp(
            torch.linspace(
                math.log(self.sigma_min), math.log(self.sigma_max), N, dtype=torch.float64
            )
        )


class EDMSDE(LinearSDE):
    r"""The EDM SDE :math:`\mathrm{d}x = \sqrt{2t}\,\mathrm{d}w`: :math:`\sigma(t) = t`, :math:`\alpha = 1`.

    Karras et al. 2022, Table 1 and eq. 6: time is the noise level. The horizon is :math:`T = \sigma_{\max}`
    and sampling stops at :math:`t_{\min} = \sigma_{\min}`. Prior :math:`\mathcal N(0, \sigma_{\max}^2 I)`.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        check_positive("sigma_min", sigma_min)
        check_less("sigma_min", sigma_min, "sigma_max", sigma_max)
        super().__init__(T=sigma_max, t_min=sigma_min)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return t

    def log_alpha(self, t):
        return torch.zeros_like(t)

    def log_sigma(self, t):
        return torch.log(t)

    def log_snr(self, t):
        return -2 * torch.log(t)

    def log_snr_inverse(self, lam):
        return torch.exp(-0.5 * lam)

    def f(self, t):
        return torch.zeros_like(t)

    def g2(self, t):
        return 2 * t


class OUSDE(LinearSDE):
    r"""Ornstein–Uhlenbeck SDE, constant rate: :math:`\mathrm{d}x = -\theta x\,\mathrm{d}t + g\,\mathrm{d}w`.

    :math:`\alpha = e^{-\theta t}`, :math:`\sigma^2 = \frac{g^2}{2\theta}(1 - e^{-2\theta t})`; the prior is
    the stationary law :math:`\mathcal N(0, \frac{g^2}{2\theta} I)`. With :math:`g^2 = 2\theta` it is the VP
    SDE with constant :math:`\beta = 2\theta`.
    """

    def __init__(
        self, theta: float = 1.0, g: float = math.sqrt(2.0), *, T: float = 5.0, t_min=1e-3
    ):
        super().__init__(T, t_min)
        self.theta = check_positive("theta", theta)
        self.g = check_positive("g", g)
        self._stationary_var = g**2 / (2 * theta)

    def alpha(self, t):
        return torch.exp(-self.theta * t)

    def sigma(self, t):
        return torch.sqrt(self._stationary_var * -torch.expm1(-2 * self.theta * t))

    def log_alpha(self, t):
        return -self.theta * t

    def log_sigma(self, t):
        return 0.5 * (math.log(self._stationary_var) + torch.log(-torch.expm1(-2 * self.theta * t)))

    def log_snr_inverse(self, lam):
        return torch.log1p(torch.exp(-lam) / self._stationary_var) / (2 * self.theta)

    def f(self, t):
        return torch.full_like(t, -self.theta)

    def g2(self, t):
        return torch.full_like(t, self.g**2)

    @property
    def prior_std(self) -> float:
        return math.sqrt(self._stationary_var)
