"""Exact likelihoods against the analytic Gaussian-mixture density.

With the oracle score the probability-flow ODE carries the mixture's p_{t0} to its p_T exactly, so
with the exact p_T as prior the ODE log-likelihood must equal the closed-form log-density; every
deviation below is a prediction (prior mismatch, Hutchinson noise, dequantization bound) checked
against its own formula.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit
from sdekit.likelihood import bits_per_dim, draw_probes, hutchinson_divergence, log_likelihood

GM1 = sdekit.GaussianMixture([0.25, 0.75], [-1.5, 1.0], [0.3, 0.5])
GM2 = sdekit.GaussianMixture([0.3, 0.7], [[-2.0, 1.0], [1.5, -0.5]], [[0.5, 0.8], [0.7, 0.3]])


def exact_prior(gm, sde):
    return lambda x: gm.log_prob(x, sde.T, sde)


def data(gm, n, seed=0):
    return gm.sample(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gm", [GM1, GM2], ids=["1d", "2d"])
def test_matches_analytic_density_from_time_zero(gm):
    sde = sdekit.VPSDE()
    x = data(gm, 32)
    log_p, info = log_likelihood(
        gm.score_fn(sde), sde, x, t_min=0.0, prior_log_prob=exact_prior(gm, sde)
    )
    assert log_p.dtype == torch.float64 and log_p.shape == (32,)
    assert (log_p - gm.log_prob(x)).abs().max() < 1e-3
    assert info.nfe > 0 and info.x_T.shape == x.shape
    torch.testing.assert_close(log_p, info.prior_log_prob + info.divergence_integral)


@pytest.mark.parametrize("sde", [sdekit.VESDE(), sdekit.EDMSDE(sigma_max=20.0)], ids=["ve", "edm"])
def test_matches_smoothed_density_at_t_min(sde):
    # VE and EDM are singular at t = 0: the ODE from t_min gives the law p_{t_min}.
    x = data(GM2, 32, seed=1)
    log_p, _ = log_likelihood(GM2.score_fn(sde), sde, x, prior_log_prob=exact_prior(GM2, sde))
    assert (log_p - GM2.log_prob(x, sde.t_min, sde)).abs().max() < 1e-3


def test_vp_and_subvp_agree_on_the_same_data():
    x = data(GM2, 32, seed=2)
    results = []
    for sde in (sdekit.VPSDE(), sdekit.SubVPSDE()):
        log_p, _ = log_likelihood(
            GM2.score_fn(sde), sde, x, t_min=0.0, prior_log_prob=exact_prior(GM2, sde)
        )
        results.append(log_p)
    assert (results[0] - results[1]).abs().max() < 1e-3
    assert (results[0] - GM2.log_prob(x)).abs().max() < 1e-3


def test_standard_normal_prior_error_is_the_prior_mismatch():
    # A short VP horizon leaves p_T far from N(0, I); the ODE part is unchanged by the prior, so the
    # error is log N(x_T) - log p_T(x_T) per sample, and its mean over x ~ p_0 (x_T ~ p_T) is
    # -KL(p_T || N(0, I)), computed here by quadrature.
    sde = sdekit.VPSDE(beta_max=5.0)
    gm = sdekit.GaussianMixture([0.5, 0.5], [-4.0, 4.0], [0.5, 0.5])
    x = data(gm, 200, seed=3)
    log_p, info = log_likelihood(gm.score_fn(sde), sde, x, t_min=0.0)
    error = log_p - gm.log_prob(x)
    mismatch = sde.prior_log_prob(info.x_T) - gm.log_prob(info.x_T, sde.T, sde)
    assert (error - mismatch).abs().max() < 1e-3
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64)[:, None]
    log_pT = gm.log_prob(grid, sde.T, sde)
    kl = torch.trapezoid(log_pT.exp() * (log_pT - sde.prior_log_prob(grid)), grid[:, 0])
    assert kl > 0.1  # the check below is not vacuous
    assert abs(float(error.mean() + kl)) < 4 * float(error.std()) / math.sqrt(len(error))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    # One point repeated: the trajectory is shared, only the (fixed) probes differ per copy.
    sde = sdekit.VPSDE()
    n = 300
    x = data(GM2, 1, seed=4).expand(n, 2).contiguous()
    kwargs = dict(t_min=0.0, prior_log_prob=exact_prior(GM2, sde), method="midpoint", steps=20)
    exact, _ = log_likelihood(GM2.score_fn(sde), sde, x[:1], **kwargs)
    estimate, _ = log_likelihood(
        GM2.score_fn(sde),
        sde,
        x,
        divergence="hutchinson",
        probe=probe,
        generator=torch.Generator().manual_seed(5),
        **kwargs,
    )
    assert estimate.std() > 1e-3  # the probes are random
    assert abs(float(estimate.mean() - exact[0])) < 4 * float(estimate.std()) / math.sqrt(n)


def test_each_probe_is_held_fixed_for_the_whole_solve():
    # A single Gaussian with diagonal stds has a diagonal drift Jacobian diag(c_1(t), c_2(t)), so a
    # probe e held fixed gives exactly e_1^2 C_1 + e_2^2 C_2 with C_i the 1D divergence integrals; a
    # probe redrawn per evaluation would not.
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture([1.0], [[0.3, -0.2]], [[0.5, 1.5]])
    x = data(gm, 16, seed=12)
    kwargs = dict(t_min=0.0, method="rk4", steps=10)
    _, info = log_likelihood(
        gm.score_fn(sde),
        sde,
        x,
        divergence="hutchinson",
        probe="gaussian",
        generator=torch.Generator().manual_seed(3),
        **kwargs,
    )
    eps = draw_probes(x, 1, "gaussian", torch.Generator().manual_seed(3))[0]
    expected = torch.zeros(16, dtype=torch.float64)
    for i, (mean, std) in enumerate([(0.3, 0.5), (-0.2, 1.5)]):
        marginal = sdekit.GaussianMixture([1.0], [mean], [std])
        _, one_d = log_likelihood(marginal.score_fn(sde), sde, x[:, i : i + 1], **kwargs)
        expected += eps[:, i] ** 2 * one_d.divergence_integral
    torch.testing.assert_close(info.divergence_integral, expected)


def test_more_probes_reduce_the_variance():
    sde = sdekit.VPSDE()
    x = data(GM2, 1, seed=6).expand(200, 2).contiguous()
    kwargs = dict(t_min=0.0, method="euler", steps=20, divergence="hutchinson")
    one, _ = log_likelihood(GM2.score_fn(sde), sde, x, probes=1, **kwargs)
    four, _ = log_likelihood(GM2.score_fn(sde), sde, x, probes=4, **kwargs)
    assert four.var() < 0.5 * one.var()  # 1/4 expected


@settings(derandomize=True, deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 4), gaussian=st.booleans())
def test_hutchinson_matches_exact_trace_on_a_linear_map(seed, d, gaussian):
    # For f(x) = A x the estimator is e^T A e per probe; averaged over all 2^d sign patterns (or in
    # expectation) it is tr A. Check the per-probe value against the closed form.
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    x = torch.randn(3, d, generator=g, dtype=torch.float64)
    probes = torch.randn(2, 3, d, generator=g, dtype=torch.float64)
    if not gaussian:
        probes = probes.sign()
    f, div = hutchinson_divergence(lambda z, t: z @ A.T, x, torch.zeros(3), probes)
    expected = torch.einsum("kbi,ij,kbj->b", probes, A, probes) / 2
    torch.testing.assert_close(div, expected)
    torch.testing.assert_close(f, x @ A.T)


@pytest.mark.parametrize(
    "method,stages", [("euler", 1), ("midpoint", 2), ("heun2", 2), ("heun3", 3), ("rk4", 4)]
)
def test_fixed_grid_does_the_nfe_it_says(method, stages):
    sde = sdekit.VPSDE()
    x = data(GM1, 8)
    log_p, info = log_likelihood(
        GM1.score_fn(sde),
        sde,
        x,
        t_min=0.0,
        method=method,
        steps=25,
        prior_log_prob=exact_prior(GM1, sde),
    )
    assert info.nfe == 25 * stages
    if method == "rk4":
        assert (log_p - GM1.log_prob(x)).abs().max() < 1e-3


def test_times_stay_in_the_interval():
    sde = sdekit.VPSDE()
    seen = []

    def score(x, t):
        seen.append(t)
        return GM2.score(x, t, sde)

    x = data(GM2, 16)
    log_likelihood(score, sde, x, t_min=1e-3, rtol=1e-3, atol=1e-3)
    seen = torch.cat(seen)
    assert seen.min() >= 1e-3 and seen.max() <= sde.T


def test_eps_prediction_gives_the_same_likelihood():
    sde = sdekit.VPSDE()

    def eps_model(x, t):  # the exact noise prediction -sigma * score
        return -sde.sigma(t)[:, None] * GM2.score(x, t, sde)

    x = data(GM2, 8, seed=7)
    kwargs = dict(method="rk4", steps=10)
    a, _ = log_likelihood(GM2.score_fn(sde), sde, x, **kwargs)
    b, _ = log_likelihood(eps_model, sde, x, prediction="eps", **kwargs)
    torch.testing.assert_close(a, b)


def test_image_shaped_data_and_float32():
    sde = sdekit.VPSDE()
    x = data(GM2, 8, seed=8)

    def image_score(z, t):
        return GM2.score(z.reshape(-1, 2), t, sde).reshape(z.shape)

    kwargs = dict(rtol=1e-4, atol=1e-4)
    flat, _ = log_likelihood(GM2.score_fn(sde), sde, x, **kwargs)
    image, info = log_likelihood(image_score, sde, x.reshape(8, 1, 1, 2), **kwargs)
    torch.testing.assert_close(image, flat)
    assert info.x_T.shape == (8, 1, 1, 2)
    single, _ = log_likelihood(GM2.score_fn(sde), sde, x.float(), **kwargs)
    assert single.dtype == torch.float32 and (single.double() - flat).abs().max() < 1e-2


def gaussian_bpd_setup():
    # A Gaussian in model space [-1, 1]: p_x = N(0.1, 0.3^2 I) in D = 4 dimensions.
    gm = sdekit.GaussianMixture([1.0], [[0.1] * 4], 0.3)
    sde = sdekit.VPSDE()
    kwargs = dict(t_min=0.0, prior_log_prob=exact_prior(gm, sde))
    return gm, sde, kwargs


def test_bits_per_dim_of_continuous_pixels_is_the_change_of_variables():
    gm, sde, kwargs = gaussian_bpd_setup()
    g = torch.Generator().manual_seed(9)
    pixels = (256 * torch.rand(16, 4, generator=g, dtype=torch.float64)).clamp(max=255.99)
    bpd, _ = bits_per_dim(gm.score_fn(sde), sde, pixels, dequantize=None, **kwargs)
    x = 2 * pixels / 256 - 1
    expected = -(gm.log_prob(x) + 4 * math.log(2 / 256)) / (4 * math.log(2))
    assert (bpd - expected).abs().max() < 1e-3 / (4 * math.log(2))
    torch.testing.assert_close(expected, -gm.log_prob(x) / (4 * math.log(2)) + 7)


@pytest.mark.parametrize("levels,gap", [(256, 0.01), (17, 0.1)])
def test_dequantized_bits_per_dim_bound_the_discrete_probability(levels, gap):
    # P(v) of the 8-bit pixels is a product of normal-CDF differences over the pixel bins; the mean
    # of the dequantized bpd is an upper bound on -log2 P(v) / D and, with a density nearly flat on
    # a bin, a tight one. An offset off by one bit per dimension fails this.
    gm, sde, kwargs = gaussian_bpd_setup()
    pixels = gm.sample(4, generator=torch.Generator().manual_seed(10))
    pixels = ((pixels + 1) * levels / 2).floor().clamp(0, levels - 1)
    repeats = 64
    bpd, _ = bits_per_dim(
        gm.score_fn(sde),
        sde,
        pixels.repeat(repeats, 1).double(),
        levels=levels,
        generator=torch.Generator().manual_seed(11),
        **kwargs,
    )
    mean_bpd = bpd.reshape(repeats, 4).mean(0)
    lo = 2 * pixels.double() / levels - 1
    hi = 2 * (pixels.double() + 1) / levels - 1
    normal = torch.distributions.Normal(0.1, 0.3)
    log_P = torch.log(normal.cdf(hi) - normal.cdf(lo)).sum(1)
    discrete_bpd = -log_P / (4 * math.log(2))
    assert (mean_bpd - discrete_bpd).min() > -1e-3
    assert (mean_bpd - discrete_bpd).max() < gap


def test_bits_per_dim_uint8_defaults_to_float32():
    gm, sde, kwargs = gaussian_bpd_setup()
    pixels = torch.full((2, 4), 140, dtype=torch.uint8)
    bpd, info = bits_per_dim(gm.score_fn(sde), sde, pixels, generator=torch.Generator(), **kwargs)
    assert bpd.dtype == torch.float32 and bpd.shape == (2,) and info.x_T.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(divergence="trace"), "divergence"),
        (dict(probe="uniform", divergence="hutchinson"), "probe"),
        (dict(probes=0, divergence="hutchinson"), "probes"),
        (dict(probes=2), "probes"),
        (dict(steps=10), "fixed-grid"),
        (dict(steps=0, method="rk4"), "steps"),
        (dict(method="rk4"), "method"),
        (dict(t_min=1.0), "t_min"),
        (dict(t_min=-0.1), "t_min"),
        (dict(prediction="noise"), "prediction"),
        (dict(rtol=0.0), "rtol"),
        (dict(atol=-1.0), "atol"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    sde = sdekit.VPSDE()
    with pytest.raises(ValueError, match=match):
        log_likelihood(GM1.score_fn(sde), sde, data(GM1, 2), **kwargs)


def test_bad_pixels_raise():
    gm, sde, _ = gaussian_bpd_setup()
    with pytest.raises(ValueError, match="integers in"):
        bits_per_dim(gm.score_fn(sde), sde, torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        bits_per_dim(gm.score_fn(sde), sde, torch.full((2, 4), 256.0), dequantize=None)
    with pytest.raises(ValueError, match="levels"):
        bits_per_dim(gm.score_fn(sde), sde, torch.zeros(2, 4), levels=1)
    with pytest.raises(ValueError, match="dequantize"):
        bits_per_dim(gm.score_fn(sde), sde, torch.zeros(2, 4), dequantize="gaussian")
    with pytest.raises(ValueError, match="x must be"):
        log_likelihood(gm.score_fn(sde), sde, torch.zeros(4))
    with pytest.raises(ValueError, match="float32 or float64"):
        log_likelihood(gm.score_fn(sde), sde, torch.zeros(2, 4, dtype=torch.float16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_runs_on_the_input_device():
    sde = sdekit.VPSDE()
    x = data(GM2, 16).cuda()
    log_p, info = log_likelihood(
        GM2.score_fn(sde),
        sde,
        x,
        t_min=0.0,
        prior_log_prob=exact_prior(GM2, sde),
        divergence="hutchinson",
        generator=torch.Generator("cuda").manual_seed(0),
    )
    assert log_p.device == x.device and info.x_T.device == x.device


# --- state-dependent diffusions: the divergence includes -1/2 sum_i d^2(G_i^2)/dx_i^2 ----------


class GeometricBrownianMotion(sdekit.SDE):
    r""":math:`\mathrm{d}x = \mu x\,\mathrm{d}t + s x\,\mathrm{d}w` per coordinate, on :math:`x > 0`.

    :math:`\log x_t = \log x_0 + (\mu - s^2/2)t + s w_t`, so a log-normal :math:`p_0` (log-mean
    :math:`m_0`, log-variance :math:`v_0`) stays log-normal with :math:`m_t = m_0 + (\mu - s^2/2)t`,
    :math:`v_t = v_0 + s^2 t`: :math:`\log p_t(x) = \sum_i -\frac{(\log x_i - m_t)^2}{2v_t}
    - \tfrac12\log(2\pi v_t) - \log x_i` and :math:`\nabla\log p_t = -(\log x - m_t)/(v_t x) - 1/x`.
    """

    mu, s, m0, v0 = 0.3, 0.6, 0.2, 0.25

    def drift(self, x, t):
        return self.mu * x

    def diffusion(self, x, t):
        return self.s * x

    def moments(self, t):
        return self.m0 + (self.mu - self.s**2 / 2) * t, self.v0 + self.s**2 * t

    def log_prob(self, x, t: float):
        m, v = self.moments(t)
        lx = x.log()
        return (-0.5 * (lx - m) ** 2 / v - 0.5 * math.log(2 * math.pi * v) - lx).sum(1)

    def score(self, x, t):
        m, v = self.moments(t[:, None])
        return -(x.log() - m) / (v * x) - 1 / x


class Pearson(sdekit.SDE):
    r""":math:`\mathrm{d}x = -3x\,\mathrm{d}t + \sqrt{1 + x^2}\,\mathrm{d}w`: zero stationary flux
    :math:`fp = \tfrac12 (Dp)'` gives :math:`p \propto (1 + x^2)^{-4}` (normaliser
    :math:`\int(1+x^2)^{-4} = 5\pi/16`), score :math:`-8x/(1 + x^2)`. Started there it stays there,
    and its probability-flow drift :math:`-3x + 4x - x` vanishes: :math:`\log p` is the prior's."""

    def drift(self, x, t):
        return -3 * x

    def diffusion(self, x, t):
        return torch.sqrt(1 + x**2)

    @staticmethod
    def log_prob(x):
        return (-4 * torch.log1p(x**2) - math.log(5 * math.pi / 16)).sum(1)

    @staticmethod
    def score(x, t):
        return -8 * x / (1 + x**2)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_geometric_brownian_motion_matches_the_log_normal_density(divergence):
    # Dropping d^2(G^2)/dx^2 = 2 s^2 makes every point s^2 T = 0.36 nats per coordinate too likely.
    # The drift's Jacobian is diagonal, so Rademacher probes give the exact trace.
    sde = GeometricBrownianMotion(T=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.exp(sde.m0 + math.sqrt(sde.v0) * torch.randn(16, 2, generator=g, dtype=torch.float64))
    log_p, _ = log_likelihood(
        sde.score,
        sde,
        x,
        t_min=0.0,
        divergence=divergence,
        prior_log_prob=lambda z: sde.log_prob(z, sde.T),
    )
    assert (log_p - sde.log_prob(x, 0.0)).abs().max() < 1e-4


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_pearson_process_at_stationarity(divergence):
    # The bug made it +1.0 nats (T = 1): -1/2 d^2(1 + x^2)/dx^2 = -1 per unit time left out.
    sde = Pearson(T=1.0)
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    log_p, _ = log_likelihood(
        sde.score, sde, x, t_min=0.0, divergence=divergence, prior_log_prob=sde.log_prob
    )
    assert (log_p - sde.log_prob(x)).abs().max() < 1e-8


# --- bad models and bad data ------------------------------------------------------------------


@pytest.mark.parametrize(
    "output, error, match",
    [
        (lambda x: x[:, :1], ValueError, r"model must return a tensor of shape \(4, 2\)"),
        (lambda x: (x, x), TypeError, "model must return a torch.Tensor.*not a tuple"),
        (lambda x: x.numpy(), TypeError, "model must return a torch.Tensor.*numpy"),
    ],
    ids=["broadcastable", "tuple", "numpy"],
)
@pytest.mark.parametrize("prediction", ["score", "eps"])
def test_a_model_output_of_the_wrong_kind_raises_naming_the_model(output, error, match, prediction):
    sde = sdekit.VPSDE()
    with pytest.raises(error, match=match):
        log_likelihood(lambda x, t: output(x.detach()), sde, data(GM2, 4), prediction=prediction)


def test_bad_data_raise_naming_x():
    sde = sdekit.VPSDE()
    x = data(GM2, 4)
    with pytest.raises(ValueError, match="batch >= 1"):
        log_likelihood(GM2.score_fn(sde), sde, x[:0])
    bad = x.clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(1 of 8 values\)"):
        log_likelihood(GM2.score_fn(sde), sde, bad)
    with pytest.raises(ValueError, match=r"float32 or float64.*x.float\(\)"):
        log_likelihood(GM2.score_fn(sde), sde, torch.ones(4, 2, dtype=torch.int64))


@pytest.mark.parametrize("kwargs", [dict(), dict(method="rk4", steps=4)], ids=["dopri5", "rk4"])
def test_a_non_finite_model_raises_instead_of_returning_nan(kwargs):
    sde = sdekit.VPSDE()

    def score(x, t):  # NaN for the second sample only, from t = 0.5 on
        s = GM2.score(x, t, sde)
        s[1] = torch.where(t[1] > 0.5, math.nan, s[1])
        return s

    with pytest.raises(FloatingPointError, match="could not take a step|1 of 4 samples"):
        log_likelihood(score, sde, data(GM2, 4), **kwargs)


def test_a_non_finite_prior_is_named():
    sde = sdekit.VPSDE()
    with pytest.raises(FloatingPointError, match="prior log-density"):
        log_likelihood(
            GM2.score_fn(sde), sde, data(GM2, 4), prior_log_prob=lambda z: -math.inf * z[:, 0]
        )


class _DropoutScore(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2)
        )

    def forward(self, x, t):
        return self.net(x)


def test_a_network_in_training_mode_is_refused():
    # Documented choice: refuse (rather than switch to eval behind the caller's back).
    torch.manual_seed(0)
    net = _DropoutScore().double()
    sde, x = sdekit.VPSDE(), data(GM2, 4)
    kwargs = dict(method="euler", steps=4)
    assert not torch.equal(net(x, None), net(x, None))  # in training mode the drift is random
    with pytest.raises(ValueError, match=r"training mode.*model.eval\(\)"):
        log_likelihood(net, sde, x, **kwargs)
    net.eval()
    first, _ = log_likelihood(net, sde, x, **kwargs)
    second, _ = log_likelihood(net, sde, x, **kwargs)
    assert torch.equal(first, second)


def test_a_general_sde_needs_a_score_model():
    with pytest.raises(ValueError, match="needs a LinearSDE.*prediction='score'"):
        log_likelihood(Pearson.score, Pearson(), torch.zeros(2, 1), prediction="eps")


def test_a_condition_reaches_the_model_and_gives_the_class_conditional_density():
    """With cond = a component index, the model is that component's exact score: the result is
    the exact log-density of the component (a Gaussian), not of the mixture."""
    from sdekit import VPSDE, GaussianMixture

    sde = VPSDE()
    components = [
        GaussianMixture([1.0], [[-1.0, 0.5]], 0.4),
        GaussianMixture([1.0], [[1.5, 0.0]], 0.6),
    ]

    def model(x, t, cond):
        scores = [c.score(x, t, sde) for c in components]
        return torch.where(cond[:, None] == 0, scores[0], scores[1])

    x = torch.tensor([[-1.0, 0.4], [1.2, 0.1], [0.0, 0.0]], dtype=torch.float64)
    cond = torch.tensor([0, 1, 1])
    t0 = torch.full((3,), sde.t_min, dtype=torch.float64)
    exact = torch.where(
        cond == 0, components[0].log_prob(x, t0, sde), components[1].log_prob(x, t0, sde)
    )

    def prior(x_T):
        T = torch.full((3,), sde.T, dtype=torch.float64)
        return torch.where(
            cond == 0, components[0].log_prob(x_T, T, sde), components[1].log_prob(x_T, T, sde)
        )

    log_p, _ = log_likelihood(model, sde, x, cond=cond, prior_log_prob=prior, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(log_p, exact, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="cond must have the batch size 3"):
        log_likelihood(model, sde, x, cond=torch.tensor([0, 1]))
