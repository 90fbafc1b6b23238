"""Denoising score matching: Gaussian closed forms, weighting identities, unbiased t-sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from sdekit.linear import EDMSDE, OUSDE, VESDE, VPSDE
from sdekit.losses import DenoisingScoreMatching
from sdekit.mixture import GaussianMixture
from sdekit.networks import MLP, EDMPrecond
from sdekit.parameterization import PREDICTIONS, target, to_score
from sdekit.sde import broadcast_to_data

MU = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
S0 = 0.7
GAUSS = GaussianMixture([1.0], MU, S0)  # p_0 = N(mu, S0^2 I): p_t and its score in closed form
BMIN, BMAX = 0.1, 20.0
LOSS_PREDICTIONS = (*PREDICTIONS, "edm")


def vp_closed_form(t):
    """alpha^2, sigma^2, g^2 of the linear-beta VP SDE (Song et al. 2021, eq. 33), by hand."""
    B = BMIN * t + 0.5 * (BMAX - BMIN) * t**2
    return np.exp(-B), -np.expm1(-B), BMIN + (BMAX - BMIN) * t


def as_prediction(score, prediction, sde):
    """Turn a score function into a model that outputs ``prediction`` (the inverse of to_score)."""

    def model(x, t):
        alpha, sigma = (broadcast_to_data(c, x) for c in sde.marginal(t))
        s = score(x, t)
        eps = -sigma * s
        x0 = (x - sigma * eps) / alpha
        outputs = {"score": s, "eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}
        return outputs.get(prediction, x0)

    return model


def score_weight(weighting, prediction, a2, s2, g2, sigma_data=0.5):
    """lambda(t) on the score error, as documented in sdekit.losses."""
    c = {"score": 1.0, "eps": s2, "x0": s2**2 / a2, "edm": s2**2 / a2}
    c["v"] = s2 * (a2 + s2) ** 2 / a2
    st2 = s2 / a2
    return {
        "sigma2": s2,
        "likelihood": g2,
        "edm": (st2 + sigma_data**2) / (st2 * sigma_data**2) * s2**2 / a2,
        "none": c[prediction] * np.ones_like(s2),
    }[weighting]


def draw(n, seed, t_lo=0.05, t_hi=0.95):
    g = torch.Generator().manual_seed(seed)
    x0 = GAUSS.sample(n, generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.linspace(t_lo, t_hi, n, dtype=torch.float64)
    return x0, noise, t


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "edm", "none"])
@pytest.mark.parametrize("prediction", LOSS_PREDICTIONS)
def test_exact_score_attains_the_closed_form_minimum(prediction, weighting):
    # DSM(s*) = lambda (E|grad log p_t|0|^2 - E|grad log p_t|^2)
    #         = lambda d (1/sigma^2 - 1/(a^2 s0^2 + sigma^2))
    sde = VPSDE(BMIN, BMAX)
    loss = DenoisingScoreMatching(sde, prediction, weighting)
    x0, noise, t = draw(10_000, seed=1)
    per = loss.per_sample(as_prediction(GAUSS.score_fn(sde), prediction, sde), x0, t, noise)
    a2, s2, g2 = vp_closed_form(t.numpy())
    lam = score_weight(weighting, prediction, a2, s2, g2)
    expected = torch.from_numpy(lam * 2 * (1 / s2 - 1 / (a2 * S0**2 + s2)))
    ratio = per / expected  # mean 1 at every t, whatever the weighting
    se = float(ratio.std()) / math.sqrt(len(ratio))
    assert abs(float(ratio.mean()) - 1) < 4 * se
    assert se < 0.03  # power to see a 12% error


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "edm", "none"])
@pytest.mark.parametrize("prediction", LOSS_PREDICTIONS)
def test_dsm_excess_over_exact_score_is_the_explicit_score_matching_loss(prediction, weighting):
    # s = s* + b: DSM(s) - DSM(s*) = ESM(s) = lambda |b|^2 in expectation (Vincent 2011)
    sde = VPSDE(BMIN, BMAX)
    loss = DenoisingScoreMatching(sde, prediction, weighting)
    b = torch.tensor([1.5, -1.0], dtype=torch.float64)
    exact = GAUSS.score_fn(sde)
    x0, noise, t = draw(10_000, seed=2)
    best = loss.per_sample(as_prediction(exact, prediction, sde), x0, t, noise)
    worse = loss.per_sample(
        as_prediction(lambda x, t: exact(x, t) + b, prediction, sde), x0, t, noise
    )
    a2, s2, g2 = vp_closed_form(t.numpy())
    esm = torch.from_numpy(score_weight(weighting, prediction, a2, s2, g2)) * b.square().sum()
    ratio = (worse - best) / esm
    se = float(ratio.std()) / math.sqrt(len(ratio))
    assert abs(float(ratio.mean()) - 1) < 4 * se
    assert se < 0.03
    assert bool(worse.mean() > best.mean())


@pytest.mark.parametrize("prediction", ["eps", "v", "edm"])
def test_dsm_gradient_vanishes_at_the_exact_score_in_expectation(prediction):
    # d/db DSM(s* + b) = 2 E[lambda] b: zero at b = 0, and the right size elsewhere
    sde = VPSDE(BMIN, BMAX)
    loss = DenoisingScoreMatching(sde, prediction, "likelihood")
    exact = GAUSS.score_fn(sde)
    x0, noise, t = draw(10_000, seed=10)
    a2, s2, g2 = vp_closed_form(t.numpy())
    mean_lam = float(g2.mean())
    for b0 in (0.0, 0.5):
        b = torch.full_like(x0, b0).requires_grad_(True)  # one shift per sample: per-sample grads
        model = as_prediction(lambda x, t, b=b: exact(x, t) + b, prediction, sde)
        (grad,) = torch.autograd.grad(loss.per_sample(model, x0, t, noise).sum(), b)
        se = grad.std(0) / math.sqrt(len(grad))
        assert bool(((grad.mean(0) - 2 * mean_lam * b0).abs() < 4 * se).all())
        assert bool((se < 0.05 * mean_lam).all())


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), EDMSDE()], ids=["vp", "ve", "edm"])
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "edm"])
def test_every_prediction_gives_the_same_score_weighted_loss(sde, weighting):
    # The loss is lambda |s - grad log p_t|0|^2 whatever the network predicts.
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(64, generator=g, dtype=torch.float64)

    def score(x, t):  # an arbitrary, wrong score
        return torch.sin(x) - x * broadcast_to_data(t, x)

    alpha, sigma = (broadcast_to_data(c, x0) for c in sde.marginal(t))
    lam = score_weight(
        weighting, "score", alpha.flatten() ** 2, sigma.flatten() ** 2, sde.g2(t)
    ).to(torch.float64)
    direct = lam * (score(alpha * x0 + sigma * noise, t) + noise / sigma).square().sum(1)
    for prediction in LOSS_PREDICTIONS:
        loss = DenoisingScoreMatching(sde, prediction, weighting)
        per = loss.per_sample(as_prediction(score, prediction, sde), x0, t, noise)
        torch.testing.assert_close(per, direct, rtol=1e-9, atol=0)


def test_default_weighting_is_eps_mse_and_the_documented_choice():
    sde = VPSDE()
    for prediction, expected in [("score", "sigma2"), ("eps", "sigma2"), ("x0", "none")]:
        assert DenoisingScoreMatching(sde, prediction).weighting == expected
    assert DenoisingScoreMatching(sde, "v").weighting == "none"
    assert DenoisingScoreMatching(EDMSDE(), "edm").weighting == "edm"
    t = torch.linspace(0.01, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(DenoisingScoreMatching(sde, "eps").weight(t), torch.ones_like(t))
    # likelihood / sigma2 = g^2 / sigma^2 on every prediction
    for prediction in LOSS_PREDICTIONS:
        ratio = DenoisingScoreMatching(sde, prediction, "likelihood").weight(
            t
        ) / DenoisingScoreMatching(sde, prediction, "sigma2").weight(t)
        torch.testing.assert_close(ratio, sde.g2(t) / sde.sigma(t) ** 2)


@pytest.mark.parametrize("sde", [EDMSDE(), VPSDE()], ids=["edm", "vp"])
def test_edm_loss_is_unit_weighted_mse_of_the_raw_network(sde):
    # Karras et al. 2022 eq. 8 with lambda c_out^2 = 1:
    # |F(c_in x, c_noise) - (x0 - c_skip x)/c_out|^2
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=32, depth=2).double()
    precond = EDMPrecond(net, sde)
    g = torch.Generator().manual_seed(4)
    x0 = 0.5 * torch.randn(32, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(32, generator=g, dtype=torch.float64)
    per = DenoisingScoreMatching(sde, "edm").per_sample(precond, x0, t, noise)
    alpha, sigma = sde.marginal(t)
    s = (sigma / alpha)[:, None]
    x_scaled = x0 + s * noise
    c_skip, c_out, c_in = (
        0.25 / (s**2 + 0.25),
        0.5 * s / (s**2 + 0.25).sqrt(),
        (s**2 + 0.25).rsqrt(),
    )
    raw = net(c_in * x_scaled, 0.25 * torch.log(s.flatten()))
    direct = (raw - (x0 - c_skip * x_scaled) / c_out).square().sum(1)
    torch.testing.assert_close(per, direct, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("weighting", ["likelihood", "sigma2"])
def test_importance_sampling_is_unbiased_and_reduces_variance(weighting):
    # Both estimators against the quadrature of E_{t ~ U[t_min, T]} lambda(t) DSM_t(s*).
    sde = VPSDE(BMIN, BMAX)
    model = as_prediction(GAUSS.score_fn(sde), "eps", sde)
    n = 50_000
    g = torch.Generator().manual_seed(5)
    x0 = GAUSS.sample(n, generator=g)

    def integrand(t):
        a2, s2, g2 = vp_closed_form(t)
        lam = g2 if weighting == "likelihood" else s2
        return lam * 2 * (1 / s2 - 1 / (a2 * S0**2 + s2))

    exact = integrate.quad(integrand, sde.t_min, sde.T, limit=200, points=[0.01, 0.1])[0]
    exact /= sde.T - sde.t_min
    values = {}
    for t_sampling in ("uniform", "importance"):
        loss = DenoisingScoreMatching(sde, "eps", weighting, t_sampling)
        t, w = loss.sample_t(n, dtype=torch.float64, generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        v = w * loss.per_sample(model, x0, t, noise)
        values[t_sampling] = v
        assert abs(float(v.mean()) - exact) < 4 * float(v.std()) / math.sqrt(n)
    if weighting == "likelihood":  # the proposal's purpose: the weight g^2/sigma^2 is flattened
        assert float(values["importance"].std()) < 0.5 * float(values["uniform"].std())


@pytest.mark.parametrize("weighting", ["likelihood", "sigma2"])
def test_importance_sampling_is_unbiased_on_a_horizon_other_than_one(weighting):
    # OU with T = 3: the weight 1/((T - t_min) q(t)) carries a factor 1/3 that T = 1 cannot see.
    # alpha^2 = e^{-2 theta t}, sigma^2 = g^2 (1 - e^{-2 theta t}) / (2 theta), by hand.
    theta, g, T = 0.7, 1.3, 3.0
    sde = OUSDE(theta, g, T=T)
    model = as_prediction(GAUSS.score_fn(sde), "eps", sde)
    n = 20_000
    gen = torch.Generator().manual_seed(12)
    x0 = GAUSS.sample(n, generator=gen)

    def integrand(t):
        a2, s2 = math.exp(-2 * theta * t), g**2 * -math.expm1(-2 * theta * t) / (2 * theta)
        lam = g**2 if weighting == "likelihood" else s2
        return lam * 2 * (1 / s2 - 1 / (a2 * S0**2 + s2))

    exact = integrate.quad(integrand, sde.t_min, T, limit=200, points=[0.01, 0.1])[0] / (
        T - sde.t_min
    )
    loss = DenoisingScoreMatching(sde, "eps", weighting, "importance")
    t, w = loss.sample_t(n, dtype=torch.float64, generator=gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    v = w * loss.per_sample(model, x0, t, noise)
    assert abs(float(v.mean()) - exact) < 4 * float(v.std()) / math.sqrt(n)
    assert float(v.std()) / math.sqrt(n) < 0.05 * exact  # power to see a factor 3


def test_bad_data_and_bad_model_outputs_raise():
    sde = VPSDE()
    loss = DenoisingScoreMatching(sde, "eps")
    x0 = torch.randn(4, 2)
    nan = x0.clone()
    nan[2, 1] = math.inf
    model = MLP(dim=2, hidden=8, depth=1)
    with pytest.raises(
        ValueError, match=r"x0 contains NaN or inf \(1 of 8 values\).*training data"
    ):
        loss(model, nan)
    with pytest.raises(ValueError, match="batch >= 1"):
        loss(model, x0[:0])
    with pytest.raises(ValueError, match=r"x0 must be a floating-point tensor.*x0.float\(\)"):
        loss(model, torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"model must return a tensor of shape \(4, 2\)"):
        loss(lambda x, t: x[:, :1], x0)
    with pytest.raises(TypeError, match="model must return a torch.Tensor"):
        loss(lambda x, t: (x,), x0)
    with pytest.raises(ValueError, match="x0 contains NaN"):
        loss.per_sample(model, nan, torch.full((4,), 0.5), torch.randn(4, 2))


def test_call_is_the_weighted_batch_mean_of_per_sample():
    sde = VPSDE()
    loss = DenoisingScoreMatching(sde, "eps", "likelihood", "importance")
    model = MLP(dim=2, hidden=16, depth=1)
    x0 = torch.randn(16, 2)
    value = loss(model, x0, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t, w = loss.sample_t(16, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(value, (w.float() * loss.per_sample(model, x0, t, noise)).mean())
    assert value.ndim == 0 and value.requires_grad


@pytest.mark.parametrize("sde", [EDMSDE(), VPSDE()], ids=["edm", "vp"])
def test_lognormal_sampling_is_the_truncated_edm_distribution(sde):
    loss = DenoisingScoreMatching(sde, "edm", t_sampling="lognormal")
    t, w = loss.sample_t(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    assert bool((t >= sde.t_min).all() and (t <= sde.T).all()) and bool((w == 1).all())
    alpha, sigma = sde.marginal(t)
    ends = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    lo, hi = ((torch.log(sde.sigma(ends) / sde.alpha(ends)).numpy() + 1.2) / 1.2).tolist()
    ks = stats.kstest(torch.log(sigma / alpha).numpy(), stats.truncnorm(lo, hi, -1.2, 1.2).cdf)
    assert ks.pvalue > 0.01


def test_sampled_times_stay_in_the_domain_after_rounding_to_float32():
    sde = VPSDE.cosine()  # T = 0.9946 rounds upwards in float32
    for t_sampling in ("uniform", "importance"):
        loss = DenoisingScoreMatching(sde, "eps", t_sampling=t_sampling)
        t, _ = loss.sample_t(10_000, generator=torch.Generator().manual_seed(11))
        assert t.dtype == torch.float32
        assert bool((t.double() <= sde.T).all() and (t.double() >= sde.t_min).all())
    edge = loss._in_domain(torch.tensor([sde.T], dtype=torch.float64), torch.float32)
    assert float(edge) <= sde.T


@settings(derandomize=True, deadline=None, max_examples=25)
@given(
    alpha=st.floats(0.01, 1.0),
    sigma=st.floats(0.01, 80.0),
    prediction=st.sampled_from(PREDICTIONS),
)
def test_every_target_converts_back_to_the_conditional_score(alpha, sigma, prediction):
    g = torch.Generator().manual_seed(9)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    y = target(prediction, x0, eps, alpha, sigma)
    torch.testing.assert_close(to_score(y, prediction, x_t, alpha, sigma), -eps / sigma)


def test_loss_stays_float32_under_bf16_autocast():
    loss = DenoisingScoreMatching(VPSDE(), "eps", "likelihood", "importance")
    model = MLP(dim=2, hidden=16, depth=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(model, torch.randn(32, 2), generator=torch.Generator().manual_seed(0))
    assert value.dtype == torch.float32 and bool(torch.isfinite(value))
    value.backward()


def test_bad_arguments_raise_naming_them():
    sde = VPSDE()
    with pytest.raises(ValueError, match="prediction"):
        DenoisingScoreMatching(sde, "noise")
    with pytest.raises(ValueError, match="weighting"):
        DenoisingScoreMatching(sde, "eps", "snr")
    with pytest.raises(ValueError, match="t_sampling"):
        DenoisingScoreMatching(sde, "eps", t_sampling="beta")
    with pytest.raises(ValueError, match="sde"):
        DenoisingScoreMatching(object(), "eps")
    with pytest.raises(ValueError, match="t_min"):
        DenoisingScoreMatching(VPSDE(t_min=0.0), "eps")
    with pytest.raises(ValueError, match="t must have shape"):
        DenoisingScoreMatching(sde).per_sample(
            MLP(), torch.randn(4, 2), torch.rand(3), torch.randn(4, 2)
        )
