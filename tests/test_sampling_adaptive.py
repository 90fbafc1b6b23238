"""The adaptive reverse-SDE solver ("Gotta Go Fast") on Gaussians with exact scores."""

import math

import pytest
import torch

from sdekit import SDE, VESDE, VPSDE, GaussianMixture
from sdekit.sampling.adaptive import adaptive_sde
from sdekit.sampling.noise import NoiseSource
from sdekit.sampling.registry import get_sampler

MU, S, DIM = 0.5, 0.05, 16  # p_0 = N(MU, S^2 I) in 16 dimensions: narrow, so stiff near t = 0


def counted(score):
    calls = [0]

    def fn(x, t):
        calls[0] += 1
        return score(x, t)

    return fn, calls


def ends(sde) -> torch.Tensor:
    return torch.tensor([sde.T, sde.t_min], dtype=torch.float64)


def marginal_at_t_min(sde) -> tuple[float, float]:
    t = torch.tensor([sde.t_min], dtype=torch.float64)
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    return alpha * MU, math.sqrt(alpha**2 * S**2 + sigma**2)


def em_std_error(sde, steps: int) -> float:
    """Relative error of the output std of fixed-step Euler–Maruyama, exactly (affine recursion)."""
    ts = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=torch.float64)
    alpha_T, sigma_T = sde.alpha(ts[:1]), sde.sigma(ts[:1])
    var = alpha_T**2 * S**2 + sigma_T**2
    for k in range(steps):
        t, h = ts[k : k + 1], ts[k] - ts[k + 1]
        v_t = sde.alpha(t) ** 2 * S**2 + sde.sigma(t) ** 2
        # x <- x - h (f x + g^2 (x - alpha MU) / v_t) + sqrt(h) g z
        a = 1 - h * sde.f(t) - h * sde.g2(t) / v_t
        var = a**2 * var + h * sde.g2(t)
    return abs(float(var.sqrt()) / marginal_at_t_min(sde)[1] - 1)


def test_registered_with_its_contract():
    spec = get_sampler("Gotta Go Fast")
    assert spec.name == "adaptive_sde" and spec.fn is adaptive_sde
    assert spec.stochastic and not spec.needs_marginal and spec.evals_per_step is None


def test_right_marginal_with_far_fewer_evaluations_than_euler_maruyama():
    sde = VPSDE()
    gm = GaussianMixture([1.0], [[MU] * DIM], [S])
    score, calls = counted(gm.score_fn(sde))
    x = sde.prior_sample((1000, DIM), generator=torch.Generator().manual_seed(0))
    noise = NoiseSource(torch.Generator().manual_seed(1))
    out = adaptive_sde(score, sde, x, ends(sde), noise=noise).double()
    mean, std = marginal_at_t_min(sde)
    n = out.numel()
    assert abs(float(out.mean()) - mean) < 4 * std / math.sqrt(n)
    std_error = abs(float(out.var(0).mean().sqrt()) / std - 1)
    assert std_error < 0.015  # 2.7 standard errors of a std from 16,000 values
    nfe = calls[0]
    # Fixed-step EM needs 1600 steps (800 give 1.6 %) for that accuracy; adaptive about 330 NFE.
    em_steps = next(n for n in (100, 200, 400, 800, 1600, 3200) if em_std_error(sde, n) < 0.015)
    assert 3 * nfe < em_steps, (nfe, em_steps)


def test_evaluations_shrink_as_the_tolerance_loosens():
    sde = VESDE()
    gm = GaussianMixture([0.5, 0.5], [[-1.0] * 4, [1.0] * 4], [0.2, 0.2])
    x = sde.prior_sample((200, 4), generator=torch.Generator().manual_seed(0))
    nfes = []
    for eps_rel in (0.01, 0.05, 0.2):
        score, calls = counted(gm.score_fn(sde))
        noise = NoiseSource(torch.Generator().manual_seed(1))
        out = adaptive_sde(score, sde, x, ends(sde), noise=noise, eps_rel=eps_rel)
        assert bool(torch.isfinite(out).all())
        nfes.append(calls[0])
    assert nfes[0] > nfes[1] > nfes[2] and all(n % 2 == 0 for n in nfes), nfes


def test_a_sample_does_not_depend_on_its_batch():
    sde = VPSDE()
    gm = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [0.1, 0.3])
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(k):
        generators = [torch.Generator().manual_seed(i) for i in range(k)]
        noise = NoiseSource(generators)
        return adaptive_sde(gm.score_fn(sde), sde, x[:k], ends(sde), noise=noise)

    torch.testing.assert_close(run(4)[:2], run(2))


class StateDependentSDE(SDE):
    def drift(self, x, t):
        return -x

    def diffusion(self, x, t):
        return 1 + 0.1 * x**2


def test_bad_input_is_refused():
    sde = VPSDE()
    x, score = torch.zeros(4, 1), GaussianMixture([1.0], [MU], [S]).score_fn(sde)
    with pytest.raises(ValueError, match="diffusion independent of x"):
        adaptive_sde(lambda x, t: -x, StateDependentSDE(), x, ends(sde), noise=NoiseSource())
    with pytest.raises(ValueError, match="eps_rel"):
        adaptive_sde(score, sde, x, ends(sde), noise=NoiseSource(), eps_rel=0.0)
    with pytest.raises(ValueError, match="ts"):
        adaptive_sde(score, sde, x, ends(sde).flip(0), noise=NoiseSource())
    with pytest.raises(FloatingPointError, match="NaN"):
        adaptive_sde(lambda x, t: x / 0 * 0, sde, x, ends(sde), noise=NoiseSource())
    with pytest.raises(RuntimeError, match="max_iterations"):
        adaptive_sde(score, sde, x, ends(sde), noise=NoiseSource(), max_iterations=3)


def test_through_the_entry_point():
    from sdekit.sampling import sample

    sde = VPSDE()
    gm = GaussianMixture([1.0], [[MU] * 2], [0.3])
    model, calls = counted(gm.score_fn(sde))
    x, info = sample(model, sde, (64, 2), method="Gotta Go Fast", denoise_final=False)
    assert info.nfe == calls[0] and info.nfe % 2 == 0 and x.shape == (64, 2)
