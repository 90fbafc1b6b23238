r"""The 1D Fokker–Planck equation: a positivity-preserving solver and an exact residual.

For :math:`\mathrm{d}x = f(x,t)\,\mathrm{d}t + g(x,t)\,\mathrm{d}w` the density obeys

.. math:: \partial_t p = -\partial_x\bigl(f p\bigr) + \tfrac12\partial_x^2\bigl(D p\bigr), \qquad D = g^2,

written in conservation form :math:`\partial_t p = -\partial_x F` with flux
:math:`F = A p - C\,\partial_x p`, :math:`A = f - \tfrac12\partial_x D`, :math:`C = \tfrac12 D`.

:func:`solve_fokker_planck` discretizes it by finite volumes with the Chang–Cooper / Scharfetter–Gummel
flux (Chang & Cooper 1970; Scharfetter & Gummel 1969)

.. math:: F_{i+1/2} = \frac{C}{h}\Bigl[B(-w)\,p_i - B(w)\,p_{i+1}\Bigr], \qquad
          w = \frac{hA}{C},\quad B(w) = \frac{w}{e^w - 1},

which is exact for the local zero-flux equilibrium and reduces to upwinding where drift dominates, and
steps in time by implicit Euler. The matrix :math:`I - \Delta t\,L` is then a tridiagonal M-matrix with
unit column sums: every step keeps :math:`p \ge 0` and conserves mass exactly (zero-flux boundaries).

:func:`fokker_planck_residual` evaluates the equation's residual for a differentiable density by
autograd, with no discretization at all: the check that a closed-form marginal solves the equation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.linalg import solve_banded

from .sde import SDE


def _bernoulli(w: np.ndarray) -> np.ndarray:
    """B(w) = w / (e^w - 1), through B(a) = a e^{-a} / (1 - e^{-a}) and B(-a) = B(a) + a (a = |w|),
    which never overflow."""
    a = np.abs(w)
    small = a < 1e-8
    safe = np.where(small, 1.0, a)
    b_abs = safe * np.exp(-safe) / -np.expm1(-safe)
    return np.where(small, 1.0 - 0.5 * w, np.where(w > 0, b_abs, b_abs + safe))


def _coefficients(sde: SDE, x: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Drift f and D = g^2 of ``sde`` at points ``x`` and time ``t``, in float64."""
    xt = torch.as_tensor(x, dtype=torch.float64)[:, None]
    tt = torch.full((len(x),), t, dtype=torch.float64)
    f = sde.drift(xt, tt)[:, 0]
    D = sde.diffusion_squared(xt, tt).expand_as(xt)[:, 0]
    return f.detach().numpy(), D.detach().numpy()


def _face_rates(sde: SDE, x: np.ndarray, h: float, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Rates a+ (from cell i to i+1) and a- (from i+1 to i) at the n-1 interior faces."""
    faces = 0.5 * (x[:-1] + x[1:])
    f_face, D_face = _coefficients(sde, faces, t)
    _, D_cell = _coefficients(sde, x, t)
    A = f_face - 0.5 * np.diff(D_cell) / h
    C = 0.5 * D_face
    diffusive = C > 1e-14 * np.maximum(np.abs(A) * h, 1e-300)
    w = np.where(diffusive, h * A / np.where(diffusive, C, 1.0), 0.0)
    a_plus = np.where(diffusive, C / h * _bernoulli(-w), np.maximum(A, 0.0))
    a_minus = np.where(diffusive, C / h * _bernoulli(w), np.maximum(-A, 0.0))
    return a_plus, a_minus


def solve_fokker_planck(
    sde: SDE,
    p0: np.ndarray,
    x: np.ndarray,
    times: Sequence[float],
    *,
    t0: float = 0.0,
    dt: float = 1e-3,
) -> np.ndarray:
    """Evolve the density ``p0`` on the uniform cell centres ``x`` under ``sde``'s Fokker–Planck equation.

    Args:
        sde: any 1D :class:`~sdekit.SDE` (data shape ``(1,)``), state-dependent diffusion included.
        p0: density values at ``x`` at time ``t0``, non-negative.
        x: uniformly spaced cell centres, increasing; the domain should be wide enough that the density
            is negligible at its ends (the boundaries reflect: zero flux).
        times: increasing output times, each in ``[t0, sde.T]``.
        t0: the time of ``p0``.
        dt: the largest implicit-Euler step (first order in time: halve it to halve the time error).

    Returns:
        ``(len(times), len(x))`` densities, each integrating to the mass of ``p0``.
    """
    x = np.asarray(x, dtype=np.float64)
    p = np.asarray(p0, dtype=np.float64).copy()
    if x.ndim != 1 or x.size < 3 or p.shape != x.shape:
        raise ValueError(
            f"x must be 1D with >= 3 points and p0 of the same shape, got {x.shape}, {p.shape}"
        )
    h = x[1] - x[0]
    if not (h > 0 and np.allclose(np.diff(x), h, rtol=1e-8, atol=0)):
        raise ValueError("x must be uniformly spaced and increasing")
    if not (np.isfinite(p).all() and (p >= 0).all()):
        raise ValueError("p0 must be finite and >= 0")
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a finite number > 0, got {dt}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or (np.diff(times) < 0).any() or times[0] < t0 or times[-1] > sde.T:
        raise ValueError(f"times must be increasing and lie in [t0, T] = [{t0}, {sde.T}]")

    out, t = [], t0
    for t_out in times:
        n_steps = math.ceil((t_out - t) / dt - 1e-9)
        for k in range(n_steps):
            t_next = t + (t_out - t) / (n_steps - k)
            p = _implicit_euler_step(sde, p, x, h, t_next, t_next - t)
            t = t_next
        out.append(p.copy())
    return np.stack(out)


def _implicit_euler_step(sde, p, x, h, t_next, step):
    a_plus, a_minus = _face_rates(sde, x, h, t_next)
    n = len(x)
    diag = np.ones(n)
    diag[:-1] += step * a_plus / h
    diag[1:] += step * a_minus / h
    ab = np.zeros((3, n))
    ab[0, 1:] = -step * a_minus / h  # upper: p_{i+1} in row i
    ab[1] = diag
    ab[2, :-1] = -step * a_plus / h  # lower: p_{i-1} in row i
    # tridiagonal, so a banded O(n) solve rather than a general sparse factorization
    return solve_banded((1, 1), ab, p)


def fokker_planck_residual(
    sde: SDE,
    log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The residual :math:`\partial_t p + \partial_x(f p) - \tfrac12\partial_x^2(D p)` of a 1D density.

    ``log_prob(x, t)`` must be differentiable in both arguments (``x`` of shape ``(batch, 1)``, ``t`` of
    shape ``(batch,)``). Every derivative is taken by autograd, so for an exact solution the residual is
    rounding error only.

    Returns:
        ``(residual, scale)``, both ``(batch,)``; ``scale = |∂_t p| + |∂_x(f p)| + ½|∂_x^2(D p)|`` is the
        size of the terms that cancel, for a relative check.
    """
    if x.ndim != 2 or x.shape[1] != 1 or t.shape != (x.shape[0],):
        raise ValueError(
            f"x must be (batch, 1) and t (batch,), got {tuple(x.shape)}, {tuple(t.shape)}"
        )
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        t = t.detach().requires_grad_(True)
        p = log_prob(x, t).exp()
        (dp_dt,) = torch.autograd.grad(p.sum(), t, create_graph=True)
        fp = sde.drift(x, t)[:, 0] * p
        (d_fp,) = torch.autograd.grad(fp.sum(), x, create_graph=True)
        Dp = sde.diffusion_squared(x, t).expand_as(x)[:, 0] * p
        (d_Dp,) = torch.autograd.grad(Dp.sum(), x, create_graph=True)
        (d2_Dp,) = torch.autograd.grad(d_Dp.sum(), x)
    d_fp, d2_Dp = d_fp[:, 0], d2_Dp[:, 0]
    residual = dp_dt + d_fp - 0.5 * d2_Dp
    scale = dp_dt.abs() + d_fp.abs() + 0.5 * d2_Dp.abs()
    return residual.detach(), scale.detach()
