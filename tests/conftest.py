"""Shared test helpers: the linear SDE zoo, a minimal user-defined LinearSDE, time grids."""

from __future__ import annotations

import math

import torch

from sdekit.linear import EDMSDE, OUSDE, VESDE, VPSDE, LinearSDE, SubVPSDE

# The suite is budgeted for one core; intra-op threads on small tensors only spin-wait against the
# other processes sharing the machine (measured 30x slower under load).
torch.set_num_threads(1)


class PlainLinearSDE(LinearSDE):
    r"""A user SDE giving only :math:`\alpha(t) = 1/(1+t)` and :math:`\sigma(t) = t/(1+t)`.

    Everything else (f, g2, log-SNR inverse) comes from the base class defaults (autograd and
    bisection).
    Closed forms used by the tests: :math:`f = -1/(1+t)`, :math:`\lambda = -2\log t`,
    :math:`g^2 = \mathrm{d}\sigma^2/\mathrm{d}t - 2f\sigma^2 = 2t/(1+t)^2`.
    """

    def __init__(self, T: float = 2.0, t_min: float = 1e-3):
        super().__init__(T, t_min)

    def alpha(self, t):
        return 1 / (1 + t)

    def sigma(self, t):
        return t / (1 + t)


def linear_sdes() -> dict[str, LinearSDE]:
    """Every built-in linear SDE (default parameters) plus the plain user-defined one."""
    return {
        "vp": VPSDE(),
        "vp_cosine": VPSDE.cosine(),
        "subvp": SubVPSDE(),
        "ve": VESDE(),
        "edm": EDMSDE(),
        "ou": OUSDE(theta=0.7, g=1.3, T=3.0),
        "plain": PlainLinearSDE(),
    }


def time_grid(sde: LinearSDE, n: int = 33, margin: float = 0.0) -> torch.Tensor:
    """``n`` float64 times from ``t_min`` to ``T - margin``, log-spaced to probe small t too."""
    lo, hi = math.log(sde.t_min), math.log(sde.T - margin)
    t = torch.exp(torch.linspace(lo, hi, n, dtype=torch.float64))
    t[0], t[-1] = sde.t_min, sde.T - margin  # exp(log(T)) may round past T
    return t
