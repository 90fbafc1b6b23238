"""Fokker–Planck: closed-form marginals solve it exactly; the solver converges to them, conserves
mass and keeps densities non-negative."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdekit.fokker_planck import fokker_planck_residual, solve_fokker_planck
from sdekit.linear import OUSDE, VESDE, VPSDE, SubVPSDE
from sdekit.mixture import GaussianMixture
from sdekit.sde import SDE, broadcast_to_data

SETTINGS = settings(derandomize=True, deadline=None, max_examples=8)
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(0.01, 50.0)}


@st.composite
def mixtures_1d(draw):
    """A random 1D mixture of 1-3 components (means in [-3, 3], stds in [0.05, 2])."""
    k = draw(st.integers(1, 3))
    raw = [draw(st.floats(0.1, 1.0)) for _ in range(k)]
    weights = [w / sum(raw) for w in raw]
    means = [draw(st.floats(-3.0, 3.0)) for _ in range(k)]
    stds = [draw(st.floats(0.05, 2.0)) for _ in range(k)]
    return GaussianMixture(weights, means, stds)


def _relative_residual(sde, gm, t: float, density_sde=None) -> float:
    """max |residual| / max scale of p_t's Fokker–Planck equation on a grid covering p_t's mass."""
    density_sde = density_sde or sde
    tt = torch.tensor([t], dtype=torch.float64)
    alpha, sigma = float(density_sde.alpha(tt)), float(density_sde.sigma(tt))
    spread = alpha * float(gm.stds.max()) + sigma
    lo = alpha * float(gm.means.min()) - 4 * spread
    hi = alpha * float(gm.means.max()) + 4 * spread
    x = torch.linspace(lo, hi, 401, dtype=torch.float64)[:, None]
    res, scale = fokker_planck_residual(
        sde,
        lambda x, t: gm.log_prob(x, t, density_sde),
        x,
        torch.full((401,), t, dtype=torch.float64),
    )
    return float(res.abs().max() / scale.max())


@pytest.mark.parametrize("name", list(SDES))
@SETTINGS
@given(gm=mixtures_1d(), u=st.floats(0.0, 1.0))
def test_closed_form_marginals_solve_fokker_planck(name, gm, u):
    """(a) Every derivative by autograd: the residual is rounding only (measured <= 3.1e-16)."""
    sde = SDES[name]
    t = sde.t_min + u * (sde.T - sde.t_min)
    assert _relative_residual(sde, gm, t) < 1e-8


def test_residual_detects_a_wrong_density():
    """Negative control: VP's p_t does not solve sub-VP's equation (relative residual > 1e-2)."""
    gm = GaussianMixture([0.4, 0.6], [-1.0, 1.0], [0.3, 0.5])
    assert _relative_residual(SDES["subvp"], gm, 0.3, density_sde=SDES["vp"]) > 1e-2
    assert _relative_residual(SDES["vp"], gm, 0.3, density_sde=SDES["subvp"]) > 1e-2


# ------------------------------------------------------------- (b) the solver vs closed form

GM = GaussianMixture([0.3, 0.7], [-1.0, 1.5], [0.3, 0.5])


def _p(sde, x: np.ndarray, t: float) -> np.ndarray:
    return GM.log_prob(torch.from_numpy(x)[:, None], t, sde).exp().numpy()


def _time_error_bound(sde, x: np.ndarray, t0: float, t1: float, dt: float) -> float:
    r"""Implicit Euler's global L1 error on [t0, t1]: each step makes a local error
    :math:`\tfrac{\Delta t^2}{2}\|\partial_t^2 p\|_1`, and the Fokker–Planck flow is an L1
    contraction, so errors add up to at most :math:`\tfrac{\Delta t}{2}\int\|\partial_t^2 p\|_1`.
    Here :math:`\partial_t^2 p` of the closed form by central differences, the integral by 100
    midpoints.
    """
    h, s = x[1] - x[0], np.linspace(t0, t1, 101)
    e = 1e-3 * (t1 - t0)
    total = 0.0
    for m in 0.5 * (s[1:] + s[:-1]):
        p_tt = (_p(sde, x, m + e) - 2 * _p(sde, x, m) + _p(sde, x, m - e)) / e**2
        total += h * np.abs(p_tt).sum() * (s[1] - s[0])
    return 0.5 * dt * total


@pytest.mark.parametrize(
    ("sde", "lo", "hi", "n", "times"),
    [
        (VPSDE(), -6.0, 6.0, 241, [0.1, 1.0]),  # h = 0.05
        (VESDE(0.1, 3.0), -20.0, 20.0, 801, [0.3, 1.0]),  # h = 0.05; 6 sigma_max inside the box
        (OUSDE(), -6.0, 6.0, 241, [0.5, 2.0]),  # h = 0.05
    ],
    ids=["vp", "ve", "ou"],
)
def test_solver_matches_closed_form(sde, lo, hi, n, times):
    """(b) L1 error at dt = 2e-3 and 1e-3 (h fixed at 0.05):

    - bound: 1.25 x the implicit-Euler time bound above (the 25 % covers the O(h^2) space error of
      Chang–Cooper, measured <= 7e-5 at h = 0.05 for these laws);
    - measured (bound) at dt = 2e-3: vp 2.2e-3 (4.5e-3) at t = 0.1, 1.0e-4 (1.2e-2) at t = 1;
      ve 5.8e-4 (1.0e-3) at t = 0.3, 1.9e-3 (9.2e-3) at t = 1; ou 1.1e-3 (7.8e-3), 2.4e-4 (8.4e-3);
    - first order: halving dt scales the error by 0.47-0.64 (the space error is the rest); a
      scheme that did not converge to the closed form would stay near 1. Allowed: 0.75.
    """
    x = np.linspace(lo, hi, n)
    t0 = 1e-3 if isinstance(sde, VPSDE) else 0.0  # VP p_0 is the data itself: start just after
    p0 = _p(sde, x, t0)
    h = x[1] - x[0]
    errors = {}
    for dt in (2e-3, 1e-3):
        P = solve_fokker_planck(sde, p0, x, times, t0=t0, dt=dt)
        errors[dt] = [h * np.abs(P[k] - _p(sde, x, t)).sum() for k, t in enumerate(times)]
    for k, t in enumerate(times):
        bound = 1.25 * _time_error_bound(sde, x, t0, t, 2e-3)
        assert errors[2e-3][k] < bound, (t, errors[2e-3][k], bound)
        assert errors[1e-3][k] < 0.75 * errors[2e-3][k], (t, errors)


# ------------------------------------------------------- (e) mass and positivity, any SDE


class RandomSDE(SDE):
    r""":math:`f = a\sin(bx + ct) - dx`, :math:`g = e + k\sin^2 x` (state-dependent if k > 0)."""

    def __init__(self, a, b, c, d, e, k):
        super().__init__(T=1.0)
        self.a, self.b, self.c, self.d, self.e, self.k = a, b, c, d, e, k

    def drift(self, x, t):
        return self.a * torch.sin(self.b * x + self.c * broadcast_to_data(t, x)) - self.d * x

    def diffusion(self, x, t):
        return self.e + self.k * torch.sin(x) ** 2


@SETTINGS
@given(
    coef=st.tuples(
        st.floats(-5.0, 5.0),
        st.floats(0.0, 4.0),
        st.floats(-3.0, 3.0),
        st.floats(-1.0, 3.0),
        st.sampled_from([0.0, 1e-3, 0.3, 1.5]),  # e = 0 with k = 0: pure transport (upwinding)
        st.sampled_from([0.0, 0.5]),
    ),
    centre=st.floats(-2.0, 2.0),
    dt=st.sampled_from([1e-3, 1e-2, 0.1]),
)
def test_solver_conserves_mass_and_positivity(coef, centre, dt):
    sde = RandomSDE(*coef)
    x = np.linspace(-6.0, 6.0, 121)
    p0 = np.exp(-0.5 * ((x - centre) / 0.4) ** 2)
    p0 /= p0.sum() * (x[1] - x[0])
    P = solve_fokker_planck(sde, p0, x, [0.05, 0.5, 1.0], dt=dt)
    mass = P.sum(1) * (x[1] - x[0])
    np.testing.assert_allclose(mass, 1.0, rtol=0, atol=1e-10)
    assert (P >= 0).all()
    assert np.isfinite(P).all()


def test_solver_reaches_ou_stationary_law():
    """A box started at 2 relaxes to N(0, g^2/(2 theta)): by t = 10 its mean 2 e^-10 is 1e-4 away,
    and the time error is ~1e-4 at dt = 1e-2; bound 1e-3 in L1."""
    ou = OUSDE(theta=1.0, g=1.0, T=10.0)
    x = np.linspace(-5.0, 5.0, 201)
    p0 = np.where(np.abs(x - 2.0) < 0.5, 1.0, 0.0)
    p0 /= p0.sum() * (x[1] - x[0])
    p = solve_fokker_planck(ou, p0, x, [10.0], dt=1e-2)[0]
    stationary = np.exp(-(x**2)) / math.sqrt(math.pi)
    assert (x[1] - x[0]) * np.abs(p - stationary).sum() < 1e-3


class ExponentialEquilibrium(SDE):
    r""":math:`f = x + k(1 + x^2)`, :math:`G = \sqrt{1 + x^2}`: :math:`A = f - \tfrac12 D' = kD` and
    :math:`C = D/2`, so the zero-flux density is :math:`p \propto e^{2kx}` (on a bounded domain),
    and the Chang–Cooper weight :math:`w = hA/C = 2hk` is the same on every face."""

    k = -0.6

    def drift(self, x, t):
        return x + self.k * (1 + x**2)

    def diffusion(self, x, t):
        return torch.sqrt(1 + x**2)


@pytest.mark.parametrize(
    "sde, log_p",
    [
        (OUSDE(theta=1.0, g=1.0, T=1e3), lambda x: -(x**2)),
        (ExponentialEquilibrium(T=1e3), lambda x: 2 * ExponentialEquilibrium.k * x),
    ],
    ids=["ou", "state_dependent"],
)
def test_discrete_equilibrium_is_exact_at_the_nodes(sde, log_p):
    r"""The Chang–Cooper/Scharfetter–Gummel flux vanishes when :math:`p_{i+1}/p_i = B(-w)/B(w)
    = e^{w}`; where :math:`w = hA/C` integrates :math:`A/C = (\log p)'` exactly (OU: linear
    :math:`A`, and :math:`h x_{i+1/2} = (x_{i+1}^2 - x_i^2)/2`; the second SDE: constant
    :math:`A/C`, with :math:`D'` exact for a quadratic :math:`D`) the discrete stationary density
    equals the exact one at the nodes, on a grid as coarse as h = 0.25. Mass and positivity hold
    for any flux; this does not: central differences give :math:`(1 + w/2)/(1 - w/2)`, 10 % off per
    face at w = 1, swapping :math:`B(\pm w)` reverses the drift, and leaving out :math:`-\tfrac12
    D'` makes the second SDE's ratio :math:`e^{2hk + 2hx/(1 + x^2)}`."""
    x = np.linspace(-4.0, 4.0, 33)
    p0 = np.exp(-0.5 * ((x - 1.0) / 0.5) ** 2)
    p0 /= p0.sum() * (x[1] - x[0])
    p = solve_fokker_planck(sde, p0, x, [1e3], dt=100.0)[0]  # implicit Euler: 10 long steps
    exact = np.exp(log_p(x) - log_p(x).max())
    exact /= exact.sum() * (x[1] - x[0])
    np.testing.assert_allclose(p, exact, rtol=1e-9, atol=0)


# ------------------------------------------------------------------------------ bad input


def test_bad_input():
    sde, x = VPSDE(), np.linspace(-1.0, 1.0, 11)
    p0 = np.ones(11)
    with pytest.raises(ValueError, match="x must be 1D"):
        solve_fokker_planck(sde, p0[:5], x, [0.1])
    with pytest.raises(ValueError, match="uniformly spaced"):
        solve_fokker_planck(sde, p0, x**3, [0.1])
    with pytest.raises(ValueError, match="p0 must be finite and >= 0"):
        solve_fokker_planck(sde, -p0, x, [0.1])
    with pytest.raises(ValueError, match="dt must be"):
        solve_fokker_planck(sde, p0, x, [0.1], dt=0.0)
    with pytest.raises(ValueError, match="times must be increasing"):
        solve_fokker_planck(sde, p0, x, [0.5, 0.1])
    with pytest.raises(ValueError, match="times must be increasing"):
        solve_fokker_planck(sde, p0, x, [0.5, 1.5])
    with pytest.raises(ValueError, match=r"x must be \(batch, 1\)"):
        fokker_planck_residual(sde, lambda x, t: x.sum(1), torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"x must be \(batch, 1\)"):
        fokker_planck_residual(sde, lambda x, t: x.sum(1), torch.zeros(3, 1), torch.zeros(2))
