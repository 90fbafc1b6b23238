"""Learned reverse variances: the network wrapper, the hybrid loss, and the samplers that use them."""

import math

import pytest
import torch
from gaussian_chain import GaussianChain, OracleVariance
from torch import nn

import sdekit
from sdekit.elbo import (
    HybridLoss,
    LearnedVariance,
    SecondMomentSampler,
    ddpm_term,
    level_times,
    marginal_schedule,
)
from sdekit.ema import EMA
from sdekit.networks import MLP, UNet

MU, S = [0.3, -0.5], [0.5, 0.8]
GM = sdekit.GaussianMixture([1.0], [MU], [S])
SDE = sdekit.VPSDE()


def logsnr_schedule(sde, N):
    lam = sde.log_snr(torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
    times = sde.log_snr_inverse(
        torch.linspace(float(lam[0]), float(lam[1]), N, dtype=torch.float64)
    )
    times[0], times[-1] = sde.t_min, sde.T
    return marginal_schedule(sde, times)


class ConstantV(nn.Module):
    """A network's eps output next to a constant v."""

    def __init__(self, eps_net, v):
        super().__init__()
        self.eps_net, self.v = eps_net, v

    def forward(self, x, t):
        eps = self.eps_net(x, t)
        return torch.cat([eps, torch.full_like(eps, self.v)], 1)


class Wrapper(nn.Module):
    """A module around a network (as DDP or an autocast wrapper is)."""

    def __init__(self, net):
        super().__init__()
        self.inner = net

    def forward(self, x, t):
        return self.inner(x, t)


def test_wrapper_returns_the_prediction_and_keeps_v_for_one_read():
    schedule = sdekit.DDPMSchedule.from_sde(SDE, 50)
    for net, x in (
        (MLP(3, 16, 1, out_dim=6), torch.randn(5, 3)),
        (UNet(2, 8, 8, (1, 2), 1, (), dropout=0.0, out_channels=4), torch.randn(5, 2, 8, 8)),
    ):
        model = LearnedVariance(net, schedule, SDE)
        t = torch.rand(5)
        pred, v = model.with_variance(x, t)
        assert pred.shape == v.shape == x.shape
        out = Wrapper(model)(x, t)
        torch.testing.assert_close(out, pred)
        from sdekit.elbo.learned import take_v

        torch.testing.assert_close(take_v(Wrapper(model), out), v)
        with pytest.raises(ValueError, match="no v from the latest call"):
            take_v(model, out)  # consumed: never read twice
    state = model.state_dict()
    assert "betas" in state and "times" in state
    torch.testing.assert_close(state["times"], level_times(schedule, SDE))
    copy = EMA(model).module  # a copy keeps the records
    torch.testing.assert_close(copy.betas, schedule.betas)
    with pytest.raises(ValueError, match="twice the data's channels"):
        LearnedVariance(MLP(3, 16, 1), schedule, SDE)(torch.randn(5, 3), t)


def test_hybrid_loss_is_l_simple_plus_lambda_n_times_the_term_in_bits():
    schedule = logsnr_schedule(SDE, 10)
    torch.manual_seed(0)
    model = LearnedVariance(MLP(2, 32, 2, out_dim=4).double(), schedule, SDE)
    x0 = GM.sample(128, generator=torch.Generator().manual_seed(1))
    warm = SecondMomentSampler(10)
    warm.update(
        torch.arange(10).repeat(10),
        torch.rand(100, dtype=torch.float64) + torch.arange(10).repeat(10),
    )
    for sampler in (None, warm):
        p = (
            torch.full((10,), 0.1, dtype=torch.float64)
            if sampler is None
            else sampler.probs().clone()
        )
        loss_fn = HybridLoss(SDE, schedule, lam=0.01, sampler=sampler)
        loss = loss_fn(model, x0, generator=torch.Generator().manual_seed(2))
        # the same draws by hand: the level, then the noise
        g = torch.Generator().manual_seed(2)
        if sampler is None:
            i = torch.randint(0, 10, (128,), generator=g)
        else:
            i = torch.multinomial(p, 128, replacement=True, generator=g)
            assert float(p.std()) > 0.01  # importance weights are not all 1
        weight = 1 / (10 * p[i])
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        ab = schedule.alpha_bars[i, None]
        x_i = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        with torch.no_grad():
            eps_hat = model(x_i, level_times(schedule, SDE)[i])
        simple = (noise - eps_hat).square().mean(1)
        term = ddpm_term(model, SDE, x0, schedule, i, noise, variance="learned")
        expected = (weight * (simple + 0.01 * 10 * term / (2 * math.log(2)))).mean()
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-10, atol=1e-12)


def test_hybrid_loss_trains_the_mean_by_l_simple_only():
    # the stop-gradient: the bound's term does not reach the mean's parameters
    schedule = logsnr_schedule(SDE, 10)
    torch.manual_seed(0)
    net = MLP(2, 32, 2, out_dim=4).double()
    model = LearnedVariance(net, schedule, SDE)
    x0 = GM.sample(64, generator=torch.Generator().manual_seed(1))
    grads = []
    for lam in (1e-9, 10.0):
        loss = HybridLoss(SDE, schedule, lam=lam)(
            model, x0, generator=torch.Generator().manual_seed(2)
        )
        (w,) = torch.autograd.grad(loss, net.out.weight)
        grads.append(w)
    # rows 0-1 make eps, rows 2-3 make v: the mean's gradient is the same for any lambda
    torch.testing.assert_close(grads[0][:2], grads[1][:2], rtol=1e-9, atol=1e-12)
    assert float((grads[1][2:] - grads[0][2:]).abs().max()) > 1e-3
    assert float(grads[0][2:].abs().max()) < 1e-6


def test_minimising_the_hybrid_loss_over_v_gives_the_exact_reverse_variance():
    # with the exact eps only v learns; the minimiser of the bound is the exact reverse kernel's
    # variance, which lies between beta_tilde and beta (the learned variance lands between them)
    schedule = logsnr_schedule(SDE, 8)
    chain = GaussianChain(MU, S, schedule.betas)
    oracle = OracleVariance(GM, SDE, level_times(schedule, SDE), torch.zeros(8, 2))
    model = LearnedVariance(oracle, schedule, SDE)
    loss_fn = HybridLoss(SDE, schedule)
    x0 = GM.sample(24000, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.LBFGS([oracle.v], max_iter=60, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x0, generator=torch.Generator().manual_seed(1))  # the same draws
        loss.backward()
        return loss

    opt.step(closure)
    v = oracle.v.detach()[1:]
    fitted = torch.exp(v * torch.log(chain.b[1:, None]) + (1 - v) * torch.log(chain.bt[1:, None]))
    torch.testing.assert_close(fitted, chain.optimal_variance()[1:], rtol=0.05, atol=0)
    # between beta_tilde and beta, up to the fit's sampling error (v* is near 1 at low noise)
    assert bool(((v > -0.05) & (v < 1.05)).all()), v
    assert float(v.min()) < 0.05 and float(v.max()) > 0.9  # the whole range is used


def test_hybrid_loss_refuses_what_it_cannot_train():
    schedule = sdekit.DDPMSchedule.from_sde(SDE, 40)
    x0 = torch.zeros(8, 2)
    with pytest.raises(ValueError, match="LearnedVariance"):
        HybridLoss(SDE, schedule)(MLP(2, 8, 1), x0)
    other = LearnedVariance(MLP(2, 8, 1, out_dim=4), sdekit.DDPMSchedule.from_sde(SDE, 30), SDE)
    with pytest.raises(ValueError, match="N = 40 levels.*trained on N = 30"):
        HybridLoss(SDE, schedule)(other, x0)
    model = LearnedVariance(MLP(2, 8, 1, out_dim=4), schedule, SDE)
    with pytest.raises(ValueError, match="pixel grid"):
        HybridLoss(SDE, schedule, levels=17)(model, x0 + 0.01)
    HybridLoss(SDE, schedule, levels=17)(model, x0)  # 0 is level 8 of 17: fine
    with pytest.raises(ValueError, match="lam must be"):
        HybridLoss(SDE, schedule, lam=0.0)
    with pytest.raises(ValueError, match="sampler has N=5"):
        HybridLoss(SDE, schedule, sampler=SecondMomentSampler(5))


def _sample(model, method, v_model=None, **kw):
    return sdekit.sample(
        model,
        SDE,
        (64, 2),
        method=method,
        prediction="eps",
        steps=12,
        grid="uniform",
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
        denoise_final=False,  # (by default only for stochastic methods, which DDIM is not)
        **({"v": v_model} if v_model is not None else {}),
        **kw,
    )[0]


def test_learned_samplers_reduce_to_the_fixed_ones_at_the_ends_of_the_interpolation():
    schedule = sdekit.DDPMSchedule.from_sde(SDE, 50)
    torch.manual_seed(0)
    net = MLP(2, 32, 2).double()
    for v, fixed, kw in (
        (1.0, "ancestral", {}),  # beta: DDPM's sigma^2 = beta
        (0.0, "ddim", {"eta": 1.0}),  # beta_tilde: DDIM with eta = 1
    ):
        model = LearnedVariance(ConstantV(net, v), schedule, SDE)
        with torch.no_grad():
            reference = _sample(net, fixed, **kw)
            torch.testing.assert_close(_sample(model, "ancestral_learned", model), reference)
            # a number v fixes the interpolation for every step, with any network
            torch.testing.assert_close(_sample(net, "ancestral_learned", v), reference)
            if v == 0.0:
                got = _sample(model, "ddim_learned", model)
                torch.testing.assert_close(got, _sample(net, "ddim", eta=1.0))
                got = _sample(model, "ddim_learned", model, eta=0.0)
                torch.testing.assert_close(got, _sample(net, "ddim", eta=0.0))


@pytest.mark.parametrize("variance", ["optimal", "beta_tilde", "beta"])
def test_ancestral_sampling_on_the_chain_has_the_predicted_law(variance):
    # the exact eps with a v per level on the chain's own levels: the output (DDPM's last mean) is
    # Gaussian with the moments of the linear-Gaussian recursion; only the optimal variance
    # reproduces the data's (up to the prior mismatch at T, e^-10)
    schedule = logsnr_schedule(SDE, 16)
    chain = GaussianChain(MU, S, schedule.betas)
    times = level_times(schedule, SDE)
    v = {"optimal": chain.learned_v(), "beta_tilde": torch.zeros(16, 2), "beta": torch.ones(16, 2)}
    model = LearnedVariance(OracleVariance(GM, SDE, times, v[variance]), schedule, SDE)
    n = 40000
    with torch.no_grad():
        x, info = sdekit.sample(
            model,
            SDE,
            (n, 2),
            method="ancestral_learned",
            prediction="eps",
            v=model,
            grid=times.flip(0),
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(0),
        )
    assert info.nfe == 16  # 15 steps and the final denoising, one call each
    var = chain.variances("optimal") if variance == "optimal" else chain.variances(variance)
    if variance == "beta":
        var = torch.cat([chain.b[:1, None].expand(1, 2), var[1:]])
    mean, w = chain.sample_moments(var)
    torch.testing.assert_close(
        x.mean(0), mean, rtol=0, atol=4 * float(w.max().sqrt()) / math.sqrt(n)
    )
    torch.testing.assert_close(x.var(0), w, rtol=4 * math.sqrt(2 / n), atol=0)
    if variance == "optimal":
        data_var = torch.tensor(S, dtype=torch.float64) ** 2
        torch.testing.assert_close(w, data_var - chain.optimal_variance()[0], rtol=1e-3, atol=0)
    else:
        assert float((w - torch.tensor(S) ** 2).abs().min()) > 0.01  # visibly wrong variance


def test_samplers_need_a_learned_variance_network():
    net = MLP(2, 8, 1)
    for method in ("ancestral_learned", "ddim_learned"):
        with pytest.raises(ValueError, match="LearnedVariance"):
            sdekit.sample(net, SDE, (4, 2), method=method, prediction="eps", v=net)
        with pytest.raises(TypeError, match="'v'"):
            sdekit.sample(net, SDE, (4, 2), method=method, prediction="eps")
        with pytest.raises(ValueError, match="v must be finite"):
            sdekit.sample(net, SDE, (4, 2), method=method, prediction="eps", v=math.nan)
        with pytest.raises(ValueError, match="v must be the LearnedVariance network"):
            sdekit.sample(net, SDE, (4, 2), method=method, prediction="eps", v="learned")
    model = LearnedVariance(MLP(2, 8, 1, out_dim=4), sdekit.DDPMSchedule.from_sde(SDE, 40), SDE)
    other = LearnedVariance(MLP(2, 8, 1, out_dim=4), sdekit.DDPMSchedule.from_sde(SDE, 40), SDE)
    with pytest.raises(ValueError, match="no v from the latest call"):
        with torch.no_grad():
            sdekit.sample(model, SDE, (4, 2), method="iddpm", prediction="eps", v=other)
