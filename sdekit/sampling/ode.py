r"""The probability-flow ODE solved with torchdiffeq, for any SDE (nonlinear ones too).

Integrates :math:`\dot x = f - \tfrac12 GG^\top s_\theta - \tfrac12\nabla\cdot(GG^\top)`
(Song et al. 2021, eq. 13 and App. D, eq. 18) from ``ts[0]`` to ``ts[-1]`` with any torchdiffeq
method (Chen et al. 2018): an adaptive one (``"dopri5"``, the default, like score_sde's RK45 with
tolerances 1e-5) or a fixed-step one (``"euler"``, ``"midpoint"``, ``"rk4"``, ...) stepping on the
grid ``ts``.

An adaptive solver may propose a step past the end time; on a VP SDE that is :math:`t < 0`, where
the score is undefined. The end time is passed as torchdiffeq's ``step_t``, which shortens the step
to land on it, so no stage is ever evaluated outside ``[ts[-1], ts[0]]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchdiffeq import odeint

from ..sde import SDE, ScoreFn
from .noise import NoiseSource
from .registry import register

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


@register(
    "ode",
    order=5,
    stochastic=False,
    needs_marginal=False,
    evals_per_step=None,
    noise_type="general",
    observes_only=True,
    aliases=("probability_flow", "pf_ode"),
    paper="Song et al. 2021 (score SDE), eq. 13; Chen et al. 2018 (torchdiffeq)",
)
def probability_flow(
    score: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise: NoiseSource,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Solve the probability-flow ODE with torchdiffeq's ``solver`` (dopri5: order 5).

    Args:
        solver: a torchdiffeq method; adaptive ones (:data:`ADAPTIVE`) use ``rtol``/``atol`` and
            report their states at the grid times only, fixed-step ones step on the grid.
        rtol, atol: the adaptive solver's tolerances, > 0.
    """
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    ode = sde.probability_flow(score)
    options = {"step_t": ts[-1:]} if solver in ADAPTIVE else {}
    xs = odeint(ode, x, ts, method=solver, rtol=rtol, atol=atol, options=options)
    if callback is not None:
        for i in range(1, xs.shape[0]):
            callback(i - 1, xs[i])
    return xs[-1]
