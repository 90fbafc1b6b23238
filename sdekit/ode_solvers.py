r"""Dormand–Prince 5(4) with a step size per sample, on device tensors: no host decision per step.

Each row of a batch ``y`` of shape ``(batch, *shape)`` is its own initial-value problem
:math:`\dot y_b = f(t_b, y_b)` on the same interval, as in a likelihood batch where every data
point follows its own probability-flow trajectory. :func:`dopri5` gives each row its own time,
step size, error estimate and acceptance, all held in ``(batch,)`` tensors and updated with
``torch.where``, so the tolerance holds for each sample by itself and an easy sample takes long
steps while a hard one takes short ones. A row that has reached the end takes zero-length steps
until the others arrive: the batch stays whole (one batched call of ``f`` per stage), and no
decision needs the host except the loop's end, read once every ``check_every`` iterations.

The method (Dormand & Prince 1980; Hairer, Nørsett & Wanner 1993, §II.5, Table 5.2): seven stages

.. math:: k_i = f\Bigl(t + c_i h,\; y + h\sum_{j<i} a_{ij} k_j\Bigr), \qquad
          y_{n+1} = y + h\sum_i b_i k_i, \qquad \hat y_{n+1} = y + h\sum_i \hat b_i k_i,

with :math:`y_{n+1}` of order 5 (the solution carried on, "local extrapolation") and
:math:`\hat y_{n+1}` of order 4. The last stage is evaluated at :math:`(t + h, y_{n+1})`
(:math:`a_{7j} = b_j`), so it is the next step's first ("first same as last", FSAL): six calls of
``f`` per step. The error estimate :math:`\mathrm{err} = \lVert (y_{n+1} - \hat y_{n+1})/s\rVert`
uses :math:`s = \mathrm{atol} + \mathrm{rtol}\max(|y_n|, |y_{n+1}|)` and, per sample, the RMS over
its components (Hairer et al., §II.4, eq. 4.11; another per-sample ``norm`` can be passed). A step
is accepted when :math:`\mathrm{err} \le 1`, and the next step is (§II.4, eq. 4.13)

.. math:: h_{\text{new}} = h\,\min\bigl(f_{\max}, \max(0.2,\; 0.9\,\mathrm{err}^{-1/5})\bigr),

with :math:`f_{\max} = 10`, and 1 for a step that follows a rejection (a retried step may not
grow). The first step is Hairer's rule (§II.4) per sample,
:func:`sdekit.sampling.ode.initial_step_tensor`, whose :math:`f(t_0, y_0)` is reused as the first
stage. Per row this is the algorithm of SciPy's ``solve_ivp(method="RK45")``.

Every time ``f`` is called at lies in :math:`[t_0, t_1]`: a step is cut to land on :math:`t_1`
exactly, the stage times :math:`t + c_i h` with :math:`c_i \le 1` are clamped into the interval
only to absorb round-off, and a row that arrives is set to :math:`t_1` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checks import check_positive
from .sampling.ode import initial_step_tensor

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae"; Hairer, Norsett & Wanner,
# Solving ODEs I, Table 5.2. Row i of A holds a_{i+1, j}; B is the order-5 weight (= the last row
# of A, FSAL), E = B - B_hat the weights of the error estimate.
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
#: the order of the solution carried on, and of the error estimate
ORDER, ERROR_ORDER = 5, 4

SAFETY, FACTOR_MIN, FACTOR_MAX = 0.9, 0.2, 10.0


class StepSizeCollapse(FloatingPointError):
    """Rows whose step size fell below the time resolution; ``rows`` lists them (all of them)."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows


@dataclass
class SolveStats:
    """What :func:`dopri5` did.

    Attributes:
        nfe: batched calls of ``func`` (each evaluates every row): ``2 + 6 * iterations``.
        iterations: steps of the loop, each an attempted step for every row still running.
        accepted: accepted steps per row, ``(batch,)`` int64.
        rejected: rejected steps per row, ``(batch,)`` int64.
        host_reads: reads of a device value by the host (the loop's end, once per
            ``check_every`` iterations).
    """

    nfe: int
    iterations: int
    accepted: torch.Tensor
    rejected: torch.Tensor
    host_reads: int


def rms_norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS over everything but the batch dimension: ``(batch, ...)`` -> ``(batch,)``."""
    return v.flatten(1).pow(2).mean(1).sqrt()


def _per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(batch,)`` tensor shaped to broadcast over ``like`` (``(batch, 1, ..., 1)``)."""
    return v.reshape(v.shape + (1,) * (like.ndim - 1))


def dopri5_step(
    func: Func,
    t: torch.Tensor,
    y: torch.Tensor,
    h: torch.Tensor,
    k1: torch.Tensor,
    t_bounds: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One Dormand–Prince step per row: ``(y_new, error, k7)``, six calls of ``func``.

    ``t`` and ``h`` are ``(batch,)`` (signed ``h``; zero leaves a row where it is), ``k1 =
    func(t, y)``. ``y_new`` is the order-5 solution, ``error`` :math:`= y_{n+1} - \hat y_{n+1}`
    (order-4 local error), ``k7 = func(t + h, y_new)`` the next step's first stage. Stage times
    are clamped into ``t_bounds``.
    """
    lo, hi = t_bounds
    h_data = _per_row(h, y)
    ks = [k1]
    for i in range(1, 7):
        increment = ks[0] * A[i][0]
        for j in range(1, i):
            if A[i][j] != 0.0:
                increment = increment.add(ks[j], alpha=A[i][j])
        stage_t = (t + C[i] * h).clamp(lo, hi)
        ks.append(func(stage_t, torch.addcmul(y, h_data, increment)))
    # the seventh stage was evaluated at y + h * sum(B k) = y_new (FSAL)
    y_new = torch.addcmul(y, h_data, increment)
    error = ks[0] * E[0]
    for j in range(2, 7):
        error = error.add(ks[j], alpha=E[j])
    return y_new, h_data * error, ks[6]


def dopri5(
    func: Func,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float,
    atol: float,
    norm: Callable[[torch.Tensor], torch.Tensor] = rms_norm,
    check_every: int = 1,
    max_steps: int = 10_000,
) -> tuple[torch.Tensor, SolveStats]:
    r"""Solve every row of ``y0`` from ``t0`` to ``t1`` by Dormand–Prince 5(4), each with its own steps.

    Args:
        func: ``func(t, y)`` with ``t`` of shape ``(batch,)`` (each row's own time) and ``y`` of
            shape ``(batch, *shape)``, returning ``dy/dt`` shaped like ``y``. Row ``b`` of the output
            must depend on row ``b`` of the input only (no batch statistics).
        y0: the initial values, ``(batch, *shape)``, floating point; time is carried in its dtype.
        t0, t1: the interval (either direction), ``t0 != t1``.
        rtol, atol: tolerances; the error of each row is measured by ``norm`` and must be <= 1.
        norm: maps a scaled error shaped like ``y`` to ``(batch,)``; default the RMS over each
            row (Hairer et al. 1993, eq. 4.11).
        check_every: how many iterations run between two reads of "have all rows arrived?" by the
            host, the only synchronisation in the loop. Rows that arrive meanwhile take
            zero-length steps, so a larger value costs up to ``check_every - 1`` idle iterations
            (six batched calls each) at the end for fewer host reads; ``1`` suits a CPU, where a
            read costs nothing.
        max_steps: the most iterations before ``RuntimeError``.

    Returns:
        ``(y1, stats)``: the solution at ``t1`` of each row and a :class:`SolveStats`.

    Raises:
        StepSizeCollapse: (a ``FloatingPointError``) when a row's step size collapses (its error
            estimate stays above the tolerance, e.g. NaN or inf from ``func``), naming the rows.
        RuntimeError: when ``max_steps`` iterations do not bring every row to ``t1``.

    The result of a row does not depend on the other rows (their values or how many there are)
    when ``func`` treats rows independently: nothing in the step is shared across the batch.
    """
    if not (isinstance(check_every, int) and check_every >= 1):
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    if not (isinstance(y0, torch.Tensor) and y0.is_floating_point() and y0.ndim >= 1):
        raise ValueError(
            "y0 must be a floating-point tensor of shape (batch, *shape), got "
            f"{getattr(y0, 'dtype', type(y0).__name__)} {tuple(getattr(y0, 'shape', ()))}"
        )
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    batch, device, dtype = y0.shape[0], y0.device, y0.dtype
    direction = 1.0 if t1 > t0 else -1.0
    bounds = (min(t0, t1), max(t0, t1))
    # below this a step no longer moves t (Hairer's code: 0.1 |h| <= |t| * eps)
    h_min = 10 * torch.finfo(dtype).eps * max(abs(t0), abs(t1))

    t = torch.full((batch,), t0, dtype=dtype, device=device)
    k1 = func(t, y0)
    h = initial_step_tensor(
        func, y0, k1, t0, t1, order=ERROR_ORDER, rtol=rtol, atol=atol, norm=norm
    )
    y = y0
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    # a row whose first derivative is NaN or inf has no first step
    failed = ~torch.isfinite(h)
    h = torch.where(failed, 0.0, h)
    retried = torch.zeros_like(done)  # the row's last attempt was rejected
    accepted = torch.zeros(batch, dtype=torch.int64, device=device)
    rejected = torch.zeros_like(accepted)
    iterations = reads = 0
    while True:
        for _ in range(check_every):
            running = ~(done | failed)
            remaining = (t1 - t) * direction
            h = torch.where(running, torch.minimum(h, remaining), 0.0)
            last = h >= remaining
            y_new, error, k7 = dopri5_step(func, t, y, direction * h, k1, bounds)
            scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
            err = norm(error / scale)
            err = torch.where(torch.isfinite(err), err, torch.inf)
            accept = running & (err <= 1.0)
            y = torch.where(_per_row(accept, y), y_new, y)
            k1 = torch.where(_per_row(accept, y), k7, k1)
            t = torch.where(accept, torch.where(last, t1, t + direction * h), t)
            done = done | (accept & last)
            # an accepted step right after a rejection may not grow (Hairer et al., II.4)
            factor = (SAFETY * err.pow(-1.0 / ORDER)).clamp(FACTOR_MIN, FACTOR_MAX)
            h = h * torch.where(retried, factor.clamp(max=1.0), factor)
            retried = running & ~accept
            failed = failed | (retried & (h < h_min))
            accepted += accept
            rejected += retried
            iterations += 1
        reads += 1
        if bool((done | failed).all()):
            break
        if iterations >= max_steps:
            raise RuntimeError(
                f"dopri5: {max_steps} iterations (max_steps) did not bring every row to t1 = "
                f"{t1}; loosen rtol/atol or raise max_steps"
            )
    stats = SolveStats(2 + 6 * iterations, iterations, accepted, rejected, reads)
    if bool(failed.any()):
        rows = failed.nonzero().flatten().tolist()
        raise StepSizeCollapse(
            f"dopri5 could not take a step for {len(rows)} of {batch} rows (indices {rows[:8]}"
            f"{', ...' if len(rows) > 8 else ''}): the step size fell below {h_min:.3g} before "
            f"t1 = {t1}, the error estimate staying above the tolerance, which a NaN or inf from "
            "func causes",
            rows,
        )
    return y, stats
