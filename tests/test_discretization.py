"""DDPM and SMLD: the schedules and steps the VP and VE SDEs discretize to, to the number."""

from __future__ import annotations

import math

import pytest
import torch

from sdekit.discretization import (
    DDPMSchedule,
    ddpm_ancestral_step,
    ddpm_step,
    smld_ancestral_step,
)
from sdekit.linear import VESDE, VPSDE
from sdekit.metrics import w1_to_mixture
from sdekit.mixture import GaussianMixture

ULP = torch.finfo(torch.float64).eps


def test_linear_vp_is_ddpm_schedule():
    """Ho et al. 2020, §4: betas = linspace(1e-4, 0.02, 1000); equal up to 2 ulp of rounding."""
    schedule = DDPMSchedule.from_sde(VPSDE(0.1, 20.0), 1000)
    ho = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert schedule.betas.dtype == torch.float64 and len(schedule) == 1000
    assert float(((schedule.betas - ho).abs() / ho).max()) <= 2 * ULP
    assert torch.equal(schedule.alphas, 1 - schedule.betas)
    assert torch.equal(schedule.alpha_bars, torch.cumprod(1 - schedule.betas, 0))


def test_linear_vp_alpha_bar_is_continuous_alpha_squared():
    """The chain's alpha_bar_i approximates the SDE's alpha(t)^2 at t = (i + 1)/N to O(1/N)."""
    vp = VPSDE()
    schedule = DDPMSchedule.from_sde(vp, 1000)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    # measured 8e-4; shifting the betas by one index or dropping T/N would give > 5e-3
    assert float((schedule.alpha_bars - vp.alpha(t) ** 2).abs().max()) < 1.5e-3


def _improved_ddpm_betas(n: int) -> list[float]:
    """Nichol & Dhariwal 2021, eq. 17 and §3.2, written out anew (s = 0.008, clip at 0.999)."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]


def test_cosine_vp_is_improved_ddpm():
    schedule = DDPMSchedule.from_sde(VPSDE.cosine(), 1000)
    betas = torch.tensor(_improved_ddpm_betas(1000), dtype=torch.float64)
    torch.testing.assert_close(schedule.betas, betas, rtol=1e-12, atol=4 * ULP)
    assert float(schedule.betas[-1]) == 0.999  # the clip is active at the last step
    alpha_bars = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(schedule.alpha_bars, alpha_bars, rtol=1e-11, atol=1e-300)
    # unclipped, the product telescopes: alpha_bar_i = f((i+1)/N) / f(0) = alpha(t)^2 of the SDE
    vp = VPSDE.cosine()
    t = torch.arange(1, 995, dtype=torch.float64) / 1000
    torch.testing.assert_close(schedule.alpha_bars[:994], vp.alpha(t) ** 2, rtol=1e-10, atol=0)


def test_smld_sigmas_geometric():
    ve = VESDE(0.01, 50.0)
    sigmas = ve.smld_sigmas(10)
    ratio = (50.0 / 0.01) ** (1 / 9)
    expected = torch.tensor([0.01 * ratio**i for i in range(10)], dtype=torch.float64)
    torch.testing.assert_close(sigmas, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(
        sigmas[1:] / sigmas[:-1], torch.full((9,), ratio, dtype=torch.float64)
    )
    # the levels are the SDE's sigma(t) on a uniform time grid
    torch.testing.assert_close(sigmas, ve.sigma(torch.linspace(0, 1, 10, dtype=torch.float64)))


def test_ddpm_ancestral_step_is_algorithm_2_to_the_number():
    """Ho et al. 2020, Alg. 2 with sigma_t^2 = beta_t, at 0-based level i = 499 of
    linspace(1e-4, 0.02, 1000):
    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z.
    """
    i = 499
    beta = 1e-4 + i * (0.02 - 1e-4) / 999
    alpha_bar = math.prod(1 - (1e-4 + j * (0.02 - 1e-4) / 999) for j in range(i + 1))
    x_t, eps, z = 0.3, -1.2, 0.7
    x_prev = (x_t - beta / math.sqrt(1 - alpha_bar) * eps) / math.sqrt(1 - beta) + math.sqrt(
        beta
    ) * z

    schedule = DDPMSchedule.from_sde(VPSDE(0.1, 20.0), 1000)
    x = torch.tensor([[x_t]], dtype=torch.float64)
    idx = torch.tensor([i])
    noise = torch.tensor([[z]], dtype=torch.float64)
    score = torch.tensor([[-eps / math.sqrt(1 - alpha_bar)]], dtype=torch.float64)
    got_score = ddpm_ancestral_step(schedule, x, score, idx, noise)
    got_eps = ddpm_step(schedule, x, torch.tensor([[eps]], dtype=torch.float64), idx, noise)
    assert float(got_score) == pytest.approx(x_prev, rel=1e-13)
    assert float(got_eps) == pytest.approx(x_prev, rel=1e-13)


def test_ddpm_steps_per_sample_levels_and_no_noise_at_zero():
    schedule = DDPMSchedule.from_sde(VPSDE(), 100)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 2, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 2, 2, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, 2, 2, 2, generator=gen, dtype=torch.float64)
    idx = torch.tensor([0, 50, 99])
    beta = schedule.betas[idx][:, None, None, None]
    abar = schedule.alpha_bars[idx][:, None, None, None]
    keep = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)[:, None, None, None]
    expected = (x - beta / torch.sqrt(1 - abar) * eps) / torch.sqrt(1 - beta)
    expected = expected + keep * beta.sqrt() * noise
    torch.testing.assert_close(ddpm_step(schedule, x, eps, idx, noise), expected)
    score = -eps / torch.sqrt(1 - abar)
    torch.testing.assert_close(ddpm_ancestral_step(schedule, x, score, idx, noise), expected)


def test_smld_ancestral_step_formula():
    """Song et al. 2021, eq. 47 (VE): x_{i-1} = x_i + (s_i^2 - s_{i-1}^2) score
    + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z, and s_{-1} = 0 (no noise at the last step)."""
    sigmas = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)
    x = torch.tensor([[0.5], [-2.0], [3.0]], dtype=torch.float64)
    score = torch.tensor([[1.5], [0.25], [-0.125]], dtype=torch.float64)
    z = torch.tensor([[0.3], [-0.4], [1.1]], dtype=torch.float64)
    idx = torch.tensor([0, 2, 3])
    expected = [
        0.5 + 0.01**2 * 1.5,
        -2.0 + (1.0 - 0.01) * 0.25 + math.sqrt(0.01 * (1.0 - 0.01) / 1.0) * -0.4,
        3.0 + (100.0 - 1.0) * -0.125 + math.sqrt(1.0 * (100.0 - 1.0) / 100.0) * 1.1,
    ]
    got = smld_ancestral_step(sigmas, x, score, idx, z)
    torch.testing.assert_close(got[:, 0], torch.tensor(expected, dtype=torch.float64))


def test_ddpm_ancestral_chain_samples_the_data():
    """1000 ancestral steps with the exact VP score at t = (i + 1)/N carry N(0, 1) to a 1D mixture.

    W1 to p_0 at n = 10,000: the Monte-Carlo floor of n exact samples is 0.01-0.04 (mean ~0.02 over
    seeds), the chain measured 0.008-0.03; the bound is 3x the mean floor. A wrong step (a missing
    1/sqrt(alpha_i), a wrong noise scale) gives W1 > 0.1."""
    gm = GaussianMixture([0.3, 0.7], [-1.5, 1.0], [0.3, 0.5])
    vp, n = VPSDE(), 10_000
    schedule = DDPMSchedule.from_sde(vp, 1000)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    for i in reversed(range(1000)):
        t = torch.full((n,), (i + 1) / 1000, dtype=torch.float64)
        idx = torch.full((n,), i)
        noise = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        x = ddpm_ancestral_step(schedule, x, gm.score(x, t, vp), idx, noise)
    assert w1_to_mixture(x, gm) < 0.06


def test_bad_input():
    with pytest.raises(ValueError, match="sde must be a VPSDE"):
        DDPMSchedule.from_sde(VESDE(), 100)
    with pytest.raises(ValueError, match="N must be >= 2"):
        DDPMSchedule.from_sde(VPSDE(), 1)
