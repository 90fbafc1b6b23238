"""The Gaussian-mixture oracle: exact p_t, score, samples and CDF under linear SDEs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PlainLinearSDE
from hypothesis import given, settings
from hypothesis import strategies as st

from sdekit.linear import EDMSDE, VESDE, VPSDE, SubVPSDE
from sdekit.metrics import w1_to_mixture
from sdekit.mixture import GaussianMixture

D = torch.distributions
SDES = {
    "vp": VPSDE(),
    "subvp": SubVPSDE(),
    "ve": VESDE(),
    "edm": EDMSDE(),
    "plain": PlainLinearSDE(),
}
MIXTURES = {
    "1d": ([0.2, 0.5, 0.3], [-2.0, 0.5, 3.0], [0.3, 1.0, 0.1]),
    "3d_iso": ([0.6, 0.4], [[1.0, -1.0, 0.0], [-2.0, 0.5, 2.0]], [0.5, 0.2]),
    "3d_diag": (
        [0.6, 0.4],
        [[1.0, -1.0, 0.0], [-2.0, 0.5, 2.0]],
        [[0.5, 0.1, 1.0], [0.2, 0.3, 0.4]],
    ),
}


def _reference(weights, means, stds, alpha=1.0, sigma=0.0) -> D.Distribution:
    """p_t built from torch.distributions: components N(alpha mu, alpha^2 s^2 + sigma^2)."""
    mu = torch.as_tensor(means, dtype=torch.float64).reshape(len(weights), -1)
    s = torch.as_tensor(stds, dtype=torch.float64)
    s = (s[:, None] if s.ndim == 1 else s).expand_as(mu)
    scale = torch.sqrt(alpha**2 * s**2 + sigma**2)
    components = D.Independent(D.Normal(alpha * mu, scale), 1)
    return D.MixtureSameFamily(
        D.Categorical(torch.as_tensor(weights, dtype=torch.float64)), components
    )


@pytest.mark.parametrize("mix", list(MIXTURES))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_log_prob_matches_torch_distributions(mix, sde_name):
    weights, means, stds = MIXTURES[mix]
    sde = SDES[sde_name]
    gm = GaussianMixture(weights, means, stds)
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(16, gm.dim, generator=gen, dtype=torch.float64)
    ref0 = _reference(weights, means, stds)
    torch.testing.assert_close(gm.log_prob(x), ref0.log_prob(x), rtol=1e-12, atol=1e-12)
    for t in (sde.t_min, 0.37 * sde.T, sde.T):
        tt = torch.tensor([t], dtype=torch.float64)
        ref = _reference(weights, means, stds, sde.alpha(tt), sde.sigma(tt))
        torch.testing.assert_close(gm.log_prob(x, t, sde), ref.log_prob(x), rtol=1e-12, atol=1e-12)
    # a per-sample time vector: each row is its own p_t
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(16, generator=gen, dtype=torch.float64)
    expected = torch.stack(
        [
            _reference(weights, means, stds, sde.alpha(t[i : i + 1]), sde.sigma(t[i : i + 1]))
            .log_prob(x[i : i + 1])
            .squeeze(0)
            for i in range(16)
        ]
    )
    torch.testing.assert_close(gm.log_prob(x, t, sde), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mix", list(MIXTURES))
@settings(derandomize=True, deadline=None, max_examples=10)
@given(u=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_score_is_gradient_of_log_prob(mix, u, seed):
    gm = GaussianMixture(*MIXTURES[mix])
    sde = VPSDE()
    t = torch.full((8,), sde.t_min + u * (sde.T - sde.t_min), dtype=torch.float64)
    x = 2 * torch.randn(
        8, gm.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, t, sde).sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), t, sde), grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gm.score_fn(sde)(x.detach(), t), grad, rtol=1e-10, atol=1e-10)
    (grad0,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    torch.testing.assert_close(gm.score(x.detach()), grad0, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mix", ["1d", "3d_diag"])
def test_sample_moments(mix):
    weights, means, stds = MIXTURES[mix]
    gm, sde, n = GaussianMixture(weights, means, stds), VESDE(0.01, 5.0), 100_000
    for t in (None, 0.5):
        ref = _reference(weights, means, stds, *(sde.marginal(torch.tensor([t])) if t else (1, 0)))
        x = gm.sample(n, t, sde if t else None, generator=torch.Generator().manual_seed(1))
        assert x.shape == (n, gm.dim) and x.dtype == torch.float64
        mean, var = ref.mean, ref.variance
        # 5 standard errors: sqrt(var / n) for the mean, ~sqrt(2 var^2 / n) (+ kurtosis) for var
        assert bool(((x.mean(0) - mean).abs() <= 5 * torch.sqrt(var / n)).all())
        assert bool(((x.var(0) - var).abs() <= 10 * var * math.sqrt(2 / n)).all())
        if (
            mix == "1d"
        ):  # Kolmogorov-Smirnov against the exact CDF; 1.95 / sqrt(n) is its 0.1 % level
            xs = torch.sort(x[:, 0]).values
            cdf = gm.cdf(xs, t, sde if t else None)
            ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max()
            assert float(ks) < 1.95 / math.sqrt(n)


def test_sample_dtype_and_reproducible():
    gm = GaussianMixture(*MIXTURES["3d_iso"])
    a = gm.sample(5, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    b = gm.sample(5, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "plain"])
def test_cdf_is_integral_of_density(sde_name):
    sde = SDES[sde_name]
    gm = GaussianMixture(*MIXTURES["1d"])
    for t in (None, 0.05 * sde.T, 0.6 * sde.T):
        s = sde if t is not None else None
        hi = 8 + 6 * (float(sde.sigma(torch.tensor([t]))) if t else 0.0)
        x = torch.linspace(-hi, hi, 200_001, dtype=torch.float64)
        density = gm.log_prob(x[:, None], t, s).exp()
        # cumulative trapezoid; error h^2/12 |p'| ~ 1e-9 on this grid
        integral = torch.cat(
            [x.new_zeros(1), torch.cumsum(0.5 * (density[1:] + density[:-1]) * x.diff(), 0)]
        )
        cdf = gm.cdf(x, t, s)
        torch.testing.assert_close(cdf - cdf[0], integral, rtol=0, atol=1e-7)
        assert float(cdf[0]) < 1e-6 and float(cdf[-1]) > 1 - 1e-6


def test_narrow_far_modes_stay_finite():
    gm = GaussianMixture([0.5, 0.5], [[-50.0, 0.0], [50.0, 1.0]], 1e-3)
    x = torch.tensor(
        [[0.0, 0.0], [-50.0, 0.0], [50.0, 1.0], [49.9, 1.0], [1e3, -1e3]], dtype=torch.float64
    )
    vp = VPSDE()
    for t, sde in ((None, None), (vp.t_min, vp), (0.5, vp)):
        for dtype in (torch.float64, torch.float32):
            xd = x.to(dtype)
            assert bool(torch.isfinite(gm.log_prob(xd, t, sde)).all())
            assert bool(torch.isfinite(gm.score(xd, t, sde)).all())
    # at x = (0, 0) both densities underflow (exp(-1.25e9)), but mode 1 is nearer by
    # (2501 - 2500) / (2 s^2) = 5e5 nats: the score is exactly -(x - mu_1) / s^2
    torch.testing.assert_close(gm.score(x[:1]), torch.tensor([[-5e7, 0.0]], dtype=torch.float64))
    # at a mode the log-density is log(w) + the Gaussian peak value
    peak = math.log(0.5) - 2 * math.log(1e-3) - math.log(2 * math.pi)
    assert float(gm.log_prob(x[1:2])) == pytest.approx(peak, rel=1e-12)


@pytest.mark.parametrize("mix", list(MIXTURES))
def test_at_matches_log_prob(mix):
    gm, sde = GaussianMixture(*MIXTURES[mix]), SubVPSDE()
    x = torch.randn(10, gm.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pt = gm.at(0.3, sde)
    torch.testing.assert_close(pt.log_prob(x), gm.log_prob(x, 0.3, sde), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(pt.score(x), gm.score(x, 0.3, sde), rtol=1e-13, atol=1e-13)


def test_project_is_marginal_of_v_dot_x():
    """The density of v.x at y is the line integral of p over {x : v.x = y} (2D, by quadrature)."""
    gm = GaussianMixture([0.3, 0.7], [[1.0, -1.0], [-1.0, 2.0]], [[0.5, 0.2], [0.3, 0.8]])
    v = torch.tensor([0.6, 0.8], dtype=torch.float64)
    v_perp = torch.tensor([-0.8, 0.6], dtype=torch.float64)
    proj = gm.project(v)
    y = torch.linspace(-3, 3, 13, dtype=torch.float64)
    s = torch.linspace(-10, 10, 8001, dtype=torch.float64)
    points = y[:, None, None] * v + s[None, :, None] * v_perp  # (13, 8001, 2)
    density = gm.log_prob(points.reshape(-1, 2)).exp().reshape(13, 8001)
    marginal = torch.trapezoid(density, s, dim=1)
    torch.testing.assert_close(proj.log_prob(y[:, None]).exp(), marginal, rtol=1e-8, atol=1e-12)
    # and the same law as projected samples (W1 of 50k samples to the projected CDF)
    samples = gm.sample(50_000, generator=torch.Generator().manual_seed(0)) @ v
    assert w1_to_mixture(samples, proj) < 0.02


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0.5, -0.1, 0.6], [0.0, 1.0, 2.0], 1.0), "weights must be finite and >= 0"),
        (([0.5, 0.6], [0.0, 1.0], 1.0), "weights must sum to 1"),
        (([0.5, 0.5], [0.0, 1.0, 2.0], 1.0), "weights must be"),
        (([[0.5, 0.5]], [0.0, 1.0], 1.0), "weights must be"),
        (([0.5, 0.5], [0.0, 1.0], [1.0, 1.0, 1.0]), "stds must be"),
        (([0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]], [[1.0, 1.0, 1.0]] * 2), "stds must be"),
        (([0.5, 0.5], [0.0, 1.0], [1.0, 0.0]), "stds must be finite and > 0"),
        (([0.5, 0.5], [0.0, math.nan], 1.0), "means must be finite"),
    ],
)
def test_bad_construction(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_bad_calls():
    gm = GaussianMixture(*MIXTURES["3d_iso"])
    vp = VPSDE()
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\)"):
        gm.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\)"):
        gm.score(torch.zeros(4, 3, 1))
    with pytest.raises(ValueError, match="sde must be given"):
        gm.log_prob(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        gm.log_prob(torch.zeros(4, 3), 1.5, vp)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        gm.score(torch.zeros(2, 3), torch.tensor([0.5, -0.5]), vp)
    with pytest.raises(ValueError, match="n must be >= 1"):
        gm.sample(0)
    with pytest.raises(ValueError, match="t must be a single time"):
        gm.sample(3, torch.tensor([0.1, 0.2]), vp)
    with pytest.raises(ValueError, match="cdf is defined for a 1D mixture"):
        gm.cdf(torch.zeros(3))
    with pytest.raises(ValueError, match=r"direction must have shape \(3,\)"):
        gm.project(torch.ones(2))


def _numerical_conditional(gm, mask, y, grid, noise_std=0.0):
    """p(x_u | y) on the grid of x_u (rows: points), by brute force: the joint density at
    (x_o, x_u), integrated over x_o against the noise density when noise_std > 0, normalized by
    quadrature over the grid (a tensor product of 1D grids, trapezoid in each)."""
    axes = grid  # list of 1D grids, one per unobserved coordinate
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    d = gm.dim
    if noise_std == 0:
        x = torch.empty(mesh.shape[0], d, dtype=torch.float64)
        x[:, mask], x[:, ~mask] = y[mask], mesh
        density = gm.log_prob(x).exp()
    else:
        (o,) = torch.nonzero(mask)[0]  # one observed coordinate
        xo = torch.linspace(float(y[o]) - 12 * noise_std - 6, float(y[o]) + 12 * noise_std + 6, 601,
                            dtype=torch.float64)  # fmt: skip
        x = torch.empty(xo.shape[0], mesh.shape[0], d, dtype=torch.float64)
        x[..., o], x[..., ~mask] = xo[:, None], mesh
        joint = gm.log_prob(x.reshape(-1, d)).exp().reshape(xo.shape[0], -1)
        kernel = torch.exp(-0.5 * ((xo - y[o]) / noise_std) ** 2)[:, None]
        density = torch.trapezoid(joint * kernel, xo, dim=0)
    density = density.reshape(*(a.shape[0] for a in axes))
    total = density
    for i in reversed(range(len(axes))):
        total = torch.trapezoid(total, axes[i], dim=i)
    return (density / total).reshape(-1), mesh


@pytest.mark.parametrize(
    ("observed", "noise_std"),
    [((True, False), 0.0), ((False, True), 0.0), ((True, False), 0.4),
     ((True, False, True, False), 0.0), ((False, True, True, True), 0.0)],
)  # fmt: skip
def test_condition_is_the_numerical_conditional(observed, noise_std):
    """condition() against p(x_u | y) = p(y, x_u) / int p(y, x_u) dx_u on a grid (2D and 4D
    mixtures; with noise, p(y | x_o) integrated out by quadrature)."""
    mask = torch.tensor(observed)
    d = mask.numel()
    gen = torch.Generator().manual_seed(d)
    means = 2 * torch.randn(3, d, generator=gen, dtype=torch.float64)
    stds = 0.4 + torch.rand(3, d, generator=gen, dtype=torch.float64)
    gm = GaussianMixture([0.5, 0.3, 0.2], means, stds)
    y = torch.full((d,), math.nan, dtype=torch.float64)
    y[mask] = torch.tensor([0.3, -0.8, 1.1])[: int(mask.sum())].double()
    free = int((~mask).sum())
    axes = [torch.linspace(-9, 9, 361 if free == 1 else 181, dtype=torch.float64)] * free
    expected, points = _numerical_conditional(gm, mask, y, axes, noise_std)
    post = gm.condition(mask, y, noise_std=noise_std)
    assert post.dim == free
    torch.testing.assert_close(post.log_prob(points).exp(), expected, rtol=0, atol=1e-6)
    # the conditional differs from the prior marginal of x_u (the test can fail)
    prior_u = GaussianMixture(gm.weights, means[:, ~mask], stds[:, ~mask])
    assert float((prior_u.log_prob(points).exp() - expected).abs().max()) > 1e-2


def test_condition_without_observations_and_bad_input():
    gm = GaussianMixture(*MIXTURES["3d_diag"])
    nothing = gm.condition(torch.zeros(3, dtype=torch.bool), torch.zeros(3))
    torch.testing.assert_close(nothing.weights, gm.weights)
    mask = torch.tensor([True, False, False])
    y = torch.tensor([0.5, math.nan, math.inf])  # ignored where unobserved
    assert gm.condition(mask, y).dim == 2
    bad = [
        ((torch.tensor([1, 0, 0]), y), {}, "observed_mask must be a bool tensor of shape"),
        ((torch.tensor([True, False]), y), {}, "observed_mask must be a bool tensor of shape"),
        ((torch.ones(3, dtype=torch.bool), torch.zeros(3)), {}, "at least one coordinate"),
        ((mask, torch.zeros(2)), {}, r"values must have shape \(3,\)"),
        ((mask, torch.tensor([math.nan, 0.0, 0.0])), {}, "values must be finite at the observed"),
        ((mask, y), {"noise_std": -0.1}, "noise_std must be a finite number >= 0"),
    ]
    for args, kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            gm.condition(*args, **kwargs)
