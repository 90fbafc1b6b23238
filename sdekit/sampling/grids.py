r"""Time grids for samplers: decreasing float64 times from :math:`T` down to :math:`t_{\min} > 0`.

For ``steps`` steps a grid has ``steps + 1`` times :math:`t_0 = T > t_1 > \dots > t_N = t_{\min}`,
with the end points set exactly (no round trip through an inverse schedule). With :math:`u = i/N`:

- ``"uniform"``: uniform in time, :math:`t_i = T + u\,(t_{\min} - T)` (Song et al. 2021).
- ``"quadratic"``: :math:`t_i = t_{\min} + (1 - u)^2 (T - t_{\min})`, finer near the data
  (Song, Meng and Ermon 2021, DDIM App. D.2).
- ``"logsnr"``: uniform in the log-SNR :math:`\lambda = \log(\alpha^2/\sigma^2)` (Lu et al. 2022,
  DPM-Solver §3.3), mapped back by :meth:`~sdekit.LinearSDE.log_snr_inverse`.
- ``"edm"``: Karras et al. 2022, eq. 5, in the scaled noise level
  :math:`\tilde\sigma = \sigma/\alpha` (EDM eq. 4 / Table 1): :math:`\tilde\sigma_i =
  (\tilde\sigma_{\max}^{1/\rho} + u\,(\tilde\sigma_{\min}^{1/\rho}
  - \tilde\sigma_{\max}^{1/\rho}))^\rho` with :math:`\rho = 7`, mapped back through
  :math:`\lambda = -2\log\tilde\sigma`.

The last two need a :class:`~sdekit.LinearSDE`; the first two work for any SDE.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from ..linear import LinearSDE
from ..sde import SDE

Grid = Literal["uniform", "quadratic", "logsnr", "edm"]
GRIDS = get_args(Grid)


def check_t_min(sde: SDE, t_min: float | None) -> float:
    """``t_min`` (default ``sde.t_min``) must lie in (0, T): no sampler may reach σ = 0."""
    t_min = sde.t_min if t_min is None else float(t_min)
    if not 0 < t_min < sde.T:
        raise ValueError(
            f"t_min must lie in (0, T) = (0, {sde.T}), got {t_min}"
            + (" (the SDE's default; pass t_min explicitly)" if t_min == sde.t_min else "")
        )
    return t_min


def time_grid(
    sde: SDE,
    steps: int,
    kind: Grid = "uniform",
    *,
    t_min: float | None = None,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``steps + 1`` decreasing float64 times of grid ``kind`` from ``T`` to ``t_min``.

    Args:
        sde: the forward SDE (its ``T``; its marginal for ``"logsnr"`` and ``"edm"``).
        steps: number of steps, >= 1.
        kind: one of :data:`GRIDS`.
        t_min: the last time, in (0, T); defaults to ``sde.t_min``.
        rho: the EDM grid's exponent (> 0), used by ``"edm"`` only.
        device: where the grid lives (the samples' device).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if kind not in GRIDS:  # the message names the tensor alternative, unlike check_choice's
        raise ValueError(f"grid must be one of {GRIDS} or a tensor of times, got {kind!r}")
    t_min = check_t_min(sde, t_min)
    T = sde.T
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = T + u * (t_min - T)
    elif kind == "quadratic":
        ts = t_min + (1 - u) ** 2 * (T - t_min)
    else:
        if not isinstance(sde, LinearSDE):
            name = type(sde).__name__
            raise ValueError(f"grid {kind!r} needs a LinearSDE's marginal, got {name}")
        ends = torch.tensor([T, t_min], dtype=torch.float64)
        lam_T, lam_min = sde.log_snr(ends)
        if kind == "logsnr":
            lam = lam_T + u * (lam_min - lam_T)
        else:
            if not rho > 0:
                raise ValueError(f"rho must be > 0, got {rho}")
            s_max, s_min = torch.exp(-0.5 * lam_T), torch.exp(-0.5 * lam_min)
            s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -2 * torch.log(s)
        ts = sde.log_snr_inverse(lam)
    ts[0], ts[-1] = T, t_min
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"grid {kind!r} with {steps} steps is not strictly decreasing here")
    return ts.to(device)


def check_grid(sde: SDE, ts: torch.Tensor) -> torch.Tensor:
    """A user's grid: a 1D tensor of >= 2 strictly decreasing times in (0, T], as float64."""
    if not isinstance(ts, torch.Tensor) or ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError("grid must be a grid name or a 1D tensor of at least 2 times")
    ts = ts.to(torch.float64)
    cpu = ts.cpu()
    if not bool((cpu[1:] < cpu[:-1]).all()):
        raise ValueError("grid must be strictly decreasing (from the noisiest time to t_min)")
    if not (0 < float(cpu[-1]) and float(cpu[0]) <= sde.T):
        raise ValueError(
            f"grid times must lie in (0, T] = (0, {sde.T}], got [{float(cpu[-1])}, {float(cpu[0])}]"
        )
    return ts


def batch_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A grid time (0-dim, float64) as the ``(batch,)`` tensor in ``x``'s dtype for a score."""
    return t.to(x.dtype).expand(x.shape[0])
