r"""The VP SDE of a discrete-time diffusion model: any ``alphas_cumprod``, exact at its timesteps.

A DDPM-style model (Ho et al. 2020; diffusers, improved DDPM, Stable Diffusion) is trained on
:math:`N` timesteps :math:`\tau = 0, \dots, N-1` with :math:`x_\tau = \sqrt{\bar\alpha_\tau}\,x_0
+ \sqrt{1 - \bar\alpha_\tau}\,\varepsilon`. :class:`DiscreteVPSDE` is the variance-preserving SDE
(:math:`\alpha^2 + \sigma^2 = 1`) whose marginals equal these at the times

.. math:: t_\tau = \frac{\tau + 1}{N}, \qquad \alpha(t_\tau)^2 = \bar\alpha_\tau, \qquad
          \tau = N t - 1,

so :math:`t = 0` is the clean data (:math:`\bar\alpha = 1`, one step before :math:`\tau = 0`) and
:math:`T = 1` is the last timestep :math:`N - 1`. In between, the log-SNR
:math:`\lambda = \log(\bar\alpha/(1-\bar\alpha))` is linear in :math:`t` on every
:math:`[t_\tau, t_{\tau+1}]`: the convention of k-diffusion's ``DiscreteSchedule`` and diffusers'
``_sigma_to_t`` (linear in :math:`\log\tilde\sigma = -\lambda/2`), so a fractional timestep means
the same noise level here as there. On :math:`[0, t_0]` the rate is constant,
:math:`\bar\alpha(t) = \bar\alpha_0^{N t}`, so the transition from :math:`t = 0` to :math:`t_0` is
DDPM's first step :math:`\sqrt{1-\beta_0}`. With :math:`B = -\log\bar\alpha(t) =
\operatorname{softplus}(-\lambda)` the SDE is :math:`\mathrm{d}x = -\tfrac12\beta x\,\mathrm{d}t +
\sqrt\beta\,\mathrm{d}w` (Song et al. 2021, eq. 11) with the piecewise-smooth rate

.. math:: \beta(t) = \frac{\mathrm{d}B}{\mathrm{d}t} = -\sigma^2(t)\,\frac{\mathrm{d}\lambda}{\mathrm{d}t}
          = N\,(\lambda_\tau - \lambda_{\tau+1})\,\sigma^2(t) \quad (t_\tau < t < t_{\tau+1}),
          \qquad \beta = -N\log\bar\alpha_0 \quad (t < t_0),

so :math:`f = -\beta/2` and :math:`g^2 = \beta` are closed forms, and the inverse log-SNR is exact
(a search over the monotone knots, no bisection). :math:`\beta` is continuous within a step and jumps
at the timesteps, by the relative change of :math:`\lambda_{\tau+1} - \lambda_\tau` (0.13% at the
median of DDPM's linear schedule, up to 38% over its first steps): fixed-grid samplers do not see
it, an adaptive ODE solver spends some steps on it (80 evaluations on the continuous VP SDE, 104 on
DDPM's schedule, for a 1D mixture at the default tolerances). A smoother interpolation would give
fractional timesteps another meaning than k-diffusion's. The transition between two timesteps is the
discrete one: :math:`\alpha_{t_\tau|t_{\tau-1}}^2 = \bar\alpha_\tau/\bar\alpha_{\tau-1} =
1 - \beta_\tau`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .linear import VPSDE, LinearSDE
from .schedules import BetaSchedule, CosineBeta


def check_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    r"""``alphas_cumprod`` as a float64 tensor: 1D, at least 2 values, strictly decreasing in (0, 1).

    :math:`\bar\alpha = 1` is noise-free (log-SNR :math:`+\infty`) and :math:`\bar\alpha = 0` pure
    noise (a zero-terminal-SNR schedule, whose prior is no Gaussian of finite variance): neither is
    a timestep a noise-prediction model can be evaluated at.
    """
    ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
    if ac.ndim != 1 or ac.shape[0] < 2:
        raise ValueError(
            f"alphas_cumprod must be a 1D sequence of at least 2 values, got shape {tuple(ac.shape)}"
        )
    bad = ~(torch.isfinite(ac) & (ac > 0) & (ac < 1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"alphas_cumprod must lie in (0, 1), got alphas_cumprod[{i}] = {float(ac[i])!r} (1 is "
            "noise-free, 0 pure noise; a zero-terminal-SNR schedule, e.g. diffusers' "
            "rescale_betas_zero_snr, has no finite-variance prior)"
        )
    flat = ~(ac[1:] < ac[:-1])
    if bool(flat.any()):
        i = int(flat.nonzero()[0])
        raise ValueError(
            f"alphas_cumprod must be strictly decreasing, got alphas_cumprod[{i}] = "
            f"{float(ac[i])!r} <= alphas_cumprod[{i + 1}] = {float(ac[i + 1])!r}"
        )
    return ac


class DiscreteSchedule(BetaSchedule):
    r"""The rate :math:`\beta(t)` of :class:`DiscreteVPSDE` (its module gives the formulas).

    Beyond :math:`t = 1` the last piece of the log-SNR continues linearly.
    """

    def __init__(self, alphas_cumprod):
        ac = check_alphas_cumprod(alphas_cumprod)
        self.num_timesteps = ac.shape[0]
        self.alphas_cumprod = ac
        self._lam = torch.log(ac) - torch.log1p(-ac)  # knots lambda_tau, decreasing
        self._B0 = float(-torch.log(ac[0]))
        self._cache: dict = {}

    def _knots(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda_tau, -lambda_tau) on ``t``'s device and dtype (cached)."""
        key = (t.device, t.dtype)
        if key not in self._cache:
            lam = self._lam.to(t.device, t.dtype)
            self._cache[key] = (lam, -lam)
        return self._cache[key]

    def _piece(self, t: torch.Tensor):
        """``u = N t - 1``, the knot index ``k`` of its piece, the weight ``w`` and the knots."""
        lam, _ = self._knots(t)
        u = self.num_timesteps * t - 1
        k = u.floor().clamp(0, self.num_timesteps - 2).long()
        return u, k, u - k, lam

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        u, k, w, lam = self._piece(t)
        inner = lam[k] + w * (lam[k + 1] - lam[k])
        # t < t_0: constant rate, B = N t B_0; log-SNR = -log(e^B - 1) (+inf at t = 0)
        B = (self.num_timesteps * self._B0) * t
        first = -torch.log(torch.expm1(B))
        return torch.where(u >= 0, inner, first)

    def log_snr_inverse(self, lam_query: torch.Tensor) -> torch.Tensor:
        lam, neg = self._knots(lam_query)
        n = self.num_timesteps
        # first knot with lambda_j <= lam_query; the piece is [j - 1, j]
        k = (torch.searchsorted(neg, (-lam_query).contiguous()) - 1).clamp(0, n - 2)
        u = k + (lam[k] - lam_query) / (lam[k] - lam[k + 1])
        first = F.softplus(-lam_query) / (n * self._B0)
        return torch.where(lam_query > lam[0], first, (u + 1) / n)

    def beta(self, t):
        u, k, _, lam = self._piece(t)
        sigma2 = torch.sigmoid(-self.log_snr(t))
        inner = self.num_timesteps * (lam[k] - lam[k + 1]) * sigma2
        return torch.where(u >= 0, inner, torch.full_like(t, self.num_timesteps * self._B0))

    def integral(self, t):
        B = (self.num_timesteps * self._B0) * t
        return torch.where(self.num_timesteps * t - 1 >= 0, F.softplus(-self.log_snr(t)), B)

    def integral_inverse(self, B):
        return self.log_snr_inverse(-torch.log(torch.expm1(B)))

    def discrete_betas(self, N, T=1.0):
        r""":math:`\beta_i = 1 - \bar\alpha(t_i)/\bar\alpha(t_{i-1})` at :math:`t_i = (i+1)T/N`:
        the original betas for ``N`` = the number of timesteps and ``T = 1``."""
        t = torch.arange(N + 1, dtype=torch.float64) * (T / N)
        B = self.integral(t)
        return -torch.expm1(B[:-1] - B[1:])


class DiscreteVPSDE(VPSDE):
    r"""The VP SDE whose marginals are a discrete model's at its timesteps (see the module).

    Args:
        alphas_cumprod: :math:`\bar\alpha_\tau`, :math:`\tau = 0..N-1`, strictly decreasing in
            (0, 1), e.g. a diffusers scheduler's ``alphas_cumprod`` (see :meth:`from_scheduler`).
        t_min: the smallest sampling time; default :math:`t_0 = 1/N`, timestep 0 (the least noisy
            one a model was trained on).

    ``T = 1`` is timestep :math:`N - 1`; the prior is :math:`\mathcal N(0, I)`, as diffusers' (its
    ``init_noise_sigma = 1`` for DDIM and DPM-Solver).
    """

    def __init__(self, alphas_cumprod, *, t_min: float | None = None):
        schedule = DiscreteSchedule(alphas_cumprod)
        n = schedule.num_timesteps
        super().__init__(schedule=schedule, T=1.0, t_min=1.0 / n if t_min is None else t_min)
        self.num_timesteps = n

    @classmethod
    def from_betas(cls, betas, **kwargs) -> DiscreteVPSDE:
        r""":math:`\bar\alpha_\tau = \prod_{i \le \tau}(1 - \beta_i)` (in float64) for betas in (0, 1)."""
        b = torch.as_tensor(betas).detach().to("cpu", torch.float64)
        if b.ndim != 1 or not bool((torch.isfinite(b) & (b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a 1D sequence of values in (0, 1)")
        return cls(torch.exp(torch.cumsum(torch.log1p(-b), 0)), **kwargs)

    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> DiscreteVPSDE:
        """DDPM's betas ``linspace(beta_start, beta_end, N)`` (Ho et al. 2020, §4), in float64."""
        return cls.from_betas(
            torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        )

    @classmethod
    def scaled_linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> DiscreteVPSDE:
        r"""Latent/Stable Diffusion's betas ``linspace(sqrt(beta_start), sqrt(beta_end), N)**2``."""
        root = torch.linspace(
            math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64
        )
        return cls.from_betas(root**2)

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008) -> DiscreteVPSDE:
        r"""Improved DDPM's discrete cosine schedule (Nichol & Dhariwal 2021, eq. 17; betas clipped
        at 0.999), diffusers' ``"squaredcos_cap_v2"``."""
        return cls.from_betas(CosineBeta(s).discrete_betas(num_timesteps))

    @classmethod
    def from_scheduler(cls, scheduler, **kwargs) -> DiscreteVPSDE:
        """The schedule of a diffusers scheduler (its ``alphas_cumprod``, float32 as it computes them).

        Its ``config.num_train_timesteps`` must be the length of ``alphas_cumprod``.
        """
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:
            raise ValueError(
                f"scheduler must have alphas_cumprod (a DDPM-type diffusers scheduler), got "
                f"{type(scheduler).__name__}"
            )
        n = getattr(getattr(scheduler, "config", None), "num_train_timesteps", len(ac))
        if n != len(ac):
            raise ValueError(
                f"scheduler.config.num_train_timesteps = {n} does not match the {len(ac)} values of "
                "its alphas_cumprod"
            )
        return cls(ac, **kwargs)

    @classmethod
    def from_sde(cls, sde: LinearSDE, num_timesteps: int = 1000) -> DiscreteVPSDE:
        r"""The discrete schedule that equals ``sde``'s marginal (up to the VP scaling) at
        :math:`t_\tau = (\tau+1)T/N`: :math:`\bar\alpha_\tau = \operatorname{sigmoid}(\lambda(t_\tau))`.

        For a VP SDE with ``T = 1`` both SDEs then have the same log-SNR at every timestep, unlike
        :meth:`VPSDE.discrete_betas` (DDPM's betas, whose :math:`\bar\alpha_{999} = 4.04\cdot10^{-5}`
        is not the continuous :math:`\alpha(1)^2 = 4.32\cdot10^{-5}`).
        """
        if not isinstance(sde, LinearSDE):
            raise ValueError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int):
            raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps}")
        t = torch.arange(1, num_timesteps + 1, dtype=torch.float64) * (sde.T / num_timesteps)
        return cls(torch.sigmoid(sde.log_snr(t)))

    # ------------------------------------------------------------------ the two clocks

    def time(self, timestep: torch.Tensor | float | Sequence[float]) -> torch.Tensor:
        r"""The continuous time :math:`t = (\tau + 1)/N` of a (possibly fractional) timestep, float64."""
        tau = torch.as_tensor(timestep).to(torch.float64)
        return (tau + 1) / self.num_timesteps

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        r"""The (fractional) timestep :math:`\tau = N t - 1` of a time, in ``t``'s dtype."""
        return self.num_timesteps * t - 1

    # ------------------------------------------------------------------ exact forms from the knots

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        r""":math:`\bar\alpha_\tau` (float64), as given."""
        return self.schedule.alphas_cumprod.clone()

    @property
    def betas(self) -> torch.Tensor:
        r""":math:`\beta_\tau = 1 - \bar\alpha_\tau/\bar\alpha_{\tau-1}` with :math:`\bar\alpha_{-1} = 1`."""
        return self.discrete_betas(self.num_timesteps)

    def log_snr(self, t):
        return self.schedule.log_snr(t)

    def log_snr_inverse(self, lam):
        return self.schedule.log_snr_inverse(lam)

    def log_alpha(self, t):
        return 0.5 * F.logsigmoid(self.log_snr(t))

    def log_sigma(self, t):
        return 0.5 * F.logsigmoid(-self.log_snr(t))

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.exp(self.log_sigma(t))

    def __repr__(self) -> str:
        ac = self.alphas_cumprod
        return (
            f"DiscreteVPSDE(N={self.num_timesteps}, alphas_cumprod[0]={float(ac[0]):.6g}, "
            f"alphas_cumprod[-1]={float(ac[-1]):.6g}, t_min={self.t_min:g})"
        )
