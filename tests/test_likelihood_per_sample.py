"""log_likelihood(method="dopri5_per_sample"): sdekit's own Dormand-Prince with a step per sample.

The oracles are the analytic Gaussian-mixture density (exact score, exact p_T as prior) and a
Gaussian whose score is plain tensor arithmetic, so that every host read in the solve is the
solver's own and can be counted.
"""

import math

import pytest
import torch
from host_reads import HostReads, count_cuda_syncs

import sdekit
from sdekit.likelihood import log_likelihood

F64 = torch.float64
METHOD = "dopri5_per_sample"
GM1 = sdekit.GaussianMixture([0.25, 0.75], [-1.5, 1.0], [0.3, 0.5])
GM2 = sdekit.GaussianMixture([0.3, 0.7], [[-2.0, 1.0], [1.5, -0.5]], [[0.5, 0.8], [0.7, 0.3]])


def exact_prior(gm, sde):
    return lambda x: gm.log_prob(x, sde.T, sde)


def data(gm, n, seed=0):
    return gm.sample(n, generator=torch.Generator().manual_seed(seed))


class Gaussian:
    """N(mu, s^2 I) data: under a linear SDE p_t = N(alpha mu, alpha^2 s^2 + sigma^2), in closed form
    without any check that reads a value (so the host reads counted are the solver's)."""

    def __init__(self, sde, mu=0.7, s=0.4):
        self.sde, self.mu, self.s = sde, mu, s

    def variance(self, t):
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        return alpha, (alpha * self.s) ** 2 + sigma**2

    def score(self, x, t):
        alpha, var = self.variance(t)
        return (alpha[:, None] * self.mu - x) / var[:, None]

    def log_prob(self, x, t):
        alpha, var = self.variance(t)
        d = x.shape[1]
        sq = ((x - alpha[:, None] * self.mu) ** 2).sum(1)
        return -0.5 * (sq / var + d * torch.log(2 * math.pi * var))


@pytest.mark.parametrize("gm", [GM1, GM2], ids=["1d", "2d"])
def test_matches_the_analytic_density(gm):
    sde = sdekit.VPSDE()
    x = data(gm, 64)
    log_p, info = log_likelihood(  # the default method
        gm.score_fn(sde), sde, x, t_min=0.0, prior_log_prob=exact_prior(gm, sde)
    )
    assert (log_p - gm.log_prob(x)).abs().max() < 1e-3
    assert info.steps.shape == (64,) and info.steps.dtype == torch.int64
    torch.testing.assert_close(log_p, info.prior_log_prob + info.divergence_integral)
    # the default tolerance 1e-5 per sample: a tighter one is more accurate
    tight, _ = log_likelihood(
        gm.score_fn(sde),
        sde,
        x,
        t_min=0.0,
        method=METHOD,
        rtol=1e-8,
        atol=1e-8,
        prior_log_prob=exact_prior(gm, sde),
    )
    assert (tight - gm.log_prob(x)).abs().max() < 1e-6


def test_agrees_with_the_torchdiffeq_solve_on_ve_from_t_min():
    sde = sdekit.VESDE()
    x = data(GM2, 32, seed=1)
    kwargs = dict(prior_log_prob=exact_prior(GM2, sde), rtol=1e-6, atol=1e-6)
    ours, _ = log_likelihood(GM2.score_fn(sde), sde, x, method=METHOD, **kwargs)
    theirs, _ = log_likelihood(GM2.score_fn(sde), sde, x, method="dopri5", **kwargs)
    assert (ours - GM2.log_prob(x, sde.t_min, sde)).abs().max() < 1e-4
    assert (ours - theirs).abs().max() < 1e-4


def test_hutchinson_is_unbiased():
    # one Rademacher probe per sample, the same point repeated: the mean over the batch estimates
    # the exact log-density (the per-sample solver treats each copy as its own ODE)
    sde = sdekit.VPSDE()
    x = data(GM2, 1, seed=5).expand(800, 2).contiguous()
    log_p, _ = log_likelihood(
        GM2.score_fn(sde),
        sde,
        x,
        t_min=0.0,
        method=METHOD,
        divergence="hutchinson",
        rtol=1e-4,
        atol=1e-4,
        generator=torch.Generator().manual_seed(0),
        prior_log_prob=exact_prior(GM2, sde),
    )
    exact = GM2.log_prob(x[:1])
    spread = float(log_p.std())
    assert spread > 0.01  # the estimate is noisy, so the check below is not vacuous
    assert abs(float(log_p.mean() - exact)) < 4 * spread / math.sqrt(len(log_p))


def test_each_sample_takes_its_own_steps_and_ignores_the_rest_of_the_batch():
    # a point in the mixture's wide mode is easy, one between the narrow modes hard
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.05, 0.05])
    easy = torch.tensor([[6.0, 0.0]], dtype=F64)
    hard = torch.tensor([[0.02, 0.01]], dtype=F64)
    others = data(gm, 5, seed=3)

    def solve(x):
        return log_likelihood(
            gm.score_fn(sde), sde, x, t_min=0.0, method=METHOD, prior_log_prob=exact_prior(gm, sde)
        )

    (lp_easy, i_easy), (lp_hard, i_hard) = solve(easy), solve(hard)
    lp_all, i_all = solve(torch.cat([easy, hard, others]))
    assert int(i_easy.steps) * 2 < int(i_hard.steps)
    assert torch.equal(i_all.steps[:2], torch.cat([i_easy.steps, i_hard.steps]))
    assert torch.equal(lp_all[:2], torch.cat([lp_easy, lp_hard]))  # bitwise
    assert torch.equal(i_all.x_T[:2], torch.cat([i_easy.x_T, i_hard.x_T]))


@pytest.mark.parametrize("sde", [sdekit.VPSDE(), sdekit.VESDE()], ids=["vp", "ve"])
def test_every_model_call_is_inside_the_interval_and_counted(sde):
    seen = []

    def score(x, t):
        seen.append(t.clone())
        return GM2.score(x, t, sde)

    x = data(GM2, 16, seed=4) * 0.1  # centred data: the drift at T is nearly zero
    _, info = log_likelihood(score, sde, x, method=METHOD, rtol=1e-4, atol=1e-4)
    times = torch.cat(seen)
    assert float(times.min()) >= sde.t_min and float(times.max()) <= sde.T
    assert len(seen) == info.nfe
    assert (info.nfe - 2) % 6 == 0 and info.nfe >= 2 + 6 * int(info.steps.max())


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_the_solve_reads_the_host_once_per_check(divergence):
    sde = sdekit.VPSDE()
    gauss = Gaussian(sde)
    x = 0.7 + 0.4 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    reads = {}
    for tol in (1e-4, 1e-7):
        for k in (1, 3):
            with HostReads() as counter:
                log_p, info = log_likelihood(
                    gauss.score,
                    sde,
                    x,
                    t_min=0.0,
                    method=METHOD,
                    rtol=tol,
                    atol=tol,
                    check_every=k,
                    divergence=divergence,
                    prior_log_prob=lambda z: gauss.log_prob(z, torch.full((8,), sde.T, dtype=F64)),
                )
            iterations = (info.nfe - 2) // 6
            reads[tol, k] = counter.count - math.ceil(iterations / k)
            if divergence == "exact":
                assert (log_p - gauss.log_prob(x, torch.zeros(8, dtype=F64))).abs().max() < 10 * tol
    # what is left is the same few checks before and after the solve, whatever its length
    assert len(set(reads.values())) == 1 and reads[1e-4, 1] <= 6, reads


def test_non_finite_model_raises_naming_the_samples():
    sde = sdekit.VPSDE()

    def score(x, t):
        return torch.where(x[:, :1] > 3.0, torch.nan, GM1.score(x, t, sde))

    x = torch.tensor([[0.5], [5.0], [-1.0]], dtype=F64)
    with pytest.raises(FloatingPointError, match=r"log_likelihood: .*indices \[1\]"):
        log_likelihood(score, sde, x, method=METHOD)


def test_options_that_do_not_apply_raise():
    sde = sdekit.VPSDE()
    x = data(GM1, 4)
    with pytest.raises(ValueError, match="check_every applies to method='dopri5_per_sample'"):
        log_likelihood(GM1.score_fn(sde), sde, x, method="dopri5", check_every=4)
    with pytest.raises(ValueError, match="check_every must be an integer >= 1"):
        log_likelihood(GM1.score_fn(sde), sde, x, method=METHOD, check_every=0)
    with pytest.raises(ValueError, match="steps=4 needs a fixed-grid method"):
        log_likelihood(GM1.score_fn(sde), sde, x, method=METHOD, steps=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_likelihood_syncs_once_per_check_and_matches_the_cpu():
    sde = sdekit.VPSDE()
    x = data(GM2, 256, seed=6)

    def solve(x, tol, k):
        return log_likelihood(
            GM2.score_fn(sde),
            sde,
            x,
            t_min=0.0,
            rtol=tol,
            atol=tol,
            check_every=k,
            prior_log_prob=exact_prior(GM2, sde),
        )

    left = {}
    for tol in (1e-4, 1e-6):
        for k in (1, 4):
            (log_p, info), syncs = count_cuda_syncs(lambda: solve(x.cuda(), tol, k))  # noqa: B023
            left[tol, k] = syncs - math.ceil((info.nfe - 2) // 6 / k)
    assert log_p.device.type == "cuda"
    torch.testing.assert_close(log_p.cpu(), solve(x, 1e-6, 4)[0], rtol=0, atol=1e-9)
    assert (log_p.cpu() - GM2.log_prob(x)).abs().max() < 1e-4
    # the same few syncs before and after the solve, whatever its length
    assert len(set(left.values())) == 1 and left[1e-4, 1] <= 8, left
