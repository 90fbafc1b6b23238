r"""The discrete-time models that the linear SDEs are continuous limits of: DDPM and SMLD.

Discretizing the VP SDE on :math:`N` steps gives DDPM's Markov chain
:math:`x_i = \sqrt{1-\beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z` (Song et al. 2021, App. B, eq. 24), with
:math:`\alpha_i = 1 - \beta_i` and :math:`\bar\alpha_i = \prod_{j\le i}\alpha_j` (Ho et al. 2020, §2).
Its ancestral (reverse) step (Song et al. 2021, App. E, eq. 47)

.. math:: x_{i-1} = \frac{x_i + \beta_i\,s_\theta(x_i, i)}{\sqrt{1-\beta_i}} + \sqrt{\beta_i}\,z

is, with :math:`s_\theta = -\varepsilon_\theta/\sqrt{1-\bar\alpha_i}`, exactly DDPM's sampling update
(Ho et al. 2020, Alg. 2, with :math:`\sigma_i^2 = \beta_i`)

.. math:: x_{i-1} = \frac{1}{\sqrt{\alpha_i}}\Bigl(x_i - \frac{\beta_i}{\sqrt{1-\bar\alpha_i}}\,
          \varepsilon_\theta\Bigr) + \sigma_i z.

Discretizing the VE SDE gives SMLD's geometric noise levels :math:`\sigma_i` (Song & Ermon 2019) and its
ancestral step (Song et al. 2021, eq. 47):
:math:`x_{i-1} = x_i + (\sigma_i^2 - \sigma_{i-1}^2)s_\theta + \sqrt{\sigma_{i-1}^2(\sigma_i^2 -
\sigma_{i-1}^2)/\sigma_i^2}\,z`.

Indices are 0-based here: ``i = 0..N-1``, with ``i = N-1`` the noisiest level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linear import VPSDE
from .sde import broadcast_to_data


@dataclass(frozen=True)
class DDPMSchedule:
    """DDPM's discrete schedule (float64).

    ``betas``, ``alphas = 1 - betas`` and ``alpha_bars = cumprod(alphas)``.
    """

    betas: torch.Tensor

    @classmethod
    def from_sde(cls, sde: VPSDE, N: int = 1000) -> DDPMSchedule:
        """The schedule that ``sde`` (linear or cosine VP) discretizes to on ``N`` steps."""
        if not isinstance(sde, VPSDE):
            raise ValueError(f"sde must be a VPSDE to discretize to DDPM, got {type(sde).__name__}")
        if N < 2:
            raise ValueError(f"N must be >= 2, got {N}")
        return cls(sde.discrete_betas(N))

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def alpha_bars(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, 0)

    def __len__(self) -> int:
        return self.betas.shape[0]


def _gather(values: torch.Tensor, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return broadcast_to_data(values.to(x.device)[i].to(x.dtype), x)


def ddpm_ancestral_step(
    schedule: DDPMSchedule,
    x: torch.Tensor,
    score: torch.Tensor,
    i: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """One ancestral step ``x_i -> x_{i-1}`` of the discretized VP SDE (score form, eq. 47).

    ``i`` is a ``(batch,)`` integer tensor of 0-based levels; at ``i = 0`` no noise is added.
    """
    beta = _gather(schedule.betas, i, x)
    keep = broadcast_to_data((i > 0).to(x.dtype), x)
    return (x + beta * score) / torch.sqrt(1 - beta) + keep * beta.sqrt() * noise


def ddpm_step(
    schedule: DDPMSchedule, x: torch.Tensor, eps: torch.Tensor, i: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """DDPM's sampling update (Ho et al. 2020, Alg. 2, line 4) with :math:`\\sigma_i^2 = \\beta_i`."""
    beta = _gather(schedule.betas, i, x)
    alpha_bar = _gather(schedule.alpha_bars, i, x)
    keep = broadcast_to_data((i > 0).to(x.dtype), x)
    return (x - beta / torch.sqrt(1 - alpha_bar) * eps) / torch.sqrt(
        1 - beta
    ) + keep * beta.sqrt() * noise


def smld_ancestral_step(
    sigmas: torch.Tensor, x: torch.Tensor, score: torch.Tensor, i: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """One SMLD ancestral step ``x_i -> x_{i-1}`` (Song et al. 2021, eq. 47, VE); ``sigmas`` from
    :meth:`VESDE.smld_sigmas`, with :math:`\\sigma_{-1} = 0`."""
    sigma = _gather(sigmas, i, x)
    prev = torch.cat([sigmas.new_zeros(1), sigmas[:-1]])
    sigma_prev = _gather(prev, i, x)
    var_step = sigma**2 - sigma_prev**2
    return x + var_step * score + torch.sqrt(sigma_prev**2 * var_step / sigma**2) * noise
