"""Guidance against the exact class-conditional oracle: classifier guidance, classifier-free
guidance, their options, and guided sampling through every sampler, SDE and prediction."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PlainLinearSDE
from hypothesis import given, settings
from hypothesis import strategies as st

from sdekit.guidance import (
    NULL_LABEL,
    classifier_free_guidance,
    classifier_guidance,
    combine,
    guidance_weight,
    null_labels,
    rescale,
)
from sdekit.linear import EDMSDE, OUSDE, VESDE, VPSDE, SubVPSDE
from sdekit.metrics import sliced_w1
from sdekit.mixture import GaussianMixture
from sdekit.networks import MLP
from sdekit.parameterization import PREDICTIONS, from_score, to_eps, to_score, to_x0
from sdekit.sampling import SAMPLERS, sample
from sdekit.sde import SDE, broadcast_to_data
from sdekit.thresholding import thresholded

F64 = torch.float64
# two classes of two components each, overlapping, unequal class weights (0.55 / 0.45)
MIX = GaussianMixture(
    [0.3, 0.2, 0.25, 0.25],
    [[-2.0, 0.0], [1.5, 1.0], [0.5, -1.5], [0.0, 1.5]],
    [0.4, 0.3, 0.5, 0.35],
    labels=[0, 1, 0, 1],
)
SDES = {
    "vp": VPSDE(),
    "subvp": SubVPSDE(),
    "ve": VESDE(),
    "edm": EDMSDE(),
    "plain": PlainLinearSDE(),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coeffs(sde, t, x):
    return tuple(broadcast_to_data(c, x) for c in sde.marginal(t.to(F64)))


def exact_model(sde, prediction: str, conditional: bool = False):
    """The exact (class-conditional) score of MIX, as a network predicting ``prediction``."""

    def model(x, t, labels=None):
        score = MIX.class_score(x, labels, t, sde) if conditional else MIX.score(x, t, sde)
        return from_score(score, prediction, x, *_coeffs(sde, t, x))

    return model


def _points(sde, n=64, seed=0):
    g = _gen(seed)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(n, generator=g, dtype=F64)
    alpha, sigma = sde.marginal(t)
    x = alpha[:, None] * MIX.sample(n, generator=g) + sigma[:, None] * torch.randn(
        n, 2, generator=g, dtype=F64
    )
    y = torch.randint(0, 2, (n,), generator=g)
    return x, t, y


# --- the equations, to round-off -------------------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", list(SDES))
def test_exact_classifier_guidance_at_scale_one_is_the_exact_conditional_score(name, prediction):
    """grad log p_t(x) + 1 * grad log p_t(y | x) (autograd of the exact posterior) is the score of
    the class's own sub-mixture, in every prediction space and under every linear SDE."""
    sde = SDES[name]
    x, t, y = _points(sde)
    guided = classifier_guidance(
        exact_model(sde, prediction),
        MIX.classifier_fn(sde),
        scale=1.0,
        prediction=prediction,
        sde=sde,
    )
    out = guided(x, t, y)
    expected = from_score(MIX.class_score(x, y, t, sde), prediction, x, *_coeffs(sde, t, x))
    scale = 1 + expected.abs()
    assert float(((out - expected).abs() / scale).max()) < 1e-9
    # and the scale multiplies the gradient: s = 2 adds it twice
    twice = classifier_guidance(MIX.score_fn(sde), MIX.classifier_fn(sde), scale=2.0)(x, t, y)
    grad = MIX.log_posterior_grad(x, y, t, sde)
    torch.testing.assert_close(twice, MIX.score(x, t, sde) + 2 * grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["vp", "ve", "plain"])
def test_closed_form_posterior_is_bayes_rule_and_its_gradient_autograd(name):
    sde = SDES[name]
    x, t, y = _points(sde, seed=1)
    log_post = MIX.log_posterior(x, t, sde)
    torch.testing.assert_close(
        log_post.logsumexp(1), torch.zeros(64, dtype=F64), atol=1e-12, rtol=0
    )
    # Bayes: log p(x | y) + log p(y) - log p(x), with p(x | y) the class's renormalised mixture
    for c in range(2):
        bayes = (
            MIX.class_mixture(c).log_prob(x, t, sde)
            + MIX.class_weights[c].log()
            - MIX.log_prob(x, t, sde)
        )
        torch.testing.assert_close(log_post[:, c], bayes, rtol=1e-10, atol=1e-10)
        # the class score is the score of that mixture
        torch.testing.assert_close(
            MIX.class_score(x, c, t, sde),
            MIX.class_mixture(c).score(x, t, sde),
            rtol=1e-10,
            atol=1e-10,
        )
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(MIX.log_posterior(xr, t, sde).gather(1, y[:, None]).sum(), xr)
    torch.testing.assert_close(MIX.log_posterior_grad(x, y, t, sde), grad, rtol=1e-9, atol=1e-9)
    # the null label is the unconditional score
    null = torch.full_like(y, NULL_LABEL)
    torch.testing.assert_close(MIX.class_score(x, null, t, sde), MIX.score(x, t, sde))


def _conditional_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(2, hidden=32, depth=2, num_classes=3, p_uncond=0.1).double().eval()


def test_cfg_with_w_zero_is_the_conditional_model_exactly():
    net = _conditional_mlp()
    x, t, y = _points(VPSDE(), n=16)
    for guided in (
        classifier_free_guidance(net, w=0.0),
        classifier_free_guidance(net, guidance_scale=1.0),
    ):
        assert torch.equal(guided(x, t, y), net(x, t, y))
    assert combine(net(x, t, y), net(x, t, torch.full_like(y, NULL_LABEL)), 0.0).equal(net(x, t, y))


def test_cfg_is_one_batched_call_of_eq_6():
    net = _conditional_mlp()
    calls = []

    def model(x, t, labels):
        calls.append((x.shape[0], labels.clone()))
        return net(x, t, labels)

    x, t, y = _points(VPSDE(), n=16)
    out = classifier_free_guidance(model, w=2.5)(x, t, y)
    assert len(calls) == 1 and calls[0][0] == 32
    assert torch.equal(calls[0][1], torch.cat([y, torch.full_like(y, NULL_LABEL)]))
    expected = 3.5 * net(x, t, y) - 2.5 * net(x, t, torch.full_like(y, NULL_LABEL))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # diffusers' guidance_scale is 1 + w
    assert guidance_weight(guidance_scale=7.5) == 6.5 and guidance_weight(w=6.5) == 6.5
    torch.testing.assert_close(classifier_free_guidance(net, guidance_scale=3.5)(x, t, y), out)


@pytest.mark.parametrize("method, steps", [("dpmpp_2m", 5), ("heun", 3), ("euler_maruyama", 4)])
def test_info_nfe_counts_guided_calls_of_one_2b_network_call_each(method, steps):
    net = _conditional_mlp()
    batches = []

    def model(x, t, labels):
        batches.append(x.shape[0])
        return net(x, t, labels)

    y = torch.randint(0, 3, (8,), generator=_gen(0))
    x_T = torch.randn(8, 2, generator=_gen(1), dtype=F64)
    with torch.no_grad():
        _, info = sample(
            classifier_free_guidance(model, w=1.5),
            VPSDE(),
            x_T,
            method=method,
            steps=steps,
            prediction="eps",
            cond=y,
            generator=_gen(2),
        )
    assert info.nfe == len(batches) and set(batches) == {16}


@settings(derandomize=True, deadline=None, max_examples=40)
@given(
    alpha=st.floats(0.01, 1.0),
    sigma=st.floats(0.01, 80.0),
    w=st.floats(-1.0, 16.0),
    prediction=st.sampled_from(PREDICTIONS),
)
def test_cfg_is_the_same_in_every_prediction_space(alpha, sigma, w, prediction):
    """The conversions are affine in the output with the same coefficients for both outputs, and
    1 + w - w = 1, so guiding then converting equals converting then guiding."""
    g = _gen(0)
    x, f_y, f_u = (torch.randn(8, 3, generator=g, dtype=F64) for _ in range(3))
    a, s = torch.tensor(alpha, dtype=F64), torch.tensor(sigma, dtype=F64)
    for convert in (to_eps, to_x0, to_score):
        guided_then = convert(combine(f_y, f_u, w), prediction, x, a, s)
        then_guided = combine(
            convert(f_y, prediction, x, a, s), convert(f_u, prediction, x, a, s), w
        )
        scale = 1 + guided_then.abs()
        assert float(((guided_then - then_guided).abs() / scale).max()) < 1e-9


@pytest.mark.parametrize("name", ["vp", "edm"])
def test_cfg_on_the_exact_oracle_is_classifier_guidance_with_scale_one_plus_w(name):
    """(1 + w) grad log p(x | y) - w grad log p(x) = grad log p(x) + (1 + w) grad log p(y | x)."""
    sde = SDES[name]
    x, t, y = _points(sde, seed=2)
    for prediction in ("eps", "v"):
        cfg = classifier_free_guidance(exact_model(sde, prediction, conditional=True), w=3.0)
        cg = classifier_guidance(
            exact_model(sde, prediction),
            MIX.classifier_fn(sde),
            scale=4.0,
            prediction=prediction,
            sde=sde,
        )
        a, b = cfg(x, t, y), cg(x, t, y)
        assert float(((a - b).abs() / (1 + b.abs())).max()) < 1e-9


def test_guidance_interval_and_rescaling():
    sde = VPSDE()
    net = _conditional_mlp()
    x, t, y = _points(sde, n=64, seed=3)
    plain = classifier_free_guidance(net, w=2.0)(x, t, y)
    cond_out = net(x, t, y)
    lo, hi = 0.3, 2.0
    level = sde.sigma(t) / sde.alpha(t)
    inside = (level > lo) & (level <= hi)
    assert 0 < int(inside.sum()) < 64
    out = classifier_free_guidance(net, w=2.0, sigma_interval=(lo, hi), sde=sde)(x, t, y)
    assert torch.equal(out[~inside], cond_out[~inside])
    torch.testing.assert_close(out[inside], plain[inside], rtol=1e-12, atol=1e-12)
    t_in = (t > 0.2) & (t <= 0.6)
    out = classifier_free_guidance(net, w=2.0, t_interval=(0.2, 0.6))(x, t, y)
    assert torch.equal(out[~t_in], cond_out[~t_in])
    torch.testing.assert_close(out[t_in], plain[t_in], rtol=1e-12, atol=1e-12)
    # Lin et al.: phi = 1 gives the conditional output's per-sample std, phi = 0.7 interpolates
    full = classifier_free_guidance(net, w=2.0, rescale_phi=1.0)(x, t, y)
    torch.testing.assert_close(full.std(1), cond_out.std(1), rtol=1e-12, atol=1e-12)
    part = classifier_free_guidance(net, w=2.0, rescale_phi=0.7)(x, t, y)
    torch.testing.assert_close(part, 0.7 * full + 0.3 * plain, rtol=1e-12, atol=1e-12)
    assert torch.equal(rescale(plain, cond_out, 0.0), plain)


# --- guided sampling: the law of the requested class -----------------------------------------------

# steps per method (NFE: adaptive ~300, ode ~74, pc 101, heun 50, the others as many as steps)
SAMPLER_STEPS = {
    "adaptive_sde": 1, "ancestral": 100, "ddim": 40, "dpmpp_2m": 15, "dpmpp_2m_sde": 30,
    "dpmpp_3m": 15, "dpmpp_3m_sde": 30, "euler": 50, "euler_maruyama": 100, "heun": 25, "ode": 1,
    "pc": 50, "ancestral_learned": 100, "ddim_learned": 40, "unipc": 15, "unipc_2": 15,
    "unipc_bh1": 15,
}  # fmt: skip
# the learned-variance samplers without a variance head: a fixed interpolation v (measured
# 0.9-1.8x the floor for v in {0, 0.5, 1})
SAMPLER_OPTIONS = {"ancestral_learned": {"v": 0.5}, "ddim_learned": {"v": 0.5}}
N = 1000


def _floor(target, n=N, seeds=4) -> float:
    """Mean sliced W1 of n exact samples of the target, over seeds."""
    d = [
        sliced_w1(target.sample(n, generator=_gen(100 + s)), target, 32, generator=_gen(7))
        for s in range(seeds)
    ]
    return sum(d) / seeds


def test_guided_samples_from_every_sampler_are_the_class_conditional_law():
    """Exact classifier guidance at s = 1 on the exact unconditional score, class 1 requested: each
    method's sliced W1 to p_0(x | y = 1) is within 2x the Monte-Carlo floor of 1000 samples (about
    0.018; measured 0.7-1.5x over two seeds), while the unguided samples are 50x off."""
    assert set(SAMPLER_STEPS) == set(SAMPLERS), "a new sampler needs its steps here"
    sde = VPSDE()
    target = MIX.class_mixture(1)
    floor = _floor(target)
    guided = classifier_guidance(MIX.score_fn(sde), MIX.classifier_fn(sde), scale=1.0)
    y = torch.ones(N, dtype=torch.long)
    for name, steps in SAMPLER_STEPS.items():
        x, _ = sample(
            guided, sde, (N, 2), method=name, steps=steps, cond=y, generator=_gen(1), dtype=F64,
            **SAMPLER_OPTIONS.get(name, {}),
        )  # fmt: skip
        w1 = sliced_w1(x, target, 32, generator=_gen(7))
        assert w1 < 2 * floor, (name, w1, floor)
    x, _ = sample(MIX.score_fn(sde), sde, (N, 2), steps=15, generator=_gen(1), dtype=F64)
    assert sliced_w1(x, target, 32, generator=_gen(7)) > 30 * floor


@pytest.mark.parametrize(
    "name, prediction, guidance",
    [("subvp", "eps", "cg"), ("ve", "x0", "cg"), ("edm", "v", "cg"), ("plain", "eps", "cfg")],
)
def test_guided_sampling_on_every_sde_and_prediction(name, prediction, guidance):
    """dpmpp_2m, 25 steps, class 0 (two modes 3 apart) requested, 4000 samples: within 2x the
    floor on every SDE and prediction. The CFG row is the exact conditional model at w = 0 through
    the transform."""
    sde = SDES[name]
    target = MIX.class_mixture(0)
    if guidance == "cg":
        model = classifier_guidance(
            exact_model(sde, prediction),
            MIX.classifier_fn(sde),
            scale=1.0,
            prediction=prediction,
            sde=sde,
        )
    else:
        model = classifier_free_guidance(exact_model(sde, prediction, conditional=True), w=0.0)
    y = torch.zeros(4000, dtype=torch.long)
    x_T = target.sample(4000, sde.T, sde, generator=_gen(2))  # p_T(x | y): not N(0, I) for "plain"
    x, info = sample(model, sde, x_T, steps=25, prediction=prediction, cond=y, generator=_gen(3))
    assert info.nfe == 25
    assert sliced_w1(x, target, 32, generator=_gen(7)) < 2 * _floor(target, 4000)


class HandOU(SDE):
    """An Ornstein-Uhlenbeck SDE written by hand (drift and diffusion only, no marginal)."""

    def __init__(self):
        super().__init__(T=2.0, t_min=1e-3)

    def drift(self, x, t):
        return -0.8 * x

    def diffusion(self, x, t):
        return torch.full_like(t, 1.2)

    def prior_sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        return (1.2 / math.sqrt(1.6)) * torch.randn(shape, generator=generator, dtype=dtype)


def test_guidance_on_a_hand_written_sde():
    """A general SDE (no closed-form marginal) with Euler-Maruyama: neither transform needs a
    marginal for a score model. Exact classifier guidance (the exact scores of the same OU SDE,
    from the exact p_T(x | y), 100 steps of a quadratic grid) reaches the class law within 2x the
    floor (measured 1.0x); CFG at w = 0.5 takes the same path as classifier guidance at s = 1.5."""
    exact = OUSDE(theta=0.8, g=1.2, T=2.0)
    target = MIX.class_mixture(1)
    y = torch.ones(N, dtype=torch.long)

    def run(model, n=N, steps=100):
        x_T = target.sample(n, exact.T, exact, generator=_gen(9))  # the exact p_T(x | y)
        gen = _gen(10)
        x, _ = sample(
            model,
            HandOU(),
            x_T,
            method="em",
            steps=steps,
            grid="quadratic",
            cond=y[:n],
            generator=gen,
        )
        return x

    cg = classifier_guidance(MIX.score_fn(exact), MIX.classifier_fn(exact), scale=1.0)
    assert sliced_w1(run(cg), target, 32, generator=_gen(7)) < 2 * _floor(target)
    cfg = classifier_free_guidance(MIX.conditional_score_fn(exact), w=0.5)
    cg15 = classifier_guidance(MIX.score_fn(exact), MIX.classifier_fn(exact), scale=1.5)
    torch.testing.assert_close(run(cfg, 200, 40), run(cg15, 200, 40), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(run(cfg, 200, 40), run(cg, 200, 40), atol=1e-3)


def test_the_mass_of_the_requested_class_rises_monotonically_with_w():
    """CFG with the exact conditional and unconditional scores: the mean posterior p_0(y | x) of
    the samples rises strictly from w = -1 (unconditional) through 0 (conditional) to 8."""
    sde = VPSDE()
    model = exact_model(sde, "eps", conditional=True)
    y = torch.ones(1000, dtype=torch.long)
    x_T = sde.prior_sample((1000, 2), generator=_gen(4), dtype=F64)
    masses = []
    for w in (-1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
        guided = classifier_free_guidance(model, w=w)
        x, _ = sample(guided, sde, x_T, steps=20, prediction="eps", cond=y)
        masses.append(float(MIX.log_posterior(x)[:, 1].exp().mean()))
    assert all(b > a for a, b in zip(masses[:-1], masses[1:], strict=True)), masses
    assert abs(masses[0] - 0.45) < 0.05 and masses[-1] > 0.99, masses


@pytest.mark.parametrize("method", ["dpmpp_2m", "dpmpp_3m", "heun", "euler_maruyama"])
def test_large_guidance_with_dynamic_thresholding_stays_finite_and_in_range(method):
    """w = 8 on data in [-1, 1]^16 with the exact scores: the high-order solvers' x0 estimates are
    thresholded (Saharia et al.), and the samples are finite and inside the data range."""
    sde = VPSDE()
    g = _gen(5)
    means = 0.6 * (2 * torch.rand(4, 16, generator=g, dtype=F64) - 1)
    mix = GaussianMixture([0.25] * 4, means, 0.15, labels=[0, 1, 0, 1])

    def model(x, t, labels):
        return from_score(mix.class_score(x, labels, t, sde), "eps", x, *_coeffs(sde, t, x))

    guided = thresholded(classifier_free_guidance(model, w=8.0), sde, "eps")
    y = torch.randint(0, 2, (256,), generator=g)
    x, _ = sample(
        guided,
        sde,
        (256, 16),
        method=method,
        steps=20,
        prediction="eps",
        cond=y,
        generator=g,
        dtype=F64,
    )
    assert bool(torch.isfinite(x).all())
    assert float(x.abs().max()) < 1.5


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_the_argument_named():
    sde = VPSDE()
    net = _conditional_mlp()
    x, t, y = _points(sde, n=4)
    with pytest.raises(ValueError, match="exactly one of w .* and guidance_scale"):
        classifier_free_guidance(net, w=1.0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="exactly one of w"):
        classifier_free_guidance(net)
    with pytest.raises(TypeError):
        classifier_free_guidance(net, 2.0)  # a bare number: which convention?
    for bad in (float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="w must be a finite number"):
            classifier_free_guidance(net, w=bad)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        classifier_guidance(MIX.score_fn(sde), MIX.classifier_fn(sde), scale=float("nan"))
    with pytest.raises(ValueError, match="unconditional"):
        classifier_free_guidance(MLP(2, hidden=8), w=1.0)
    with pytest.raises(ValueError, match="no null label .*p_uncond"):
        classifier_free_guidance(MLP(2, hidden=8, num_classes=3), w=1.0)
    with pytest.raises(ValueError, match="cond is required"):
        classifier_free_guidance(net, w=1.0)(x, t)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        classifier_free_guidance(net, w=1.0)(x, t, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="sigma_interval needs sde"):
        classifier_free_guidance(net, w=1.0, sigma_interval=(0.1, 1.0))
    with pytest.raises(ValueError, match="sigma_interval must be"):
        classifier_free_guidance(net, w=1.0, sigma_interval=(1.0, 0.1), sde=sde)
    with pytest.raises(ValueError, match="rescale_phi must"):
        classifier_free_guidance(net, w=1.0, rescale_phi=1.5)
    with pytest.raises(ValueError, match="uncond="):
        null_labels(torch.zeros(4, 3))
    # classifier guidance: labels out of the classifier's range, classes that do not match
    cg = classifier_guidance(MIX.score_fn(sde), MIX.classifier_fn(sde), scale=1.0)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 2\\)"):
        cg(x, t, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="cond is required"):
        cg(x, t)
    with pytest.raises(ValueError, match="classifier has 2 classes, but num_classes is 3"):
        classifier_guidance(MIX.score_fn(sde), MIX.classifier_fn(sde), scale=1.0, num_classes=3)
    with pytest.raises(ValueError, match="classifier has 2 classes, but model has 3"):
        classifier_guidance(net, MIX.classifier_fn(sde), scale=1.0, conditional_model=True)
    with pytest.raises(ValueError, match="conditional_model=True"):
        classifier_guidance(net, MIX.classifier_fn(sde), scale=1.0)
    with pytest.raises(ValueError, match="needs sde"):
        classifier_guidance(MIX.score_fn(sde), MIX.classifier_fn(sde), scale=1.0, prediction="eps")
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        cg(x, t, y)
    # the oracle
    with pytest.raises(ValueError, match="y must lie in \\[0, 2\\)"):
        MIX.class_score(x, torch.tensor([0, 1, 5, 0]), t, sde)
    with pytest.raises(ValueError, match="y must be an integer in \\[0, 2\\)"):
        MIX.class_mixture(2)
    with pytest.raises(ValueError, match="every class"):
        GaussianMixture([0.5, 0.5], [0.0, 1.0], 0.1, labels=[0, 2])
    with pytest.raises(ValueError, match="no component labels"):
        GaussianMixture([0.5, 0.5], [0.0, 1.0], 0.1).log_posterior(torch.zeros(2, 1))
