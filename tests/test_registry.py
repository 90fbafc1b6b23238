"""The sampler registry: the contract of every spec, safe registration, and every declared order
measured on an exact target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdekit
from sdekit import SDE, VESDE, VPSDE, GaussianMixture
from sdekit.sampling import SAMPLERS, get_sampler, register, time_grid
from sdekit.sampling.euler import euler_maruyama
from sdekit.sampling.noise import NoiseSource
from sdekit.sampling.registry import SamplerSpec, additive_noise

MU, S = 0.7, 0.4  # p_0 = N(MU, S^2): off-centre, so errors in the mean show too


class ProbeNoise(NoiseSource):
    """Draw ``c`` is 1 in batch row ``c + 1`` and 0 elsewhere.

    On a Gaussian target the exact score is affine in x, so every fixed-grid sampler is an affine
    map of (x_T, draws): row 0 follows the mean path, and row ``c + 1`` minus row 0 is the
    output's response to draw ``c``; the last row carries a unit perturbation of x_T. The output
    law is then Gaussian with a mean and variance computed exactly, no Monte Carlo.
    """

    def __init__(self):
        super().__init__(None)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(x)
        if self.calls + 2 >= x.shape[0]:
            raise AssertionError("ProbeNoise needs a larger batch")
        z[self.calls + 1] = 1
        self.calls += 1
        return z


def exact_output_law(spec: SamplerSpec, sde, steps: int) -> tuple[float, float]:
    """Mean and std of the sampler's output at t_min, started from the exact p_T."""
    target = GaussianMixture([1.0], [MU], [S])
    ts = time_grid(sde, steps, spec.default_grid)
    T = ts[:1]
    mean_T = float(sde.alpha(T) * MU)
    var_T = float(sde.alpha(T) ** 2 * S**2 + sde.sigma(T) ** 2)
    batch = 4 * steps + 3
    x = torch.full((batch, 1), mean_T, dtype=torch.float64)
    x[-1] += 1.0
    noise = ProbeNoise()
    out = spec(target.score_fn(sde), sde, x, ts, noise=noise)[:, 0]
    mean = out[0]
    response_T = out[-1] - mean
    draws = out[1 : noise.calls + 1] - mean
    var = response_T**2 * var_T + (draws**2).sum()
    return float(mean), float(var.sqrt())


def weak_error(spec: SamplerSpec, sde, steps: int) -> float:
    t_min = torch.tensor([sde.t_min], dtype=torch.float64)
    exact_mean = float(sde.alpha(t_min) * MU)
    exact_std = float(torch.sqrt(sde.alpha(t_min) ** 2 * S**2 + sde.sigma(t_min) ** 2))
    mean, std = exact_output_law(spec, sde, steps)
    return abs(mean - exact_mean) + abs(std - exact_std)


def flow_map_error(spec: SamplerSpec, sde, steps: int, x: torch.Tensor, reference) -> float:
    target = GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [0.3, 0.5])
    ts = time_grid(sde, steps, spec.default_grid)
    return float((spec(target.score_fn(sde), sde, x, ts, noise=None) - reference).abs().max())


def reference_flow(sde, x: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE of a 1D mixture solved to 1e-12 (dopri8, float64)."""
    from torchdiffeq import odeint

    target = GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [0.3, 0.5])
    ends = torch.tensor([sde.T, sde.t_min], dtype=torch.float64)
    options = {"step_t": ends[1:], "first_step": 1e-4}
    ode = sde.probability_flow(target.score_fn(sde))
    return odeint(ode, x, ends, method="dopri8", rtol=1e-12, atol=1e-12, options=options)[-1]


def slope(steps: list[int], errors: list[float]) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


# PC's default Langevin corrector uses batch statistics (not affine) and has an O(snr^2) bias that
# no step count removes: its declared order is the predictor's, measured with the corrector off.
# The learned-variance samplers need a v; a fixed one makes them ancestral (v = 1, beta) and DDIM
# with eta = 1 (v = 0, beta_tilde), both weak order 1.
_OPTIONS = {
    "pc": {"corrector": "none"},
    "ancestral_learned": {"v": 1.0},
    "ddim_learned": {"v": 0.0},
}
# adaptive methods have no step count to converge in
FIXED_GRID = sorted(name for name, spec in SAMPLERS.items() if spec.evals_per_step is not None)
DETERMINISTIC = [name for name in FIXED_GRID if not SAMPLERS[name].stochastic]
STOCHASTIC = [name for name in FIXED_GRID if SAMPLERS[name].stochastic]


def _with_options(spec: SamplerSpec) -> SamplerSpec:
    options = _OPTIONS.get(spec.name, {})
    return SamplerSpec(**{**spec.__dict__, "defaults": {**spec.defaults, **options}})


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_every_deterministic_order_is_the_measured_one(name, sde_name):
    """ODE order: slope of the worst flow-map error on a two-mode 1D mixture (a nonlinear score,
    so no order is hidden by a Gaussian's special structure) against a 1e-12 solve, within 0.3.
    Measured (VP / VE): ddim 0.98 / 0.93, euler 0.97 / 0.94, heun 2.0 / 2.0, dpmpp_2m 2.0 / 2.0,
    dpmpp_3m 3.0 / 3.0."""
    spec, sde = get_sampler(name), VPSDE() if sde_name == "vp" else VESDE()
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None] * sde.prior_std
    reference = reference_flow(sde, x)
    steps = [256, 512, 1024]
    order = slope(steps, [flow_map_error(spec, sde, n, x, reference) for n in steps])
    assert abs(order - spec.order) < 0.3, f"{name}: declared {spec.order}, measured {order:.2f}"


@pytest.mark.parametrize("name", STOCHASTIC)
def test_every_stochastic_weak_order_is_the_measured_one(name):
    """Weak order: slope of the exact error in the mean and std of the output law on a Gaussian
    (every method is affine there, see ProbeNoise), on VP, within 0.25. (On VE the mean path is
    exact and Euler–Maruyama's variance error superconverges to order 2, hiding the order.)"""
    spec = get_sampler(name)
    steps = [160, 320, 640]
    order = slope(steps, [weak_error(_with_options(spec), VPSDE(), n) for n in steps])
    assert abs(order - spec.order) < 0.25, f"{name}: declared {spec.order}, measured {order:.2f}"


class _StateDependent(SDE):
    """Geometric Brownian motion dx = c x dW on [0, 1]: a diffusion proportional to x."""

    def __init__(self, c: float = 0.5, t_min: float = 0.0):
        super().__init__(T=1.0, t_min=t_min)
        self.c = c

    def drift(self, x, t):
        return torch.zeros_like(x)

    def diffusion(self, x, t):
        return self.c * x


class _CoupledNoise(NoiseSource):
    """The fine Brownian increments summed ``k`` at a time: coarse and fine grids share one path."""

    def __init__(self, fine: torch.Tensor, k: int):
        super().__init__(None)
        self.fine, self.k, self.calls = fine, k, 0

    def __call__(self, x):
        block = self.fine[self.calls * self.k : (self.calls + 1) * self.k]
        self.calls += 1
        return block.sum(0) / math.sqrt(self.k)


def test_euler_maruyama_strong_order_on_state_dependent_noise():
    """Pathwise error of the reverse SDE (drift -d(G^2)/dx = -2c^2 x with a zero score) against a
    4096-step solve on the same Brownian path: slope 0.5 as declared (measured 0.52)."""
    sde, n_fine, batch = _StateDependent(), 4096, 2000
    g = torch.Generator().manual_seed(0)
    fine = torch.randn(n_fine, batch, 1, generator=g, dtype=torch.float64)
    x_T = 1 + 0.1 * torch.randn(batch, 1, generator=g, dtype=torch.float64)

    def score(x, t):
        return torch.zeros_like(x)

    def solve(steps):
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return euler_maruyama(score, sde, x_T, ts, noise=_CoupledNoise(fine, n_fine // steps))

    reference = solve(n_fine)
    steps = [16, 32, 64, 128, 256]
    errors = [float((solve(n) - reference).abs().mean()) for n in steps]
    order = slope(steps, errors)
    assert abs(order - get_sampler("euler_maruyama").strong_order) < 0.15, order


def test_registering_an_existing_name_raises_unless_override():
    def mine(score, sde, x, ts, *, noise, callback=None):
        return x

    common = {"order": 1, "stochastic": False, "needs_marginal": False, "evals_per_step": 1}
    with pytest.raises(ValueError, match="already registered"):
        register("dpmpp_2m", **common)(mine)
    with pytest.raises(ValueError, match="already registered"):
        register("my_sampler", aliases=("DPM++ 2M",), **common)(mine)
    assert get_sampler("dpmpp_2m").fn is not mine
    try:
        register("test_only_identity", aliases=("identity sampler",), **common)(mine)
        assert get_sampler("Identity Sampler").fn is mine
        register("test_only_identity", override=True, **common)(mine)
        with pytest.raises(ValueError, match="method must be one of"):
            get_sampler("identity sampler")  # the old alias went with the old spec
    finally:
        SAMPLERS.pop("test_only_identity", None)
        from sdekit.sampling import registry

        registry._ALIASES.pop("testonlyidentity", None)


def test_registration_checks_its_arguments():
    def fn(score, sde, x, ts, *, noise):
        return x

    common = {"stochastic": False, "needs_marginal": False, "evals_per_step": 1}
    with pytest.raises(ValueError, match="noise_type"):
        register("bad", order=1, noise_type="multiplicative", **common)(fn)
    with pytest.raises(ValueError, match="order"):
        register("bad", order=0, **common)(fn)
    with pytest.raises(ValueError, match="unknown options"):
        register("bad", order=1, fixed={"eta": 1.0}, **common)(fn)
    assert "bad" not in SAMPLERS


def test_variants_are_one_definition_with_bound_options():
    spec2, spec3 = get_sampler("dpmpp_2m"), get_sampler("dpmpp_3m")
    assert spec2.fn is spec3.fn and spec2.fixed["order"] == 2 and spec3.fixed["order"] == 3
    assert get_sampler("heun").fn is get_sampler("euler").fn
    assert get_sampler("ancestral").fn is get_sampler("pc").fn
    assert get_sampler("dpmpp_2m_sde").options["eta"] == 1.0
    assert "eta" not in spec2.options and "order" not in spec2.options


def test_sample_checks_options_by_name():
    sde = VPSDE()
    score = GaussianMixture([1.0], [MU], [S]).score_fn(sde)
    with pytest.raises(ValueError, match="takes the options"):
        sdekit.sample(score, sde, (4, 1), method="dpmpp_2m", etaa=0.5)
    with pytest.raises(ValueError, match="fixed by the method"):
        sdekit.sample(score, sde, (4, 1), method="dpmpp_3m", order=2)
    x, _ = sdekit.sample(score, sde, (4, 1), method="dpmpp_2m_sde", eta=0.5, steps=5)
    assert x.shape == (4, 1)


def test_noise_type_is_checked_against_the_sde():
    sde = _StateDependent(t_min=1e-3)
    x = torch.zeros(3, 1)
    assert not additive_noise(sde, x, torch.ones(3)) and additive_noise(VPSDE(), x, torch.ones(3))

    def score(x, t):
        return -x

    with pytest.raises(ValueError, match="additive noise only.*euler_maruyama"):
        sdekit.sample(score, sde, x, method="adaptive_sde")
    out, info = sdekit.sample(score, sde, x, method="euler_maruyama", steps=4)
    assert info.nfe == 4 and out.shape == x.shape


def test_every_spec_states_its_contract():
    for name, spec in SAMPLERS.items():
        assert spec.name == name and spec.paper and spec.order > 0
        assert spec.noise_type in ("additive", "general")
        assert spec.step_callback in ("replace", "observe", None)
        if spec.needs_marginal:
            assert spec.noise_type == "additive", name
        if not spec.stochastic:
            assert spec.strong_order is None, name
