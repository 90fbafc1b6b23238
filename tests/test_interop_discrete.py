"""DiscreteVPSDE: exact at the timesteps, linear log-SNR between them, closed-form f and g^2, every
sampler accepts it, bad schedules raise."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit
from sdekit.discrete import DiscreteVPSDE
from sdekit.discretization import DDPMSchedule
from sdekit.linear import LinearSDE
from sdekit.sampling import SAMPLERS

SETTINGS = settings(derandomize=True, deadline=None, max_examples=40)


def _schedules() -> dict[str, DiscreteVPSDE]:
    return {
        "linear": DiscreteVPSDE.linear(),
        "scaled_linear": DiscreteVPSDE.scaled_linear(),
        "cosine": DiscreteVPSDE.cosine(),
        "short": DiscreteVPSDE.linear(20, 1e-3, 0.3),
    }


SCHEDULES = _schedules()


@pytest.mark.parametrize("name", SCHEDULES)
def test_marginal_is_the_discrete_one_at_every_timestep(name):
    sde = SCHEDULES[name]
    ac = sde.alphas_cumprod
    t = sde.time(torch.arange(sde.num_timesteps))
    torch.testing.assert_close(sde.alpha(t) ** 2, ac, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.sigma(t) ** 2, 1 - ac, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.log_snr(t), torch.log(ac / (1 - ac)), rtol=1e-12, atol=1e-13)
    # t = (tau + 1) / N both ways; T is the last timestep, t_min the first
    torch.testing.assert_close(sde.timestep(t), torch.arange(sde.num_timesteps).double())
    assert float(t[-1]) == sde.T == 1.0 and float(t[0]) == sde.t_min == 1 / sde.num_timesteps
    # the kernel between two timesteps is DDPM's step: alpha^2 = 1 - beta_tau
    a, _ = sde.transition(t[:-1], t[1:])
    torch.testing.assert_close(a**2, 1 - sde.betas[1:], rtol=1e-12, atol=0)


def test_named_schedules_are_the_papers():
    """Ho et al.'s linspace(1e-4, 0.02), LDM's scaled linear, improved DDPM's cosine (eq. 17)."""
    torch.testing.assert_close(
        DiscreteVPSDE.linear().betas,
        torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64),
        rtol=1e-11,
        atol=0,
    )
    root = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64)
    torch.testing.assert_close(DiscreteVPSDE.scaled_linear().betas, root**2, rtol=1e-11, atol=0)
    tau = torch.arange(1, 1001, dtype=torch.float64) / 1000
    f = (
        torch.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2
        / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    )
    ac = DiscreteVPSDE.cosine().alphas_cumprod
    # improved DDPM clips beta at 0.999: only the last steps differ from the closed form
    torch.testing.assert_close(ac[:-5], f[:-5], rtol=1e-11, atol=0)
    assert float(DiscreteVPSDE.cosine().betas.max()) == pytest.approx(0.999)


def test_ddpm_alpha_bar_at_the_last_step_differs_from_the_continuous_vp():
    """The issue's numbers: DDPM's betas end at 4.04e-5, the continuous VP SDE at 4.32e-5; from_sde
    gives the discrete schedule that equals the continuous one at every timestep."""
    one = torch.ones(1, dtype=torch.float64)
    assert float(DiscreteVPSDE.linear().alpha(one) ** 2) == pytest.approx(4.0358e-5, rel=1e-4)
    vp = sdekit.VPSDE()
    assert float(vp.alpha(one) ** 2) == pytest.approx(4.3186e-5, rel=1e-4)
    sde = DiscreteVPSDE.from_sde(vp)
    t = sde.time(torch.arange(1000))
    torch.testing.assert_close(sde.alpha(t), vp.alpha(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.log_snr(t), vp.log_snr(t), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(st.floats(0.0, 1.0), st.sampled_from(list(SCHEDULES)))
def test_log_snr_is_linear_between_timesteps_and_inverted_exactly(u, name):
    sde = SCHEDULES[name]
    n = sde.num_timesteps
    t = torch.tensor([1 / n + u * (1 - 1 / n)], dtype=torch.float64)
    tau = float(sde.timestep(t))
    k = min(math.floor(tau), n - 2)
    lam = torch.log(sde.alphas_cumprod / (1 - sde.alphas_cumprod))
    expected = lam[k] + (tau - k) * (lam[k + 1] - lam[k])  # k-diffusion's t_to_sigma, in log-SNR
    torch.testing.assert_close(sde.log_snr(t), expected.reshape(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sde.log_snr_inverse(sde.log_snr(t)), t, rtol=0, atol=1e-13)


@SETTINGS
@given(st.floats(1e-9, 1.0), st.sampled_from(list(SCHEDULES)))
def test_drift_and_diffusion_are_the_schedule_derivatives(t_value, name):
    """f = d log alpha / dt and g^2 = -sigma^2 d lambda / dt (autograd of the marginal), beta = g^2."""
    sde = SCHEDULES[name]
    t = torch.tensor([t_value], dtype=torch.float64)
    torch.testing.assert_close(sde.f(t), LinearSDE.f(sde, t), rtol=1e-10, atol=0)
    torch.testing.assert_close(sde.g2(t), LinearSDE.g2(sde, t), rtol=1e-10, atol=0)
    torch.testing.assert_close(sde.g2(t), -2 * sde.f(t), rtol=1e-14, atol=0)
    assert float(sde.g2(t)) > 0
    B = sde.schedule.integral(t)
    torch.testing.assert_close(sde.schedule.integral_inverse(B), t, rtol=1e-11, atol=1e-15)


def test_before_the_first_timestep_the_rate_is_constant():
    """On [0, 1/N]: alpha_bar(t) = alpha_bar_0^(N t), beta = -N log alpha_bar_0; +inf log-SNR at 0."""
    sde = SCHEDULES["short"]
    t = torch.tensor([0.0, 0.01, 0.03, 0.049], dtype=torch.float64)
    ac0 = float(sde.alphas_cumprod[0])
    torch.testing.assert_close(sde.alpha(t) ** 2, ac0 ** (20 * t), rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.g2(t), torch.full_like(t, -20 * math.log(ac0)))
    assert sde.log_snr(t[:1]).item() == math.inf and sde.sigma(t[:1]).item() == 0
    assert sde.log_snr_inverse(torch.tensor([math.inf], dtype=torch.float64)).item() == 0


def test_monotone_on_a_fine_grid():
    sde = SCHEDULES["cosine"]
    t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    assert bool((sde.log_snr(t)[1:] < sde.log_snr(t)[:-1]).all())


def test_ddpm_discretization_recovers_the_betas():
    sde = SCHEDULES["scaled_linear"]
    betas = DDPMSchedule.from_sde(sde, sde.num_timesteps).betas
    root = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64)
    torch.testing.assert_close(betas, root**2, rtol=1e-11, atol=0)


def test_from_scheduler_uses_diffusers_float32_values():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    sde = DiscreteVPSDE.from_scheduler(scheduler)
    assert torch.equal(sde.alphas_cumprod, scheduler.alphas_cumprod.double())
    t = sde.time(torch.arange(1000))
    torch.testing.assert_close(
        sde.alpha(t) ** 2, scheduler.alphas_cumprod.double(), rtol=1e-13, atol=0
    )


# --------------------------------------------------------------------------- every sampler


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_every_sampler_accepts_it(method):
    """Each registered method, on the exact score of a Gaussian N(0.5, 0.4^2), reaches its law at t_min
    (mean and std of alpha x0 + sigma eps there) on DDPM's linear schedule."""
    sde = DiscreteVPSDE.linear(200, 1e-3, 0.05)
    gm = sdekit.GaussianMixture([1.0], [[0.5]], [0.4])
    options = {"rtol": 1e-4, "atol": 1e-4} if method == "ode" else {}
    if method in ("ancestral_learned", "ddim_learned"):
        options = {"v": 0.5}  # a fixed interpolation between beta_tilde and beta
    x, _ = sdekit.sample(
        gm.score_fn(sde),
        sde,
        (4000, 1),
        method=method,
        steps=60,
        denoise_final=False,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
        **options,
    )
    t = torch.tensor([sde.t_min], dtype=torch.float64)
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    std = math.sqrt(alpha**2 * 0.16 + sigma**2)
    # 4000 draws: the sample mean and std are within 0.03 at 5 standard errors
    assert abs(float(x.mean()) - 0.5 * alpha) < 0.035
    assert abs(float(x.std()) - std) < 0.03


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "values, match",
    [
        ([0.9, 0.95, 0.5], "strictly decreasing"),
        ([0.9, 0.9, 0.5], "strictly decreasing"),
        ([1.0, 0.9, 0.5], r"lie in \(0, 1\)"),
        ([0.9, 0.5, 0.0], r"alphas_cumprod\[2\] = 0.0"),
        ([0.9, math.nan], r"lie in \(0, 1\)"),
        ([0.9], "at least 2"),
        ([[0.9, 0.5]], "1D"),
    ],
)
def test_bad_alphas_cumprod_raise(values, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVPSDE(torch.tensor(values, dtype=torch.float64))


def test_bad_constructors_raise():
    with pytest.raises(ValueError, match="betas must be"):
        DiscreteVPSDE.from_betas([0.1, 1.0])
    with pytest.raises(ValueError, match="num_timesteps must be"):
        DiscreteVPSDE.from_sde(sdekit.VPSDE(), 1)
    with pytest.raises(ValueError, match="LinearSDE"):
        DiscreteVPSDE.from_sde(object())

    class Scheduler:  # a config that does not match its schedule
        alphas_cumprod = torch.linspace(0.99, 0.01, 10)
        config = type("Config", (), {"num_train_timesteps": 1000})()

    with pytest.raises(ValueError, match="num_train_timesteps = 1000 does not match the 10"):
        DiscreteVPSDE.from_scheduler(Scheduler())
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiscreteVPSDE.from_scheduler(object())
