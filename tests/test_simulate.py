"""Euler–Maruyama: the step itself, and its samples against Fokker–Planck and exact mixture laws.

Monte-Carlo tolerances: W1 of n exact samples to their own law (the floor) wobbles by tens of
percent between seeds, so each test measures it as a mean over 4 seeds and allows 3x that plus the
discretization bias (stated per test, measured at several step counts).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchdiffeq

from sdekit.fokker_planck import solve_fokker_planck
from sdekit.linear import OUSDE, VESDE, VPSDE
from sdekit.metrics import w1_to_cdf
from sdekit.mixture import GaussianMixture
from sdekit.sde import SDE, broadcast_to_data
from sdekit.simulate import simulate


class DoubleWell(SDE):
    """:math:`\\mathrm{d}x = (x - x^3)\\,\\mathrm{d}t + 0.8\\,\\mathrm{d}w`: bimodal, nonlinear."""

    def drift(self, x, t):
        return x - x**3

    def diffusion(self, x, t):
        return torch.full_like(t, 0.8)


class StateDependent(SDE):
    """:math:`\\mathrm{d}x = -x\\,\\mathrm{d}t + c\\sqrt{1 + x^2}\\,\\mathrm{d}w` (Itô), c = 0.5."""

    def __init__(self, c: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.c = c

    def drift(self, x, t):
        return -x

    def diffusion(self, x, t):
        return self.c * torch.sqrt(1 + x**2)


class ConstantNoise(StateDependent):
    """The same drift with a constant g = 0.5 sqrt(2): a negative control for the test above."""

    def diffusion(self, x, t):
        return torch.full_like(t, 0.5 * 2**0.5)


# -------------------------------------------------------------------------------- the step


def test_one_step_is_euler_maruyama():
    sde = StateDependent()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
    ts = torch.tensor([0.2, 0.5], dtype=torch.float64)
    got = simulate(sde, x0, ts, generator=torch.Generator().manual_seed(1), return_path=False)
    z = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = x0 - x0 * 0.3 + 0.5 * torch.sqrt(1 + x0**2) * 0.3**0.5 * z
    torch.testing.assert_close(got, expected)


def test_backward_step_uses_abs_dt_for_noise():
    """A decreasing grid: drift times the negative dt, noise times sqrt(|dt|)."""
    sde = OUSDE()
    x0 = torch.ones(2, 1, dtype=torch.float64)
    ts = torch.tensor([1.0, 0.75], dtype=torch.float64)
    got = simulate(sde, x0, ts, generator=torch.Generator().manual_seed(2), return_path=False)
    z = torch.randn(2, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = x0 + (-x0) * (-0.25) + 2**0.5 * 0.5 * z
    torch.testing.assert_close(got, expected)


def test_path_shape_reproducible_and_dtype():
    sde = VPSDE()
    x0 = torch.zeros(5, 2, 3)
    ts = torch.linspace(0.0, 1.0, 11)
    a = simulate(sde, x0, ts, generator=torch.Generator().manual_seed(0))
    b = simulate(sde, x0, ts, generator=torch.Generator().manual_seed(0))
    assert a.shape == (11, 5, 2, 3) and a.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(a[0], x0)
    last = simulate(sde, x0, ts, generator=torch.Generator().manual_seed(0), return_path=False)
    assert torch.equal(last, a[-1])


def test_ou_mean_and_variance_recursions():
    """EM on OU is a linear recursion: m_{k+1} = (1 - theta dt) m_k and
    v_{k+1} = (1 - theta dt)^2 v_k + g^2 dt, exactly; 100k paths match within 5 standard errors."""
    ou, n, steps = OUSDE(theta=1.0, g=1.0, T=2.0), 100_000, 20
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    x = simulate(
        ou, x0, torch.linspace(0, 2.0, steps + 1), generator=torch.Generator().manual_seed(0)
    )
    dt, m, v = 0.1, 2.0, 0.0
    for _ in range(steps):
        m, v = (1 - dt) * m, (1 - dt) ** 2 * v + dt
    assert abs(float(x[-1].mean()) - m) < 5 * (v / n) ** 0.5
    assert abs(float(x[-1].var()) - v) < 5 * v * (2 / n) ** 0.5


# ----------------------------------------------- (c) nonlinear SDEs against Fokker–Planck


def _fp_law(sde, t1: float, m0: float, s0: float):
    """Fokker–Planck density at t1 from N(m0, s0^2) on [-4, 4] (h = 0.01, dt = 1e-3), as a CDF."""
    x = np.linspace(-4.0, 4.0, 801)
    h = x[1] - x[0]
    p0 = np.exp(-0.5 * ((x - m0) / s0) ** 2)
    p0 /= p0.sum() * h
    p = solve_fokker_planck(sde, p0, x, [t1], dt=1e-3)[0]
    edges = np.concatenate([[x[0] - h / 2], x + h / 2])
    cdf_values = np.concatenate([[0.0], np.cumsum(p) * h])
    return edges, cdf_values


def _inverse_cdf_samples(edges, cdf_values, n, seed):
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.from_numpy(np.interp(u.numpy(), cdf_values, edges))


@pytest.mark.parametrize(
    ("sde", "t1", "m0"),
    [(DoubleWell(T=2.0), 2.0, 0.2), (StateDependent(T=1.0), 1.0, 1.0)],
    ids=["double_well", "state_dependent"],
)
def test_euler_maruyama_matches_fokker_planck(sde, t1, m0):
    """n = 20,000 paths of 200 steps from N(m0, 0.3^2).

    Measured: floor ~0.008 (double well), ~0.0045 (state-dependent); EM W1 0.003-0.012 and
    0.0027-0.004 at 100-400 steps, so the EM bias is below the floor: allowed 0.005.
    """
    n = 20_000
    edges, cdf_values = _fp_law(sde, t1, m0, 0.3)

    def cdf(g):
        return torch.from_numpy(np.interp(g.numpy(), edges, cdf_values))

    floor = np.mean(
        [w1_to_cdf(_inverse_cdf_samples(edges, cdf_values, n, s), cdf, -4, 4) for s in range(4)]
    )
    gen = torch.Generator().manual_seed(10)
    x0 = m0 + 0.3 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    ts = torch.linspace(0.0, t1, 201, dtype=torch.float64)
    x1 = simulate(sde, x0, ts, generator=gen, return_path=False)
    w1 = w1_to_cdf(x1, cdf, -4, 4)
    assert w1 < 3 * floor + 0.005, (w1, floor)
    if isinstance(sde, StateDependent):
        # the divergence term matters: the constant-noise law is far from these samples
        edges_c, cdf_c = _fp_law(ConstantNoise(T=1.0), t1, m0, 0.3)
        wrong = w1_to_cdf(
            x1, lambda g: torch.from_numpy(np.interp(g.numpy(), edges_c, cdf_c)), -4, 4
        )
        assert wrong > 3 * (3 * floor + 0.005), wrong


# ------------------------------------------------ (d) reverse SDE and probability-flow ODE

GM = GaussianMixture([0.3, 0.7], [-1.5, 1.0], [0.2, 0.4])
N = 10_000


def _floor(sde) -> float:
    def cdf(g):
        return GM.cdf(g, sde.t_min, sde)

    samples = [
        GM.sample(N, sde.t_min, sde, generator=torch.Generator().manual_seed(s)) for s in range(4)
    ]
    return float(np.mean([w1_to_cdf(x, cdf, -5, 5) for x in samples]))


def _w1(x: torch.Tensor, sde) -> float:
    lo, hi = min(-5.0, float(x.min())), max(5.0, float(x.max()))
    return w1_to_cdf(x, lambda g: GM.cdf(g, sde.t_min, sde), lo, hi)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 50.0)], ids=["vp", "ve"])
def test_reverse_sde_returns_data(sde):
    """Exact p_T samples, exact score, 500 reverse EM steps to t_min; W1 to the exact p_{t_min}.

    Measured (n = 20k): floor 0.0086; reverse EM 0.017 / 0.012 / 0.004 (VP) and 0.004 / 0.013 /
    0.004 (VE) at 250 / 500 / 1000 steps: bias allowed 0.01. At n = 10k (this test): floor 0.013,
    W1 0.028 (VP) and 0.020 (VE) against a bound of 0.049."""
    gen = torch.Generator().manual_seed(1)
    x_T = GM.sample(N, sde.T, sde, generator=gen)
    ts = torch.linspace(sde.T, sde.t_min, 501, dtype=torch.float64)
    x0 = simulate(sde.reverse(GM.score_fn(sde)), x_T, ts, generator=gen, return_path=False)
    floor = _floor(sde)
    assert _w1(x0, sde) < 3 * floor + 0.01, (_w1(x0, sde), floor)
    # without the score term the reverse SDE is wrong, and far off
    wrong = simulate(sde.reverse(lambda x, t: torch.zeros_like(x)), x_T, ts[:101], generator=gen)
    assert _w1(wrong[-1], sde) > 0.5


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 50.0)], ids=["vp", "ve"])
def test_probability_flow_carries_prior_to_data(sde):
    """dopri5 (rtol = atol = 1e-6) from exact p_T samples to t_min: a deterministic transport of
    exact samples, so only the floor remains (measured 0.0057 at n = 20k vs floor 0.0086).

    torchdiffeq's adaptive steps may evaluate just past t_min (t < 0 raises in sdekit): the guard
    clamps the time into [t_min, T]."""
    ode = sde.probability_flow(GM.score_fn(sde))
    x_T = GM.sample(N, sde.T, sde, generator=torch.Generator().manual_seed(1))

    def guarded(t, x):
        return ode(t.clamp(sde.t_min, sde.T), x)

    ts = torch.tensor([sde.T, sde.t_min], dtype=torch.float64)
    x0 = torchdiffeq.odeint(guarded, x_T, ts, method="dopri5", rtol=1e-6, atol=1e-6)[-1]
    assert _w1(x0, sde) < 3 * _floor(sde) + 1e-3
    assert 50 < ode.nfe < 1000


# ------------------------------------------------------------------------------ bad input


def test_bad_input():
    sde, x0 = VPSDE(), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="ts must be a 1D tensor of at least 2 times"):
        simulate(sde, x0, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="ts must be a 1D tensor"):
        simulate(sde, x0, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        simulate(sde, x0, torch.tensor([0.1, 0.5, 0.3]))
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        simulate(sde, x0, torch.tensor([0.1, 0.1, 0.3]))
    with pytest.raises(ValueError, match=r"ts must lie in \[0, T\]"):
        simulate(sde, x0, torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"ts must lie in \[0, T\]"):
        simulate(sde, x0, torch.tensor([-0.1, 0.5]))
    with pytest.raises(ValueError, match=r"x0 must have shape \(batch, \*data_shape\)"):
        simulate(sde, torch.zeros(3), torch.tensor([0.1, 0.5]))


def test_broadcast_helper_used_for_scalar_g():
    """A (batch,) diffusion broadcasts over (batch, C, H, W) in simulate."""
    sde = VPSDE()
    x0 = torch.zeros(2, 3, 4, 4)
    out = simulate(sde, x0, torch.tensor([0.5, 0.6]), return_path=False)
    assert out.shape == x0.shape
    assert broadcast_to_data(torch.ones(2), x0).shape == (2, 1, 1, 1)


def test_bad_start_raises_naming_x0():
    sde, ts = VPSDE(), torch.tensor([0.1, 0.5])
    with pytest.raises(
        ValueError, match=r"x0 must be a floating-point tensor, got torch.int64.*x0.float\(\)"
    ):
        simulate(sde, torch.zeros(3, 2, dtype=torch.int64), ts)
    with pytest.raises(ValueError, match=r"x0 contains NaN or inf \(1 of 6 values\)"):
        simulate(sde, torch.tensor([[0.0, 1.0], [math.nan, 0.0], [0.0, 0.0]]), ts)
    with pytest.raises(ValueError, match="batch >= 1"):
        simulate(sde, torch.zeros(0, 2), ts)


class BlowsUp(SDE):
    """:math:`\\mathrm{d}x = x^3\\,\\mathrm{d}t`: explicit Euler from x = 2 with step 0.1 overflows
    float32 in step 6, counted from 0 (2.8, 5.0, 17.5, 550, 1.7e7, 4.6e20, inf)."""

    def drift(self, x, t):
        return x**3

    def diffusion(self, x, t):
        return torch.zeros_like(t)


@pytest.mark.parametrize("return_path", [True, False])
def test_a_state_that_stops_being_finite_is_named_with_its_step(return_path):
    x0 = torch.full((4, 1), 2.0)
    ts = torch.linspace(0.0, 1.0, 11)
    with pytest.raises(
        FloatingPointError,
        match=r"simulate\(BlowsUp\) became non-finite .* step 6 of 10 \(t = 0.6 -> 0.7\); try smaller",
    ):
        simulate(BlowsUp(), x0, ts, return_path=return_path)


@pytest.mark.parametrize(
    "kind, error",
    [("drift", ValueError), ("diffusion", ValueError), ("numpy", TypeError)],
)
def test_wrong_output_shapes_are_not_broadcast(kind, error):
    class Wrong(SDE):
        def drift(self, x, t):
            return x[:, :1] if kind == "drift" else -x

        def diffusion(self, x, t):
            if kind == "numpy":
                return np.ones(x.shape[0])
            return torch.ones_like(x[:, :1]) if kind == "diffusion" else torch.ones_like(t)

    with pytest.raises(error, match=f"Wrong.{'drift' if kind == 'drift' else 'diffusion'} must"):
        simulate(Wrong(), torch.zeros(3, 2), torch.tensor([0.0, 0.5]))
