"""Core samplers against closed forms: the DDPM/SMLD updates, the exponential integrator, the exact
probability-flow map of a Gaussian (convergence orders), and Gaussian-mixture targets (W1)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PlainLinearSDE
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit
from sdekit.discretization import DDPMSchedule, ddpm_step, smld_ancestral_step
from sdekit.linear import EDMSDE, OUSDE, VESDE, VPSDE, SubVPSDE
from sdekit.metrics import sliced_w1, w1_to_mixture
from sdekit.mixture import GaussianMixture
from sdekit.sampling import SAMPLERS, get_sampler, list_samplers, sample, time_grid
from sdekit.sde import SDE

SETTINGS = settings(derandomize=True, deadline=None, max_examples=15)
# Tiny tensors: intra-op threads only add contention (15x slower on a shared 2-core machine).
torch.set_num_threads(1)
F64 = torch.float64
MINE = ("euler_maruyama", "euler", "heun", "ddim", "pc", "ancestral", "ode")

MIX_1D = GaussianMixture(
    torch.tensor([0.3, 0.7]), torch.tensor([[-2.0], [1.5]]), torch.tensor([0.3, 0.5])
)
MIX_2D = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2]),
    torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]]),
    torch.tensor([0.4, 0.3, 0.5]),
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sdes() -> dict[str, sdekit.LinearSDE]:
    return {
        "vp": VPSDE(),
        "vp_cosine": VPSDE.cosine(),
        "subvp": SubVPSDE(),
        "ve": VESDE(),
        "edm": EDMSDE(),
        "plain": PlainLinearSDE(),
    }


class HandOU(SDE):
    """An Ornstein-Uhlenbeck SDE written by hand, as a user would: only drift and diffusion."""

    def __init__(self, theta: float, g: float, T: float):
        super().__init__(T=T, t_min=1e-3)
        self.theta, self.g = theta, g

    def drift(self, x, t):
        return -self.theta * x

    def diffusion(self, x, t):
        return torch.full_like(t, self.g)

    def prior_sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        std = self.g / math.sqrt(2 * self.theta)
        return std * torch.randn(shape, generator=generator, device=device, dtype=dtype)


# --- grids ----------------------------------------------------------------------------------------


@SETTINGS
@given(
    steps=st.integers(1, 40),
    kind=st.sampled_from(sdekit.sampling.GRIDS),
    name=st.sampled_from(list(_sdes())),
)
def test_grids_are_strictly_decreasing_with_exact_ends(steps, kind, name):
    sde = _sdes()[name]
    ts = time_grid(sde, steps, kind)
    assert ts.dtype == F64 and ts.shape == (steps + 1,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == sde.t_min
    assert bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "plain"])
def test_grid_spacings_follow_their_definitions(name):
    sde = _sdes()[name]
    lam = sde.log_snr(time_grid(sde, 12, "logsnr"))
    torch.testing.assert_close(lam.diff(), torch.full((12,), float(lam.diff().mean()), dtype=F64))
    ts = time_grid(sde, 12, "edm", rho=7.0)
    root = (torch.exp(sde.log_sigma(ts) - sde.log_alpha(ts))) ** (1 / 7)  # linear in i (EDM eq. 5)
    torch.testing.assert_close(root.diff(), torch.full((12,), float(root.diff().mean()), dtype=F64))
    q = time_grid(sde, 4, "quadratic", t_min=0.5 * sde.T)
    torch.testing.assert_close(
        q, 0.5 * sde.T * (1 + torch.tensor([1, 9 / 16, 1 / 4, 1 / 16, 0], dtype=F64))
    )


def test_grid_and_argument_errors():
    sde = VPSDE()
    score = MIX_1D.score_fn(sde)
    x = torch.zeros(3, 1)
    for kwargs, match in [
        ({"method": "nope"}, "method must be one of"),
        ({"method": "ddim", "steps": 0}, "steps must be an integer >= 1"),
        ({"method": "ddim", "t_min": 0.0}, r"t_min must lie in \(0, T\)"),
        ({"method": "ddim", "t_min": 1.5}, r"t_min must lie in \(0, T\)"),
        ({"method": "ddim", "grid": "cubic"}, "grid must be one of"),
        ({"method": "ddim", "grid": torch.tensor([0.5, 0.7])}, "strictly decreasing"),
        ({"method": "ddim", "eta": 1.5}, r"eta must lie in \[0, 1\]"),
        ({"method": "pc", "predictor": "rk"}, "predictor must be one of"),
        ({"method": "pc", "corrector": "hmc"}, "corrector must be one of"),
        ({"method": "heun", "S_churn": -1.0}, "S_churn must be"),
        ({"method": "ddim", "prediction": "noise"}, "prediction must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            sample(score, sde, x, **kwargs)
    ou = HandOU(1.0, math.sqrt(2.0), 5.0)
    for method in ("ddim", "heun", "euler", "pc", "ancestral"):
        with pytest.raises(ValueError, match="needs a LinearSDE"):
            sample(score, ou, x, method=method)
    with pytest.raises(ValueError, match="needs a LinearSDE"):
        sample(score, ou, x, method="em", prediction="eps")
    with pytest.raises(ValueError, match="t_min must lie in"):
        sample(score, PlainLinearSDE(t_min=0.0), x, method="ddim")


def test_registry_names_aliases_and_table():
    assert get_sampler("Euler a").name == "ancestral"
    assert get_sampler("Heun").name == "heun" and get_sampler("DDIM").name == "ddim"
    assert (
        get_sampler("Euler").name == "euler"
        and get_sampler("Euler-Maruyama").name == "euler_maruyama"
    )
    table = list_samplers()
    assert all(f"| {name} |" in table for name in SAMPLERS)


# --- exact NFE, devices, dtypes, trajectories, reproducibility ------------------------------------


@pytest.mark.parametrize(
    "method, options, per_step",
    [
        ("euler_maruyama", {}, 1),
        ("euler", {}, 1),
        ("heun", {}, 2),
        ("heun", {"S_churn": 5.0}, 2),
        ("ddim", {"eta": 0.5}, 1),
        ("pc", {}, 2),
        ("pc", {"n_corrector": 3, "corrector": "ald"}, 4),
        ("pc", {"corrector": "none"}, 1),
        ("ancestral", {}, 1),
        ("ode", {"solver": "rk4"}, 4),
    ],
)
def test_nfe_is_the_exact_number_of_model_calls(method, options, per_step):
    sde = VPSDE()
    calls = []

    def model(x, t):
        calls.append(1)
        return MIX_1D.score(x, t, sde)

    x, info = sample(model, sde, (16, 1), method=method, steps=6, generator=_gen(), **options)
    denoise = get_sampler(method).stochastic
    assert info.nfe == len(calls) == 6 * per_step + denoise
    assert info.method == get_sampler(method).name and x.shape == (16, 1)


# centred: the probability-flow drift at T is nearly zero (VP: -beta x / 2 + beta x / 2), which
# made torchdiffeq's first step-size probe 0.01 |x| / |f| hundreds of times the interval
CENTRED = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], 0.3)


@pytest.mark.parametrize("target", [MIX_1D, CENTRED], ids=["asymmetric", "centred"])
def test_adaptive_ode_counts_calls_and_stays_in_the_time_interval(target):
    sde = VPSDE()
    seen = []

    def model(x, t):
        seen.append(t.to(F64))
        return target.score(x, t, sde)

    x, info = sample(model, sde, (64, target.dim), method="ode", generator=_gen())
    assert info.nfe == len(seen) > 10
    seen = torch.cat(seen)
    assert float(seen.min()) >= sde.t_min * (1 - 1e-6) and float(seen.max()) <= sde.T
    assert torch.isfinite(x).all()


@pytest.mark.parametrize(
    "name, seeds", [("vp", 10), ("subvp", 3), ("ou", 3), ("ve", 3), ("edm", 3)]
)
def test_readme_ode_example_never_calls_the_model_outside_t_min_to_T(name, seeds):
    """README: ``sdekit.sample(target.score_fn(sde), sde, (1000, 2), method="ode")`` on the centred
    mixture. It raised for 20 of 20 seeds on VP, sub-VP and OU (the model saw t = -9.4, -10.6,
    -93); 20 seeds pass on all five SDEs (measured; fewer run here, for time)."""
    sde = {"vp": VPSDE(), "subvp": SubVPSDE(), "ou": OUSDE(), "ve": VESDE(), "edm": EDMSDE()}[name]
    score = CENTRED.score_fn(sde)
    for seed in range(seeds):
        seen = []

        def model(x, t, seen=seen):
            seen.append(t.to(F64))
            return score(x, t)

        torch.manual_seed(seed)
        x, info = sample(model, sde, (1000, 2), method="ode")
        seen = torch.cat(seen)
        assert float(seen.min()) >= sde.t_min * (1 - 1e-6) and float(seen.max()) <= sde.T
        assert info.nfe == len(seen) // 1000
        if seed == 0:
            assert sliced_w1(x, CENTRED, 16, generator=_gen(1)) < 0.15


def test_ode_sampler_errors_name_the_cause():
    sde = VPSDE()
    ode = get_sampler("ode").fn
    ts = time_grid(sde, 1, "uniform")
    with pytest.raises(ValueError, match="at least one sample"):  # was "underflow in dt"
        ode(MIX_1D.score_fn(sde), sde, torch.zeros(0, 1), ts, noise=None)

    def nan_after_half(x, t):
        return torch.where(t[:, None] < 0.5, math.nan, MIX_1D.score(x, t, sde))

    x = torch.randn(8, 1, generator=_gen())
    with pytest.raises(FloatingPointError, match="could not take a step.*NaN or inf"):
        ode(nan_after_half, sde, x, ts, noise=None)  # sample() names the model evaluation


def test_trajectory_denoising_and_dtype_device():
    sde = VESDE()
    xT = sde.prior_sample((32, 2), generator=_gen())
    x, info = sample(MIX_2D.score_fn(sde), sde, xT, method="ddim", steps=5, return_trajectory=True)
    assert info.trajectory.shape == (6, 32, 2)
    torch.testing.assert_close(info.trajectory[0], xT)
    torch.testing.assert_close(info.trajectory[-1], x)
    assert x.dtype == xT.dtype and x.device == xT.device
    # Tweedie's step at t_min: x0 = (x + sigma^2 s) / alpha, one extra call
    y, info_y = sample(MIX_2D.score_fn(sde), sde, xT, method="ddim", steps=5, denoise_final=True)
    sigma = sde.sigma(torch.tensor([sde.t_min]))
    torch.testing.assert_close(
        y, x + sigma**2 * MIX_2D.score(x, info.ts[-1:].float().expand(32), sde)
    )
    assert info_y.nfe == info.nfe + 1


def test_explicit_t_min_and_compile_off_cuda():
    sde = VPSDE()
    with pytest.warns(UserWarning, match="compile=True is ignored off CUDA"):
        x, info = sample(
            MIX_1D.score_fn(sde), sde, (8, 1), method="ddim", steps=3, t_min=0.05, compile=True
        )
    assert float(info.ts[-1]) == 0.05 and float(info.ts[0]) == sde.T and info.ts.shape == (4,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_samples_stay_on_cuda():
    sde = VPSDE()
    x, _ = sample(MIX_2D.score_fn(sde), sde, (64, 2), method="heun", steps=4, device="cuda")
    assert x.device.type == "cuda"


@pytest.mark.parametrize("method", ["ancestral", "euler_maruyama", "heun"])
def test_per_sample_generators_make_samples_independent_of_batch(method):
    """Not "pc" with Langevin: its step size uses batch-averaged norms (as in score_sde)."""
    sde = VPSDE()
    opts = {"S_churn": 10.0} if method == "heun" else {}
    gens = lambda n: [_gen(100 + i) for i in range(n)]  # noqa: E731
    big, _ = sample(
        MIX_2D.score_fn(sde), sde, (5, 2), method=method, steps=4, generator=gens(5), **opts
    )
    small, _ = sample(
        MIX_2D.score_fn(sde), sde, (2, 2), method=method, steps=4, generator=gens(2), **opts
    )
    torch.testing.assert_close(big[:2], small)


def test_predictions_give_the_same_sampler():
    sde = SubVPSDE()
    xT = sde.prior_sample((64, 2), generator=_gen(), dtype=F64)

    def eps_model(x, t):
        return -sde.sigma(t)[:, None] * MIX_2D.score(x, t, sde)

    a, _ = sample(MIX_2D.score_fn(sde), sde, xT, method="heun", steps=5)
    b, _ = sample(eps_model, sde, xT, method="heun", steps=5, prediction="eps")
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["ddim", "heun", "pc"])
def test_a_bf16_network_with_float32_schedule(method):
    sde = VPSDE()

    def bf16_model(x, t):  # a network computing in bf16 and returning bf16
        return MIX_1D.score(x.bfloat16().float(), t, sde).bfloat16()

    x, _ = sample(bf16_model, sde, (2000, 1), method=method, steps=30, generator=_gen(1))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert w1_to_mixture(x, MIX_1D) < 0.1


# --- the updates equal the known discrete samplers ------------------------------------------------


def _increasing_times(sde, n):
    return torch.linspace(sde.t_min, sde.T, n, dtype=F64)


def test_ancestral_vp_equals_ddpm_update():
    sde, n = VPSDE(), 12
    times = _increasing_times(sde, n)
    alpha_bar = sde.alpha(times) ** 2
    betas = 1 - alpha_bar / torch.cat([torch.ones(1, dtype=F64), alpha_bar[:-1]])
    schedule = DDPMSchedule(betas)  # cumprod(1 - beta) = alpha(t)^2 on these times
    x = torch.randn(50, 1, generator=_gen(1), dtype=F64)
    out, _ = sample(
        MIX_1D.score_fn(sde),
        sde,
        x,
        method="ancestral",
        grid=times.flip(0),
        generator=_gen(2),
        denoise_final=False,
    )
    g = _gen(2)
    for i in range(n - 1, 0, -1):
        t = times[i].expand(50)
        eps = -sde.sigma(t)[:, None] * MIX_1D.score(x, t, sde)
        x = ddpm_step(
            schedule, x, eps, torch.full((50,), i), torch.randn(x.shape, generator=g, dtype=F64)
        )
    torch.testing.assert_close(out, x)


def test_ancestral_ve_equals_smld_update_and_ddim_eta_one():
    sde, n = VESDE(), 10
    times = _increasing_times(sde, n)
    sigmas = sde.sigma(times)
    x = torch.randn(50, 1, generator=_gen(1), dtype=F64) * sde.sigma_max
    kwargs = dict(grid=times.flip(0), denoise_final=False)
    out, _ = sample(MIX_1D.score_fn(sde), sde, x, method="ancestral", generator=_gen(2), **kwargs)
    ddim, _ = sample(
        MIX_1D.score_fn(sde), sde, x, method="ddim", eta=1.0, generator=_gen(2), **kwargs
    )
    g = _gen(2)
    for i in range(n - 1, 0, -1):
        s = MIX_1D.score(x, times[i].expand(50), sde)
        x = smld_ancestral_step(
            sigmas, x, s, torch.full((50,), i), torch.randn(x.shape, generator=g, dtype=F64)
        )
    torch.testing.assert_close(out, x)
    torch.testing.assert_close(ddim, x)


class _FixedNoise:
    def __init__(self, z):
        self.z = z

    def __call__(self, x):
        return self.z


@pytest.mark.parametrize("name", ["vp", "vp_cosine", "subvp", "ve", "edm", "plain"])
def test_ddim_eta0_is_the_exponential_integrator_and_eta1_the_ddpm_posterior(name):
    sde = _sdes()[name]
    ts = time_grid(sde, 3, "logsnr")
    t, s = ts[1:2], ts[2:3]
    x = torch.randn(40, 2, generator=_gen(3), dtype=F64) * sde.sigma(t)
    z = torch.randn(40, 2, generator=_gen(4), dtype=F64)
    score = MIX_2D.score_fn(sde)
    a_t, s_t, a_s, s_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
    x0 = (x + s_t**2 * score(x, t.expand(40))) / a_t
    ddim = get_sampler("ddim")
    # eta = 0, DPM-Solver-1: x_s = sigma_s/sigma_t x_t + (alpha_s - alpha_t sigma_s/sigma_t) x0
    out0 = ddim(score, sde, x, torch.cat([t, s]), noise=_FixedNoise(z), eta=0.0)
    torch.testing.assert_close(out0, s_s / s_t * x + (a_s - a_t * s_s / s_t) * x0)
    # eta = 1: the posterior q(x_s | x_t, x0) of Ho et al. eqs. 6-7, with alpha_bar = alpha^2 and
    # beta = 1 - alpha_bar_t / alpha_bar_s written for a general (alpha, sigma) kernel
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = a_s * var_ts / s_t**2 * x0 + a_ts * s_s**2 / s_t**2 * x
    out1 = ddim(score, sde, x, torch.cat([t, s]), noise=_FixedNoise(z), eta=1.0)
    torch.testing.assert_close(out1, mean + torch.sqrt(s_s**2 * var_ts / s_t**2) * z)
    if name == "vp":  # DDPM's beta-tilde = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta
        beta = 1 - a_ts**2
        torch.testing.assert_close(s_s**2 * var_ts / s_t**2, (1 - a_s**2) / (1 - a_t**2) * beta)


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "plain"])
def test_karras_euler_equals_deterministic_ddim(name):
    sde = _sdes()[name]
    x = sde.prior_sample((30, 2), generator=_gen(), dtype=F64)
    a, _ = sample(MIX_2D.score_fn(sde), sde, x, method="euler", steps=7)
    b, _ = sample(MIX_2D.score_fn(sde), sde, x, method="ddim", steps=7, grid="edm")
    torch.testing.assert_close(a, b)


# --- convergence orders on a Gaussian: the exact flow map is affine -------------------------------


def _slope(steps, errors) -> float:
    lx, ly = torch.tensor(steps, dtype=F64).log(), torch.tensor(errors, dtype=F64).log()
    lx = lx - lx.mean()
    return -float((lx * (ly - ly.mean())).sum() / (lx**2).sum())


@pytest.mark.parametrize(
    "method, options, grid, name, order, steps",
    [
        ("euler", {}, "edm", "vp", 1, (16, 32, 64)),
        ("euler", {}, "edm", "plain", 1, (16, 32, 64)),
        ("ddim", {}, "logsnr", "ve", 1, (16, 32, 64)),
        ("heun", {}, "edm", "vp", 2, (8, 16, 32)),
        ("heun", {}, "edm", "ve", 2, (8, 16, 32)),
        ("heun", {}, "edm", "edm", 2, (8, 16, 32)),
        ("heun", {}, "edm", "plain", 2, (8, 16, 32)),
        ("ode", {"solver": "euler"}, "uniform", "plain", 1, (16, 32, 64)),
        ("ode", {"solver": "midpoint"}, "uniform", "vp", 2, (16, 32, 64)),
        ("ode", {"solver": "rk4"}, "uniform", "plain", 4, (8, 16, 32)),
    ],
)
def test_convergence_order_on_a_gaussian(method, options, grid, name, order, steps):
    """p_0 = N(m, s^2): (x_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2) is an ODE invariant."""
    sde, m, s = _sdes()[name], 0.7, 0.5
    target = GaussianMixture(torch.tensor([1.0]), torch.tensor([[m]]), torch.tensor([s]))
    xT = torch.linspace(-2, 2, 9, dtype=F64)[:, None] * sde.prior_std

    def spread(t):
        return torch.sqrt(sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2)

    errors = []
    for n in steps:
        x, info = sample(
            target.score_fn(sde), sde, xT, method=method, steps=n, grid=grid, **options
        )
        T, t_min = info.ts[:1], info.ts[-1:]
        exact = sde.alpha(t_min) * m + spread(t_min) * (xT - sde.alpha(T) * m) / spread(T)
        errors.append(float((x - exact).abs().max()))
    assert errors[-1] < errors[0]
    assert abs(_slope(steps, errors) - order) < 0.3, errors


# --- every method reaches Gaussian-mixture targets ------------------------------------------------

CONVERGENCE = [
    ("euler_maruyama", {}, (10, 100)),
    ("pc", {}, (10, 50)),
    ("pc", {"predictor": "ancestral", "corrector": "ald", "snr": 0.1}, (10, 50)),
    ("pc", {"predictor": "euler_maruyama", "corrector": "none"}, (10, 100)),
    ("ancestral", {}, (10, 100)),
    ("ddim", {}, (5, 50)),
    ("ddim", {"eta": 1.0}, (10, 100)),
    ("euler", {}, (5, 50)),
    ("heun", {}, (3, 25)),
    ("heun", {"S_churn": 20.0, "S_tmin": 0.05, "S_tmax": 5.0}, (3, 25)),
    ("ode", {"solver": "rk4"}, (2, 20)),
]


@pytest.mark.parametrize("method, options, steps", CONVERGENCE)
def test_methods_converge_to_a_1d_mixture(method, options, steps):
    """W1 to the data law falls with the steps to near the Monte-Carlo floor (about 0.015 here)."""
    sde = VPSDE()
    w1 = []
    for n in steps:
        x, _ = sample(
            MIX_1D.score_fn(sde),
            sde,
            (10000, 1),
            method=method,
            steps=n,
            generator=_gen(5),
            **options,
        )
        w1.append(w1_to_mixture(x, MIX_1D))
    assert w1[1] < 0.6 * w1[0] and w1[1] < 0.06, w1


@pytest.mark.parametrize("method, options, steps", CONVERGENCE[::2])
def test_methods_converge_to_a_2d_mixture(method, options, steps):
    sde = VESDE()
    w1 = []
    for n in steps:
        x, _ = sample(
            MIX_2D.score_fn(sde),
            sde,
            (4000, 2),
            method=method,
            steps=n,
            grid="logsnr",
            generator=_gen(6),
            **options,
        )
        w1.append(sliced_w1(x, MIX_2D, 16, generator=_gen(7)))
    assert w1[1] < 0.6 * w1[0] and w1[1] < 0.08, w1


@pytest.mark.parametrize("name", ["vp", "vp_cosine", "subvp", "ve", "edm", "plain"])
def test_every_linear_sde_reaches_the_target(name):
    """Started from the exact p_T (the plain SDE's p_T is far from its Gaussian prior). The W1 of
    the exact flow of these x_T (adaptive ODE) is this sample's Monte-Carlo floor."""
    sde = _sdes()[name]
    xT = MIX_1D.sample(5000, sde.T, sde, generator=_gen(8), dtype=torch.float32)
    floor = w1_to_mixture(sample(MIX_1D.score_fn(sde), sde, xT, method="ode")[0], MIX_1D)
    assert floor < 0.07
    for method, steps, grid in [
        ("heun", 25, "edm"),
        ("ddim", 60, "logsnr"),
        ("pc", 60, "logsnr"),
        ("euler_maruyama", 150, "logsnr"),
    ]:
        x, _ = sample(
            MIX_1D.score_fn(sde), sde, xT, method=method, steps=steps, grid=grid, generator=_gen(8)
        )
        assert w1_to_mixture(x, MIX_1D) < floor + 0.025, method


@pytest.mark.parametrize("method, steps", [("euler_maruyama", 200), ("ode", 1)])
def test_a_hand_written_sde_with_the_exact_ousde_score(method, steps):
    theta, g, T = 0.8, 1.2, 6.0
    exact = OUSDE(theta=theta, g=g, T=T)
    x, info = sample(
        MIX_1D.score_fn(exact),
        HandOU(theta, g, T),
        (5000, 1),
        method=method,
        steps=steps,
        generator=_gen(9),
    )
    assert info.nfe > 0 and w1_to_mixture(x, MIX_1D) < 0.07
