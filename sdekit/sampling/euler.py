r"""Euler–Maruyama on the reverse-time SDE, for any SDE (nonlinear, state-dependent diffusion).

On a decreasing grid, with :math:`h_i = t_{i+1} - t_i < 0` and :math:`z_i \sim \mathcal N(0, I)`
(Kloeden & Platen 1992, §9.1; Song et al. 2021, eq. 6 and App. D, eq. 17):

.. math:: x_{i+1} = x_i + \bigl[f - GG^\top s_\theta - \nabla\cdot(GG^\top)\bigr](x_i, t_i)\,h_i
          + G(x_i, t_i)\,\sqrt{-h_i}\;z_i .

Weak order 1, strong order 1/2 (1 for additive noise). The last step leaves noise of level
:math:`G\sqrt{-h}`; :func:`~sdekit.sampling.sample` removes it with a final denoising step by
default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..sde import SDE, ScoreFn, broadcast_to_data
from .grids import batch_time
from .noise import NoiseSource
from .registry import register, run_callback


@register(
    "euler_maruyama",
    order=1,
    strong_order=0.5,
    stochastic=True,
    needs_marginal=False,
    noise_type="general",
    evals_per_step=1,
    aliases=("em",),
    paper="Song et al. 2021 (score SDE), eq. 6; Kloeden & Platen 1992",
)
def euler_maruyama(
    score: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Euler–Maruyama on ``sde.reverse(score)`` over the decreasing grid ``ts``."""
    reverse = sde.reverse(score)
    for i in range(ts.shape[0] - 1):
        t = batch_time(ts[i], x)
        h = (ts[i + 1] - ts[i]).to(x.dtype)
        g = broadcast_to_data(reverse.diffusion(x, t), x)
        x = x + reverse.drift(x, t) * h + g * torch.sqrt(-h) * noise(x)
        x = run_callback(callback, i, x)
    return x
