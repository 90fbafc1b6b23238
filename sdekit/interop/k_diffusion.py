r"""k-diffusion and EDM denoisers :math:`D(\tilde x, \tilde\sigma)` as sdekit models, and back.

k-diffusion (and EDM, Karras et al. 2022, eq. 4 with :math:`s(t) = \alpha`) work in the scaled state
and noise level

.. math:: \tilde x = x/\alpha(t), \qquad \tilde\sigma = \sigma(t)/\alpha(t) = e^{-\lambda(t)/2},
          \qquad \tilde x = x_0 + \tilde\sigma\,\varepsilon,

with a denoiser :math:`D(\tilde x, \tilde\sigma) \approx \mathbb E[x_0 \mid \tilde x]`. Every linear
SDE is one of these up to the scaling, so for any :class:`~sdekit.LinearSDE`

.. math:: \text{model}(x, t) = D\bigl(x/\alpha(t),\ \tilde\sigma(t)\bigr) \quad
          (\text{prediction } x_0), \qquad t = \lambda^{-1}(-2\log\tilde\sigma).

The samplers then agree step for step: k-diffusion's ``sample_euler`` is sdekit's ``ddim`` (Euler in
:math:`(\tilde x, \tilde\sigma)` is DDIM, Karras et al. 2022, §3; for :class:`~sdekit.EDMSDE`,
where :math:`\tilde x = x` and :math:`\tilde\sigma = t`, it is also sdekit's ``euler``), and
``sample_dpmpp_2m`` is ``dpmpp_2m`` with ``final="full_order"``. A k-diffusion grid ending in
:math:`\tilde\sigma = 0` takes its last step to the data: that step is :math:`\tilde x = D`, which is
sdekit's ``denoise_final=True`` (see :func:`options_matching_sigmas`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..conditioning import Cond, call_model
from ..linear import LinearSDE
from ..parameterization import Prediction, check_prediction, to_x0
from ..sde import broadcast_to_data


def _check_linear(sde) -> LinearSDE:
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"sde must be a LinearSDE (alpha, sigma), got {type(sde).__name__}")
    return sde


def edm_sigma(sde: LinearSDE, t: torch.Tensor) -> torch.Tensor:
    r"""The scaled noise level :math:`\tilde\sigma = \sigma(t)/\alpha(t) = e^{-\lambda(t)/2}`."""
    return torch.exp(-0.5 * _check_linear(sde).log_snr(t))


def edm_time(sde: LinearSDE, sigma: torch.Tensor) -> torch.Tensor:
    r"""The time whose scaled noise level is ``sigma``: :math:`t = \lambda^{-1}(-2\log\tilde\sigma)`."""
    return _check_linear(sde).log_snr_inverse(-2 * torch.log(sigma))


def _time_of_sigma(sde: LinearSDE, sigma: torch.Tensor) -> torch.Tensor:
    """:func:`edm_time`, checked to lie in [0, T] up to a relative 1e-6 (float32 levels), and
    rounded onto it."""
    t = edm_time(sde, sigma)
    ok = (t >= -1e-6 * sde.T) & (t <= sde.T * (1 + 1e-6))
    message = f"sigma must lie within the SDE's noise levels sigma/alpha from t = 0 to T = {sde.T}"
    if t.device.type == "cpu":
        if not bool(ok.all()):
            raise ValueError(f"{message}, got {sigma[~ok][:4].tolist()}")
    else:
        torch._assert_async(ok.all(), message)
    return t.clamp(0.0, sde.T)


def _as_kwargs(cond: Cond) -> dict:
    """A condition as the keyword arguments of a k-diffusion denoiser (its ``extra_args``)."""
    if cond is None:
        return {}
    if isinstance(cond, Mapping):
        return dict(cond)
    return {"cond": cond}


class KDiffusionModel(nn.Module):
    r"""An sdekit model (prediction ``"x0"``) from a denoiser ``denoiser(x_tilde, sigma, **extra)``.

    ``model(x, t, cond)`` calls ``denoiser(x / alpha(t), sigma(t) / alpha(t), **extra)`` with
    ``extra = cond`` for a mapping (k-diffusion's ``extra_args``, e.g. ``{"cond": c, "uncond": u}``)
    or ``{"cond": cond}`` for a tensor. Use it as
    ``sample(model, sde, shape, prediction=model.prediction)``.

    Args:
        denoiser: a k-diffusion ``Denoiser``, an EDM network, any callable of ``(x_tilde, sigma)``.
        sde: the linear SDE to sample in; its noise levels :math:`\tilde\sigma` from ``t_min`` to ``T``
            must lie within ``denoiser.sigma_min .. denoiser.sigma_max`` where it has them (a
            discrete-time model: use :class:`~sdekit.discrete.DiscreteVPSDE` of its
            ``alphas_cumprod``).
    """

    prediction: Prediction = "x0"

    def __init__(self, denoiser: Callable[..., torch.Tensor], sde: LinearSDE):
        super().__init__()
        self.denoiser = denoiser
        self.sde = _check_linear(sde)
        lo, hi = (getattr(denoiser, name, None) for name in ("sigma_min", "sigma_max"))
        if lo is not None and hi is not None:
            ends = edm_sigma(sde, torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
            lo, hi = float(lo), float(hi)
            # the denoiser's own float32 levels: a relative 1e-6 is their rounding
            if not (lo * (1 - 1e-6) <= float(ends[0]) and float(ends[1]) <= hi * (1 + 1e-6)):
                raise ValueError(
                    f"sde's noise levels sigma/alpha from t_min to T, [{float(ends[0]):.6g}, "
                    f"{float(ends[1]):.6g}], exceed the denoiser's [sigma_min, sigma_max] = "
                    f"[{lo:.6g}, {hi:.6g}]; for a discrete-time model use "
                    "DiscreteVPSDE(alphas_cumprod) of its schedule"
                )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        x_tilde = x / broadcast_to_data(alpha, x).to(x.dtype)
        return self.denoiser(x_tilde, (sigma / alpha).to(x.dtype), **_as_kwargs(cond))


class KDiffusionDenoiser(nn.Module):
    r"""k-diffusion's denoiser :math:`D(\tilde x, \tilde\sigma)` of an sdekit model, for its samplers.

    :math:`t = \lambda^{-1}(-2\log\tilde\sigma)`, :math:`x = \alpha(t)\tilde x`, and
    :math:`D = \hat x_0` of the model's output (:func:`~sdekit.parameterization.to_x0`). A keyword
    ``cond`` in k-diffusion's ``extra_args`` is passed to the model as its condition.

    A :math:`\tilde\sigma` whose time lies beyond ``[0, T]`` by more than a relative ``1e-6``
    (k-diffusion's grids are float32) raises; within it, the time is rounded onto the interval.
    """

    def __init__(self, model: Callable[..., torch.Tensor], sde: LinearSDE, prediction: Prediction):
        super().__init__()
        self.model = model
        self.sde = _check_linear(sde)
        self.prediction = check_prediction(prediction)

    def forward(self, x_tilde: torch.Tensor, sigma: torch.Tensor, cond: Cond = None):
        sde = self.sde
        sigma = torch.as_tensor(sigma, device=x_tilde.device).expand(x_tilde.shape[0])
        t = _time_of_sigma(sde, sigma.to(torch.float64))
        alpha, sig = (
            broadcast_to_data(v, x_tilde).to(x_tilde.dtype) for v in (sde.alpha(t), sde.sigma(t))
        )
        x = alpha * x_tilde
        out = call_model(self.model, x, t.to(x.dtype), cond)
        return to_x0(out, self.prediction, x, alpha, sig)


def options_matching_sigmas(sde: LinearSDE, sigmas: torch.Tensor) -> dict:
    r"""``grid`` and ``denoise_final`` for :func:`sdekit.sample` that follow a k-diffusion grid.

    ``sigmas``: decreasing noise levels :math:`\tilde\sigma`, optionally ending in 0 (the last step
    to the data, :math:`\tilde x = D`: ``denoise_final=True``). Start from
    :math:`x_T = \alpha(T)\,\tilde x_T` where k-diffusion starts from :math:`\tilde x_T`.
    """
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.shape[0] < 2 or not bool((s[1:] < s[:-1]).all()) or float(s[-1]) < 0:
        raise ValueError("sigmas must be a 1D strictly decreasing sequence of >= 2 levels >= 0")
    to_zero = float(s[-1]) == 0
    levels = s[:-1] if to_zero else s
    if levels.shape[0] < 2:
        raise ValueError("sigmas must hold at least 2 positive levels (one sdekit step)")
    return {"grid": _time_of_sigma(sde, levels), "denoise_final": to_zero}
