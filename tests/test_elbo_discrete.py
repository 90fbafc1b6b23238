"""DDPM's variational bound against closed forms on Gaussian data, where the optimal denoiser is linear.

Every term is an expectation over the chain's noise; the package draws it once per term, so the
comparisons are of means over many draws, within a few standard errors, against the closed forms of
``gaussian_chain`` (derived from Ho et al.'s posterior and model means, not the package's noise form).
"""

import math

import numpy as np
import pytest
import torch
from conftest import linear_sdes
from gaussian_chain import GaussianChain, OracleVariance, continuous_bound, eps_oracle
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import ndtr

import sdekit
from sdekit.elbo import (
    LearnedVariance,
    SecondMomentSampler,
    ddpm_bound,
    ddpm_term,
    discretized_gaussian_log_likelihood,
    level_times,
    marginal_schedule,
)
from sdekit.likelihood import log_likelihood

MU, S = [0.3, -0.5], [0.5, 0.8]
GM = sdekit.GaussianMixture([1.0], [MU], [S])


def logsnr_schedule(sde, N):
    """N levels uniform in log-SNR over the SDE's [t_min, T] (the last one at T exactly)."""
    lam = sde.log_snr(torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
    times = sde.log_snr_inverse(
        torch.linspace(float(lam[0]), float(lam[1]), N, dtype=torch.float64)
    )
    times[0], times[-1] = sde.t_min, sde.T
    return marginal_schedule(sde, times)


def repeated(x0, n):
    return torch.as_tensor(x0, dtype=torch.float64)[None].repeat(n, 1)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde", "learned"])
@pytest.mark.parametrize("sde", [sdekit.VPSDE(), sdekit.VESDE()], ids=["vp", "ve"])
def test_every_term_matches_the_closed_form_on_gaussian_data(sde, variance):
    schedule = logsnr_schedule(sde, 12)
    chain = GaussianChain(MU, S, schedule.betas)
    if variance == "learned":
        v = chain.learned_v()
        model = LearnedVariance(
            OracleVariance(GM, sde, level_times(schedule, sde), v), schedule, sde
        )
        var = chain.variances("optimal")
    else:
        model, var = eps_oracle(GM, sde), chain.variances(variance)
    x0 = [0.1, -1.2]
    n = 4000
    b = ddpm_bound(
        model,
        sde,
        repeated(x0, n),
        schedule,
        variance=variance,
        generator=torch.Generator().manual_seed(0),
    )
    expected = chain.expected_terms(x0, var)
    torch.testing.assert_close(b.prior, chain.prior(x0).expand(n), rtol=1e-12, atol=1e-12)
    z = (b.terms.mean(0) - expected) / (b.terms.std(0) / math.sqrt(n))
    assert z.abs().max() < 4.5, z
    total_se = float(b.total.std()) / math.sqrt(n)
    assert abs(float(b.total.mean()) - float(chain.bound(x0, var))) < 4 * total_se
    torch.testing.assert_close(b.bpd, b.total / (2 * math.log(2)))


def test_the_kl_term_given_the_draw_is_ho_et_al_eq_7_against_eq_11():
    # a generic (untrained) network under sub-VP, whose inputs the chain must rescale: the package's
    # noise-error form against the two means written out, for one draw
    sde = sdekit.SubVPSDE()
    torch.manual_seed(0)
    net = sdekit.networks.MLP(2, 32, 2).double()
    schedule = sdekit.DDPMSchedule.from_sde(sdekit.VPSDE(), 40)
    x0 = GM.sample(16, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    chain = GaussianChain(MU, S, schedule.betas)
    times = level_times(schedule, sde)
    for i in (1, 7, 39):
        ab, ab_prev, b = chain.ab[i], chain.ab_prev[i], chain.b[i]
        x_i = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        t = times[i].expand(16)
        alpha, sigma = sde.marginal(t)
        x_in = x_i * sigma[0] / (1 - ab).sqrt()  # sub-VP's marginal at equal log-SNR
        with torch.no_grad():
            eps_hat = net(x_in, t)
        mu_tilde = (ab_prev.sqrt() * b / (1 - ab)) * x0 + (
            (1 - b).sqrt() * (1 - ab_prev) / (1 - ab)
        ) * x_i
        mu_theta = (x_i - b / (1 - ab).sqrt() * eps_hat) / (1 - b).sqrt()
        for variance, var in (("beta", b), ("beta_tilde", chain.bt[i])):
            kl = 0.5 * (
                torch.log(var / chain.bt[i])
                + chain.bt[i] / var
                - 1
                + (mu_tilde - mu_theta) ** 2 / var
            )
            got = ddpm_term(net, sde, x0, schedule, i, noise, variance=variance)
            torch.testing.assert_close(got, kl.sum(1), rtol=1e-9, atol=1e-12)


def test_the_decoder_term_is_the_discretized_gaussian_of_the_denoised_mean():
    sde, levels = sdekit.VPSDE(), 17
    schedule = sdekit.DDPMSchedule.from_sde(sde, 100)
    pixels = torch.randint(0, levels, (64, 2), generator=torch.Generator().manual_seed(0))
    pixels[:4] = torch.tensor([[0, 16], [16, 0], [8, 8], [0, 0]])  # both edge bins
    x0 = 2 * pixels.double() / (levels - 1) - 1
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = eps_oracle(GM, sde)
    chain = GaussianChain(MU, S, schedule.betas)
    ab = chain.ab[0]
    x_1 = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    t = level_times(schedule, sde)[0].expand(64)
    mean = (x_1 - (1 - ab).sqrt() * model(x_1, t)) / ab.sqrt()
    std = chain.bt_clip[0].sqrt()
    half = 1 / (levels - 1)
    a = ((x0 - half - mean) / std).numpy()
    b = ((x0 + half - mean) / std).numpy()
    a[pixels.numpy() == 0], b[pixels.numpy() == levels - 1] = -np.inf, np.inf
    # scipy's normal CDF, from the nearer tail (no cancellation between two values near 1)
    p = np.where(a > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))
    expected = -torch.from_numpy(np.log(p)).sum(1)
    # float64 pixels: the model is called in float64 (integer or float32 pixels: float32)
    got = ddpm_term(model, sde, pixels.double(), schedule, 0, noise, levels=levels)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    mean=st.floats(-3.0, 3.0),
    log_std=st.floats(-9.0, 1.0),
    levels=st.sampled_from([2, 3, 17, 256]),
)
def test_discretized_decoder_is_a_distribution_over_the_levels(mean, log_std, levels):
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    m = torch.full_like(grid, mean)
    log_p = discretized_gaussian_log_likelihood(
        grid, m, torch.full_like(grid, 2 * log_std), levels=levels
    )
    assert bool(torch.isfinite(log_p).all())
    assert abs(float(torch.logsumexp(log_p, 0))) < 1e-9


def test_discretized_decoder_is_accurate_in_both_tails():
    # far in the tails Phi(b) - Phi(a) rounds to 0 or cancels; the erfc form is the reference
    x = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    mean = torch.tensor([-0.5, 0.5, -0.2], dtype=torch.float64)
    log_var = torch.full_like(x, 2 * math.log(0.02))
    got = discretized_gaussian_log_likelihood(x, mean, log_var, levels=256)
    half, std = 1 / 255, 0.02
    a, b = (x - half - mean) / std, (x + half - mean) / std
    upper_tail = 0.5 * (torch.special.erfc(a / math.sqrt(2)) - torch.special.erfc(b / math.sqrt(2)))
    lower_tail = 0.5 * (
        torch.special.erfc(-b / math.sqrt(2)) - torch.special.erfc(-a / math.sqrt(2))
    )
    expected = torch.log(torch.where(a > 0, upper_tail, lower_tail))
    assert bool(torch.isfinite(got).all()) and float(got.max()) < -250
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)


def test_fine_bins_give_the_density_times_the_bin_width():
    levels = 2**16
    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64)
    mean, log_var = torch.full_like(x, 0.1), torch.full_like(x, math.log(0.09))
    got = discretized_gaussian_log_likelihood(x, mean, log_var, levels=levels)
    density = -0.5 * math.log(2 * math.pi * 0.09) - (x - 0.1) ** 2 / (2 * 0.09)
    torch.testing.assert_close(got, density + math.log(2 / (levels - 1)), rtol=0, atol=1e-8)


def test_beta_and_beta_tilde_bracket_the_optimal_variance():
    sde = sdekit.VPSDE()
    for s, inside in (([0.05, 0.9], True), ([1.5, 2.0], False)):
        chain = GaussianChain(MU, s, logsnr_schedule(sde, 30).betas)
        opt = chain.optimal_variance()
        # the minimiser of the data-averaged KL, beta_tilde + E|mu_tilde - mu_theta|^2, is the
        # exact reverse kernel's variance Var(x_{i-1} | x_i): two derivations agree
        k, Q, r = chain.mean_gap()
        mu, s2 = torch.tensor(MU, dtype=torch.float64), torch.tensor(s, dtype=torch.float64) ** 2
        minimiser = chain.bt[:, None] + (k * mu - Q) ** 2 + k**2 * s2 + r
        torch.testing.assert_close(minimiser[1:], opt[1:], rtol=1e-10, atol=0)
        lo, hi = chain.bt[1:, None], chain.b[1:, None]
        in_bracket = bool(((opt[1:] >= lo * (1 - 1e-12)) & (opt[1:] <= hi * (1 + 1e-12))).all())
        assert in_bracket == inside  # data wider than N(0, I) needs more than beta: v > 1
        v = chain.learned_v()[1:]
        assert bool(((v >= 0) & (v <= 1)).all()) == inside


def test_level_times_invert_marginal_schedule_for_every_linear_sde():
    for name, sde in linear_sdes().items():
        times = torch.linspace(max(sde.t_min, 1e-3 * sde.T), sde.T, 25, dtype=torch.float64)
        got = level_times(marginal_schedule(sde, times), sde)
        torch.testing.assert_close(got, times, rtol=1e-6, atol=1e-9, msg=name)


def test_exact_reverse_kernels_give_the_data_log_likelihood_up_to_the_prior_mismatch():
    # with the exact eps and the exact reverse variance (the learned v of the oracle) the chain's
    # reverse kernels are q's own, so -ELBO(x0) = -log q(x0) + E_q(x_N|x0)[log q_N / N(0, I)]; the
    # probability-flow ODE of the exact score from t = 0 gives -log q(x0) + [log q_T / N](x_T)
    sde = sdekit.VPSDE()
    schedule = logsnr_schedule(sde, 16)
    chain = GaussianChain(MU, S, schedule.betas)
    oracle = OracleVariance(GM, sde, level_times(schedule, sde), chain.learned_v())
    model = LearnedVariance(oracle, schedule, sde)
    x0 = GM.sample(3000, generator=torch.Generator().manual_seed(0))
    b = ddpm_bound(
        model, sde, x0, schedule, variance="learned", generator=torch.Generator().manual_seed(1)
    )
    predicted = -chain.log_q(x0) + chain.prior_mismatch(x0)
    diff = b.total - predicted
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(x0))
    # the chain model's own likelihood: the bound is below it, for every x0
    var = chain.optimal_variance()
    for point in x0[:20]:
        assert (
            float(chain.bound(point, var)) >= -float(chain.model_log_likelihood(point, var)) - 1e-9
        )
    # against the ODE, sample by sample
    log_p, info = log_likelihood(GM.score_fn(sde), sde, x0[:400], t_min=0.0, rtol=1e-6, atol=1e-6)
    q_T = GM.at(sde.T, sde)
    ode_mismatch = q_T.log_prob(info.x_T) - sde.prior_log_prob(info.x_T)
    torch.testing.assert_close(-log_p, -chain.log_q(x0[:400]) + ode_mismatch, rtol=0, atol=2e-4)
    gap = b.total[:400] - (-log_p) - (chain.prior_mismatch(x0[:400]) - ode_mismatch)
    assert abs(float(gap.mean())) < 4 * float(gap.std()) / math.sqrt(400)
    # fixed variances pay the predicted variance mismatch on top, on average over the data
    for variance in ("beta", "beta_tilde"):
        fixed = ddpm_bound(
            eps_oracle(GM, sde),
            sde,
            x0,
            schedule,
            variance=variance,
            generator=torch.Generator().manual_seed(1),
        )
        excess = fixed.total - b.total
        opt, fv = chain.optimal_variance(), chain.variances(variance)
        # E_x0 of each term's excess: 1/2 [log(var/opt) + opt/var - 1], since beta_tilde +
        # E|mu_tilde - mu_theta|^2 averages to opt (and E(x0 - mu_theta)^2 to opt at the decoder)
        kl_excess = 0.5 * (torch.log(fv / opt) + opt / fv - 1)
        predicted_excess = float(kl_excess.sum())
        se = float(excess.std()) / math.sqrt(len(x0))
        assert abs(float(excess.mean()) - predicted_excess) < 4 * se + 1e-3 * predicted_excess


def test_monte_carlo_estimates_are_unbiased_against_the_exact_sum():
    # one million draws of one term each: a bias above ~2.5% of the bound would show
    sde = sdekit.VPSDE()
    schedule = logsnr_schedule(sde, 20)
    chain = GaussianChain(MU, S, schedule.betas)
    model = eps_oracle(GM, sde)
    x0 = [0.6, 0.1]
    exact = float(chain.bound(x0, chain.variances("beta_tilde")))
    n, k = 50000, 20
    g = torch.Generator().manual_seed(0)
    uniform = ddpm_bound(model, sde, repeated(x0, n), schedule, samples=k, generator=g)
    assert uniform.nfe == k and uniform.levels.shape == (n, k)
    torch.testing.assert_close(uniform.probs, torch.full((n, k), 1 / 20, dtype=torch.float64))
    sampler = SecondMomentSampler(20)
    ddpm_bound(model, sde, repeated(x0, 500), schedule, samples=2, sampler=sampler, generator=g)
    p = sampler.probs().clone()
    assert float(p.std()) > 0  # warmed up: no longer uniform
    importance = ddpm_bound(
        model, sde, repeated(x0, n), schedule, samples=k, sampler=sampler, generator=g
    )
    # the first draw's probabilities are those of the proposal it was drawn from
    torch.testing.assert_close(importance.probs[:, 0], p[importance.levels[:, 0]])
    for est in (uniform, importance):
        se = float(est.total.std()) / math.sqrt(n)
        assert abs(float(est.total.mean()) - exact) < 4 * se < 0.03 * exact
        torch.testing.assert_close(est.total, est.prior + (est.terms / est.probs).mean(1))

    # the point of importance sampling: a smaller variance (the big early terms drawn often)
    def one_draw(est):
        return float((est.terms[:, 0] / est.probs[:, 0]).std())

    assert one_draw(importance) < 0.75 * one_draw(uniform)


def test_discrete_bound_converges_to_the_continuous_one():
    # the KL sum with beta_tilde (VDM's discrete-time model) tends to the diffusion term of
    # the continuous bound like 1/N on a grid uniform in log-SNR; prior terms are the same at T
    sde = sdekit.VPSDE()
    model = eps_oracle(GM, sde)
    x0 = GM.sample(2000, generator=torch.Generator().manual_seed(0))
    prior, diffusion, _ = continuous_bound(MU, S, sde, x0)
    target = float((prior + diffusion).mean())
    gaps = []
    for N in (8, 32, 128):
        b = ddpm_bound(
            model, sde, x0, logsnr_schedule(sde, N), generator=torch.Generator().manual_seed(2)
        )
        torch.testing.assert_close(b.prior, prior)
        gaps.append(float((b.prior + b.kl.sum(1)).mean()) - target)
    se = float((b.prior + b.kl.sum(1)).std()) / math.sqrt(len(x0))
    assert gaps[0] > gaps[1] > gaps[2] > 4 * se
    assert 2.5 < gaps[1] / gaps[2] < 8  # first order in 1/N (4x the steps)
    assert gaps[2] < 0.1 * gaps[0]


def test_levels_beyond_the_horizon_cost_nothing_measurable():
    # the linear schedule (here on 250 levels) ends slightly noisier than the VP SDE's T = 1; those
    # levels are evaluated at T, which changes the bound by far less than its Monte-Carlo error
    schedule = sdekit.DDPMSchedule.from_sde(sdekit.VPSDE(), 250)
    x0 = GM.sample(16, generator=torch.Generator().manual_seed(0))
    totals = []
    for T in (1.0, 1.05):
        sde = sdekit.VPSDE(T=T)
        times = level_times(schedule, sde)
        assert bool((times[1:] >= times[:-1]).all())
        if T == 1.0:
            assert int((times == 1.0).sum()) > 1
        b = ddpm_bound(
            eps_oracle(GM, sde), sde, x0, schedule, generator=torch.Generator().manual_seed(1)
        )
        totals.append(b.total)
    assert float((totals[0] - totals[1]).abs().max()) < 1e-3


def test_second_moment_sampler_keeps_the_last_ten_values_of_each_level():
    N, H = 5, 10
    sampler = SecondMomentSampler(N, history=H, uniform_prob=0.01)
    reference = [[] for _ in range(N)]
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        i = torch.randint(0, N, (7,), generator=g)
        if step < 3:
            i[:] = 2  # one level many times in a batch: only its last ten count
        values = torch.rand(7, generator=g, dtype=torch.float64) * (1 + i)
        if not all(len(r) == H for r in reference):
            torch.testing.assert_close(
                sampler.probs(), torch.full((N,), 1 / N, dtype=torch.float64)
            )
        sampler.update(i, values)
        for a, v in zip(i.tolist(), values.tolist(), strict=True):
            reference[a] = (reference[a] + [v])[-H:]
        if all(len(r) == H for r in reference):
            w = torch.tensor([math.sqrt(sum(v * v for v in r) / H) for r in reference])
            p = 0.99 * w / w.sum() + 0.01 / N
            torch.testing.assert_close(sampler.probs(), p.double())
    assert all(len(r) == H for r in reference)
    levels, probs = sampler.sample(100000, generator=g)
    freq = torch.bincount(levels, minlength=N).double() / 100000
    torch.testing.assert_close(freq, sampler.probs(), rtol=0, atol=0.01)
    torch.testing.assert_close(probs, sampler.probs()[levels])


def test_bad_input_raises_naming_the_argument():
    sde = sdekit.VPSDE()
    schedule = sdekit.DDPMSchedule.from_sde(sde, 50)
    model = eps_oracle(GM, sde)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"integer pixel values in \[0, 255\]"):
        ddpm_bound(model, sde, torch.full((4, 2), 256.0), schedule, levels=256)
    with pytest.raises(ValueError, match="integer pixel values"):
        ddpm_bound(model, sde, torch.full((4, 2), 3.5), schedule, levels=17)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        ddpm_bound(model, sde, torch.full((4, 2), -1.0), schedule, levels=17)
    with pytest.raises(ValueError, match="levels must be"):
        ddpm_bound(model, sde, x, schedule, levels=1)
    with pytest.raises(ValueError, match="NaN"):
        ddpm_bound(model, sde, torch.full((4, 2), math.nan), schedule)
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm_bound(model, sde, x, schedule, variance="fixedlarge")
    with pytest.raises(ValueError, match="LearnedVariance"):
        ddpm_bound(model, sde, x, schedule, variance="learned")
    with pytest.raises(ValueError, match="samples must be"):
        ddpm_bound(model, sde, x, schedule, samples=0)
    with pytest.raises(ValueError, match="pass samples too"):
        ddpm_bound(model, sde, x, schedule, sampler=SecondMomentSampler(50))
    with pytest.raises(ValueError, match="sampler has N=10"):
        ddpm_bound(model, sde, x, schedule, samples=1, sampler=SecondMomentSampler(10))
    with pytest.raises(ValueError, match="level must"):
        ddpm_term(model, sde, x, schedule, 50, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="noise must be shaped like x"):
        ddpm_term(model, sde, x, schedule, 3, torch.zeros(4, 3))
    # schedules the model's SDE does not cover
    with pytest.raises(ValueError, match="least noisy level"):
        ddpm_bound(model, sdekit.VESDE(sigma_min=0.1), x, schedule)
    with pytest.raises(ValueError, match="not pure noise"):
        ddpm_bound(model, sdekit.VPSDE(beta_max=5.0), x, schedule)
    with pytest.raises(ValueError, match="DDPMSchedule"):
        ddpm_bound(model, sde, x, schedule.betas)
    with pytest.raises(ValueError, match="strictly increasing"):
        marginal_schedule(sde, torch.tensor([0.5, 0.2]))


def test_a_learned_variance_network_trained_on_another_chain_is_refused():
    sde = sdekit.VPSDE()
    schedule = sdekit.DDPMSchedule.from_sde(sde, 50)
    net = LearnedVariance(sdekit.networks.MLP(2, 16, 1, out_dim=4), schedule, sde)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="N = 60 levels.*trained on N = 50"):
        ddpm_bound(net, sde, x, sdekit.DDPMSchedule.from_sde(sde, 60), variance="learned")
    with pytest.raises(ValueError, match="other betas"):
        cosine = sdekit.DDPMSchedule.from_sde(sdekit.VPSDE.cosine(), 50)
        ddpm_bound(net, sde, x, cosine, variance="learned")
    with pytest.raises(ValueError, match="sde does not match"):
        ddpm_bound(net, sdekit.SubVPSDE(), x, schedule, variance="learned")
    b = ddpm_bound(net, sde, x, schedule, variance="learned", samples=3)
    assert b.nfe == 3 and bool(torch.isfinite(b.total).all())
