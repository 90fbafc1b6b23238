"""Inpainting given an observation, measured against the exact posterior of a Gaussian mixture.

Tolerances are stated against the Monte-Carlo floor: the W1 distance of as many exact posterior
samples (its mean over draws is printed in the comments where it sets a tolerance).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PlainLinearSDE

from sdekit.inpainting import METHODS, inpaint, repaint_schedule
from sdekit.linear import EDMSDE, VESDE, VPSDE, SubVPSDE
from sdekit.measurements import Downsample, Mask
from sdekit.metrics import sliced_w1, w1_to_mixture
from sdekit.mixture import GaussianMixture
from sdekit.sampling import SAMPLERS

# 1D in 2D, asymmetric: the observed x_1 = 0.6 makes the right-hand component far more likely
# than the left (posterior weights WEIGHTS2, prior 0.55 / 0.45).
GM2 = GaussianMixture([0.55, 0.45], [[-1.0, -1.5], [1.2, 1.5]], [[0.7, 0.5], [0.6, 0.5]])
MASK2 = torch.tensor([True, False])
Y2 = torch.tensor([0.6, math.nan], dtype=torch.float64)
# 2D in 4D: three components, coordinates 0 and 2 observed
GM4 = GaussianMixture(
    [0.4, 0.35, 0.25],
    [[-1.0, 1.0, 0.5, -1.0], [1.0, -1.0, 1.0, 1.0], [0.0, 2.0, -1.0, 0.0]],
    [[0.6, 0.5, 0.7, 0.4], [0.5, 0.6, 0.5, 0.5], [0.7, 0.4, 0.6, 0.5]],
)
MASK4 = torch.tensor([True, False, True, False])
Y4 = torch.tensor([0.4, math.nan, 0.6, math.nan], dtype=torch.float64)


def _run(gm, mask, y, n, sde=None, **kwargs):
    sde = sde or VPSDE()
    obs = y.expand(n, gm.dim).clone()
    kwargs.setdefault("generator", torch.Generator().manual_seed(1))
    x, info = inpaint(gm.score_fn(sde), sde, Mask(mask), obs, dtype=torch.float64, **kwargs)
    return x, info, obs


def _w1_2d(x):
    return w1_to_mixture(x[:, 1], GM2.condition(MASK2, Y2))


def test_repaint_schedule_is_the_papers():
    """Alg. 1 (jump length 1): every step but the last is redone r times, the first one too."""
    assert repaint_schedule(3, 1, 2) == [0, 1, 0, 1, 2, 1, 2, 3]
    # jump length 2 (RePaint's get_schedule_jump, states 0, 2, ... below T counted from t_min):
    # jumps start from k = N - 1, N - 3, ... >= 2 and go back 2 steps
    assert repaint_schedule(6, 2, 2) == [0, 1, 2, 3, 1, 2, 3, 4, 5, 3, 4, 5, 6]
    assert repaint_schedule(6, 2, 1) == list(range(7))
    assert repaint_schedule(3, 5, 4) == [0, 1, 2, 3]  # no room to jump back
    path = repaint_schedule(250, 10, 10)
    down = sum(b > a for a, b in zip(path, path[1:], strict=False))
    assert down == 250 + 9 * 10 * 24  # the paper's setting: 24 jump points
    with pytest.raises(ValueError, match="jump_length must be an integer >= 1"):
        repaint_schedule(5, 0, 2)
    with pytest.raises(ValueError, match="resamples must be an integer >= 1"):
        repaint_schedule(5, 2, 0)


@pytest.mark.parametrize("method", ["replacement", "repaint", "smcdiff"])
def test_the_observed_part_is_the_noised_observation_at_each_time(method):
    """At every model call, at time t, the observed coordinate is alpha_t y + sigma_t z: its
    mean and standard deviation over the batch, for each call (the new time, not the old one;
    for SMCDiff, the marginals of its forward path of the observation)."""
    sde, n = VPSDE(), 4000
    seen = []

    def model(x, t):
        seen.append((float(t[0]), x[:, 0].clone()))
        return GM2.score(x, t, sde)

    obs = Y2.expand(n, 2).clone()
    extra = {"repaint": {"jump_length": 3, "resamples": 2}, "smcdiff": {"particles": 1}}
    extra = extra.get(method, {})
    gen = torch.Generator().manual_seed(0)
    inpaint(model, sde, Mask(MASK2), obs, method=method, steps=12, generator=gen,
            dtype=torch.float64, **extra)  # fmt: skip
    # RePaint's default step (DDIM, eta 1) is not stochastic: no final Tweedie call
    assert len(seen) == (12 + 3 * 3 if method == "repaint" else 12 + 1)
    for t, xo in seen:
        alpha, sigma = (float(v) for v in sde.marginal(torch.tensor([t], dtype=torch.float64)))
        # 5 standard errors of the mean and of the standard deviation
        assert abs(float(xo.mean()) - alpha * 0.6) < 5 * sigma / math.sqrt(n) + 1e-12
        assert abs(float(xo.std()) - sigma) < 5 * sigma / math.sqrt(2 * n) + 1e-12


def test_repaint_default_step_leaves_no_forward_noise_after_few_steps():
    """A sharp Gaussian, N(mu, 0.05^2 I), x_1 observed: the exact posterior of x_2 is
    N(-0.4, 0.05^2). At RePaint's digits setting (N = 10, j = r = 5) the default step (DDIM,
    eta 1: the forward chain's posterior) gives std 0.031; a step that adds the forward noise
    keeps about sigma_{t_9} = 0.32 of it (ancestral, sigma^2 = beta: 0.31; Euler-Maruyama: 0.70)."""
    s = 0.05
    gm = GaussianMixture([1.0], [[0.3, -0.4]], [[s, s]])
    y = torch.tensor([0.5, math.nan], dtype=torch.float64)
    options = {"method": "repaint", "steps": 10, "jump_length": 5, "resamples": 5}
    x, info, _ = _run(gm, MASK2, y, 2000, **options)
    assert info.sampler == "ddim" and info.nfe == 30
    assert abs(float(x[:, 1].mean()) + 0.4) < 0.005
    assert 0.5 * s < float(x[:, 1].std()) < 1.5 * s
    x, _, _ = _run(gm, MASK2, y, 2000, sampler="ancestral", **options)
    assert float(x[:, 1].std()) > 4 * s
    with pytest.raises(
        ValueError, match=r"eta must lie in \[0, 1\], got 2.0"
    ):  # an eta given is the caller's
        _run(gm, MASK2, y, 4, eta=2.0, **options)


@pytest.mark.parametrize("sampler", ["euler_maruyama", "ancestral", "dpmpp_2m", "heun"])
@pytest.mark.parametrize("method", ["replacement", "repaint", "smcdiff", "tds"])
def test_the_observed_part_is_kept_bit_for_bit(method, sampler):
    if method in ("smcdiff", "tds") and sampler in ("dpmpp_2m", "heun"):
        return  # deterministic: refused, see test_which_samplers_each_method_runs
    x, info, obs = _run(GM4, MASK4, Y4, 64, method=method, sampler=sampler, steps=8)
    assert torch.equal(x[:, MASK4], obs[:, MASK4]) and bool(torch.isfinite(x).all())
    assert info.method == method and info.sampler == sampler


def test_super_resolution_output_downsamples_to_the_observation():
    """With Downsample, Pi x = A^+ y: the output's block means are the low-resolution image."""
    gen = torch.Generator().manual_seed(0)
    op = Downsample((1, 4, 4), 2)
    y = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64)

    def model(x, t):  # the score of N(0, I) under the VP SDE
        return -x

    for method in ("replacement", "repaint", "smcdiff", "tds"):
        x, _ = inpaint(model, VPSDE(), op, y, method=method, steps=6, dtype=torch.float64,
                       generator=gen)  # fmt: skip
        torch.testing.assert_close(op(x), y, rtol=0, atol=1e-12)


def test_replacement_is_biased_and_smc_converges_with_particles():
    """The 1D-in-2D oracle, 50 ancestral steps, 300 samples (floor: mean 0.067, max 0.114 over 20
    draws). Replacement keeps most of the prior's weights (W1 1.03); RePaint harmonises part of
    it (0.61); both SMCs' errors fall with the particles to the floor (SMCDiff 1.16, 0.28, 0.065
    at 1, 4, 64 particles; TDS 1.08, 0.054 at 1, 64; TDS without its last weight: 0.18)."""
    errors = {}
    for name, kwargs in {
        "replacement": {"method": "replacement"},
        "repaint": {"method": "repaint", "jump_length": 5, "resamples": 4},
        "smcdiff1": {"method": "smcdiff", "particles": 1},
        "smcdiff4": {"method": "smcdiff", "particles": 4},
        "smcdiff64": {"method": "smcdiff", "particles": 64},
        "tds1": {"method": "tds", "particles": 1},
        "tds64": {"method": "tds", "particles": 64},
    }.items():
        x, _, _ = _run(GM2, MASK2, Y2, 300, sampler="ancestral", steps=50, **kwargs)
        errors[name] = _w1_2d(x)
    assert errors["replacement"] > 0.8
    assert errors["repaint"] < 0.75 * errors["replacement"]
    assert errors["smcdiff1"] > 0.8 and errors["smcdiff4"] < 0.4 * errors["smcdiff1"]
    assert errors["tds1"] > 0.8
    assert errors["smcdiff64"] < 0.13 and errors["tds64"] < 0.13, errors


def test_smc_on_2d_in_4d():
    """Sliced W1 of the two unobserved coordinates to the exact posterior, 400 samples, 40
    ancestral steps, 16 particles (floor 0.057; measured SMCDiff 0.24, TDS 0.16, replacement
    0.80)."""
    post = GM4.condition(MASK4, Y4)
    errors = {}
    for method, kwargs in (("replacement", {}), ("smcdiff", {"particles": 16}),
                           ("tds", {"particles": 16})):  # fmt: skip
        x, _, _ = _run(GM4, MASK4, Y4, 400, method=method, sampler="ancestral", steps=40, **kwargs)
        errors[method] = sliced_w1(x[:, ~MASK4], post, generator=torch.Generator().manual_seed(0))
    assert errors["replacement"] > 0.6
    assert errors["smcdiff"] < 0.35 and errors["tds"] < 0.25, errors


@pytest.mark.parametrize(
    "sde", [VESDE(), SubVPSDE(), EDMSDE(), PlainLinearSDE()], ids=["ve", "subvp", "edm", "plain"]
)
def test_every_linear_sde(sde):
    """Both SMCs (8 particles, 40 steps of the EDM grid, which suits every SDE; a uniform grid in
    t is far too coarse near t_min for the EDM SDE's T = 80) on the 1D-in-2D oracle for each linear
    SDE (floor 0.067 at 300 samples; measured 0.08-0.30, replacement ~1)."""
    for method in ("smcdiff", "tds"):
        x, _, obs = _run(GM2, MASK2, Y2, 300, sde=sde, method=method, particles=8, steps=40,
                         grid="edm")  # fmt: skip
        assert torch.equal(x[:, 0], obs[:, 0])
        assert _w1_2d(x) < 0.4, method


def test_guidance_follows_the_observation():
    """Reconstruction guidance with weight 1 (exact observation) is nearly as biased as
    replacement here (W1 0.97); weight 4 follows the observation more closely (0.37). The guidance
    term grows like w / t near t = 0, so weight 4 needs steps finer there than t (the quadratic
    grid): on the uniform grid Euler-Maruyama oscillates off."""
    errors = {}
    for scale in (1.0, 4.0):
        x, info, obs = _run(GM2, MASK2, Y2, 500, method="guidance", steps=50, scale=scale,
                            grid="quadratic")  # fmt: skip
        errors[scale] = _w1_2d(x)
        assert float((x[:, 0] - obs[:, 0]).abs().mean()) < 0.1
    assert errors[4.0] < 0.5 < 0.9 < errors[1.0], errors


def test_reproducible_and_per_sample_generators():
    for method in METHODS:
        kw = {"particles": 4} if method in ("smcdiff", "tds") else {}
        a, _, _ = _run(GM2, MASK2, Y2, 8, method=method, steps=5, **kw)
        b, _, _ = _run(GM2, MASK2, Y2, 8, method=method, steps=5, **kw)
        assert torch.equal(a, b), method
        gens = [torch.Generator().manual_seed(i) for i in range(8)]
        c, _, _ = _run(GM2, MASK2, Y2, 8, method=method, steps=5, generator=gens, **kw)
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        d, _, _ = _run(GM2, MASK2, Y2, 3, method=method, steps=5, generator=gens, **kw)
        # a sample does not depend on the batch it is drawn in
        torch.testing.assert_close(c[:3], d, rtol=1e-12, atol=1e-12, msg=method)


def test_which_samplers_each_method_runs():
    """Every registered sampler with every method: it runs, or it is refused with a reason."""
    refused = {
        "replacement": {"ode", "adaptive_sde"},
        "repaint": {"ode", "adaptive_sde"},
        "smcdiff": {"ode", "adaptive_sde", "ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
                    "dpmpp_3m_sde", "euler", "heun", "pc", "unipc", "unipc_2", "unipc_bh1"},
        "guidance": set(),
    }  # fmt: skip
    refused["tds"] = refused["smcdiff"]
    reasons = "adaptive steps|deterministic|multistep|evaluates the model once|only observes"
    for method in METHODS:
        for sampler in SAMPLERS:
            kwargs = {"method": method, "sampler": sampler, "steps": 4}
            # the learned-variance samplers take v from the network; a fixed v stands in
            kwargs.update(
                {"ancestral_learned": {"v": 1.0}, "ddim_learned": {"v": 0.0}}.get(sampler, {})
            )
            if method in ("smcdiff", "tds"):
                kwargs["particles"] = 2
            if sampler in refused[method]:
                with pytest.raises(ValueError, match=reasons):
                    _run(GM2, MASK2, Y2, 4, **kwargs)
            else:
                x, _, _ = _run(GM2, MASK2, Y2, 4, **kwargs)
                assert bool(torch.isfinite(x).all()), (method, sampler)
    # stochastic DDIM and a corrector-free PC have a Gaussian step: SMC takes them
    for method in ("smcdiff", "tds"):
        for sampler, options in (("ddim", {"eta": 1.0}), ("pc", {"corrector": "none"})):
            _run(GM2, MASK2, Y2, 4, method=method, particles=2, sampler=sampler, steps=4, **options)
        with pytest.raises(ValueError, match="evaluates the model once"):
            _run(GM2, MASK2, Y2, 4, method=method, particles=2, sampler="euler", steps=4,
                 S_churn=1.0)  # fmt: skip


def test_bad_input():
    sde, n = VPSDE(), 4
    obs = Y2.expand(n, 2).clone()
    model = GM2.score_fn(sde)
    with pytest.raises(ValueError, match=r"observation must have shape \(batch, \*\(3,\)\)"):
        inpaint(model, sde, Mask(torch.ones(3, dtype=torch.bool)), obs)
    bad = obs.clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or inf at observed entries"):
        inpaint(model, sde, Mask(MASK2), bad)
    with pytest.raises(ValueError, match="method must be one of"):
        inpaint(model, sde, Mask(MASK2), obs, method="ddnm")
    with pytest.raises(ValueError, match="particles is an option of method 'smcdiff' and 'tds'"):
        inpaint(model, sde, Mask(MASK2), obs, method="repaint", particles=4)
    with pytest.raises(ValueError, match="particles must be an integer >= 1"):
        inpaint(model, sde, Mask(MASK2), obs, method="tds", particles=0)
    with pytest.raises(ValueError, match="ess_threshold must lie in"):
        inpaint(model, sde, Mask(MASK2), obs, method="smcdiff", ess_threshold=1.5)
    low = Mask(torch.ones(1, 2, 2, dtype=torch.bool)) @ Downsample((1, 4, 4), 2)
    with pytest.raises(ValueError, match="no closed-form pseudo-inverse.*method='guidance'"):
        inpaint(lambda x, t: -x, sde, low, torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="operator must be a LinearOperator"):
        inpaint(model, sde, MASK2, obs)
    with pytest.raises(ValueError, match="cond must have the batch size 4"):
        inpaint(model, sde, Mask(MASK2), obs, cond=torch.zeros(3))
    for method in ("replacement", "tds"):
        with pytest.raises(FloatingPointError, match=f"samples of method '{method}'.*NaN"):
            inpaint(lambda x, t: x * math.nan, sde, Mask(MASK2), obs, method=method, steps=3)
