r"""EDM preconditioning (Karras et al. 2022, Table 1 and §5), for any linear SDE.

The denoiser of the scaled variable :math:`\tilde x = x_t/\alpha = x_0 + \tilde\sigma\varepsilon`,
:math:`\tilde\sigma = \sigma/\alpha`, is

.. math:: D_\theta(\tilde x; \tilde\sigma) = c_\text{skip}\,\tilde x
          + c_\text{out}\,F_\theta\bigl(c_\text{in}\,\tilde x,\ c_\text{noise}\bigr),

.. math:: c_\text{skip} = \frac{\sigma_d^2}{\tilde\sigma^2 + \sigma_d^2}, \quad
          c_\text{out} = \frac{\tilde\sigma\,\sigma_d}{\sqrt{\tilde\sigma^2 + \sigma_d^2}}, \quad
          c_\text{in} = \frac{1}{\sqrt{\tilde\sigma^2 + \sigma_d^2}}, \quad
          c_\text{noise} = \tfrac14 \ln\tilde\sigma,

so the network's input and its effective training target have unit variance at every noise level.
For the EDM SDE (:math:`\alpha = 1`, :math:`\sigma = t`) this is exactly Table 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_positive
from ..configurable import Configurable
from ..linear import LinearSDE
from ..sde import broadcast_to_data


class EDMPrecond(nn.Module, Configurable):
    r"""Wraps a network :math:`F_\theta(x, c_\text{noise}, y)` into the EDM denoiser of :math:`x_0`.

    ``forward(x, t, labels=None)`` takes the SDE's state :math:`x_t` and time :math:`t` and returns
    the estimate of :math:`x_0` (use ``prediction="x0"`` with
    :func:`sdekit.parameterization.score_fn`). The coefficients are computed in float64 from ``t``
    (never in half precision, even under autocast); the wrapped network sees
    :math:`c_\text{noise} = \tfrac14\ln(\sigma/\alpha)` as its time input.

    Args:
        net: any module called as ``net(x, t)`` or ``net(x, t, labels)``, e.g.
            :class:`~sdekit.networks.UNet` or :class:`~sdekit.networks.MLP`.
        sde: the linear SDE whose :math:`\alpha(t), \sigma(t)` define :math:`\tilde\sigma`.
        sigma_data: :math:`\sigma_d`, the standard deviation of the data (0.5 in EDM).
    """

    def __init__(self, net: nn.Module, sde: LinearSDE, sigma_data: float = 0.5):
        super().__init__()
        if not isinstance(sde, LinearSDE):
            raise ValueError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        self.net = net
        self.sde = sde
        self.sigma_data = check_positive("sigma_data", sigma_data)

    def coefficients(
        self, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""``(c_in, c_skip, c_out, c_noise, 1/alpha)`` at time ``t``: float64, ``(batch,)``."""
        t64 = t.to(torch.float64)
        alpha, sigma = self.sde.marginal(t64)
        s = sigma / alpha
        sd2 = self.sigma_data**2
        norm = torch.rsqrt(s**2 + sd2)
        return norm, sd2 * norm**2, s * self.sigma_data * norm, 0.25 * torch.log(s), 1 / alpha

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        c_in, c_skip, c_out, c_noise, inv_alpha = self.coefficients(t)

        def per_sample(c: torch.Tensor) -> torch.Tensor:
            return broadcast_to_data(c, x).to(x.dtype)

        x_scaled = per_sample(inv_alpha) * x
        args = () if labels is None else (labels,)
        out = self.net(per_sample(c_in) * x_scaled, c_noise.to(x.dtype), *args)
        return per_sample(c_skip) * x_scaled + per_sample(c_out) * out.to(x.dtype)
