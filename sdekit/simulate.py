r"""Euler–Maruyama simulation of any SDE, forward or backward in time.

On a time grid :math:`t_0, t_1, \dots` (increasing for the forward SDE, decreasing for a reverse-time
SDE) each step is (Kloeden & Platen 1992, eq. 9.1.1)

.. math:: x_{n+1} = x_n + f(x_n, t_n)\,\Delta t_n + G(x_n, t_n)\sqrt{|\Delta t_n|}\;z_n,
          \qquad z_n \sim \mathcal N(0, I),

strong order 1/2 and weak order 1. Everything stays on ``x0``'s device; nothing synchronises with the
host inside the loop. ``x0`` is checked once up front (floating point, finite) and the states once at
the end: the first step whose state holds a NaN or inf is tracked on the device
(:class:`~sdekit.checks.FiniteWatch`) and named in the error.
"""

from __future__ import annotations

import torch

from .checks import FiniteWatch, check_float_input, check_time
from .sde import SDE, broadcast_to_data, checked_diffusion, checked_drift


def simulate(
    sde: SDE,
    x0: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    return_path: bool = True,
) -> torch.Tensor:
    """Integrate ``sde`` from ``x0`` at ``ts[0]`` over the grid ``ts`` by Euler–Maruyama.

    Args:
        sde: any :class:`~sdekit.SDE`, including ``sde.reverse(score)`` (pass a decreasing grid) and
            ``sde.probability_flow(score)`` (then the steps are plain Euler).
        x0: ``(batch, *data_shape)`` starting state, a finite floating-point tensor.
        ts: 1D, strictly monotone times in ``[0, sde.T]``, at least two of them.
        generator: for the Gaussian increments; must live on ``x0``'s device.
        return_path: return every state, shape ``(len(ts), batch, *data_shape)``; else the last only.

    Raises ``FloatingPointError`` naming the first step whose state is not finite (a drift or
    diffusion returning NaN or inf, or a step too large for a stiff drift).
    """
    ts = torch.as_tensor(ts)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be a 1D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    check_float_input("x0", x0, fix="pass a finite starting state")
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(
            f"x0 must have shape (batch, *data_shape) with batch >= 1, got {tuple(x0.shape)}"
        )
    steps = ts.diff()
    if not (bool((steps > 0).all()) or bool((steps < 0).all())):
        raise ValueError("ts must be strictly increasing or strictly decreasing")
    check_time(ts, sde.T, "ts")
    ts = ts.to(x0.device, x0.dtype)
    batch = x0.shape[0]
    x, path = x0, [x0]
    watch = FiniteWatch(f"simulate({type(sde).__name__})", ts)
    for i, (t, dt) in enumerate(zip(ts[:-1], ts.diff(), strict=True)):
        t_batch = t.expand(batch)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        g = broadcast_to_data(checked_diffusion(sde, x, t_batch), x)
        x = x + checked_drift(sde, x, t_batch) * dt + g * dt.abs().sqrt() * noise
        watch.update(i, x)
        if return_path:
            path.append(x)
    watch.check()
    return torch.stack(path) if return_path else x
