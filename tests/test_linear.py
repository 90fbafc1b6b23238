"""Linear SDEs: closed forms against autograd defaults, finite differences and the papers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PlainLinearSDE, linear_sdes, time_grid
from hypothesis import given, settings
from hypothesis import strategies as st

from sdekit.linear import EDMSDE, OUSDE, VESDE, VPSDE, LinearSDE, SubVPSDE
from sdekit.schedules import CosineBeta, LinearBeta

SDE_NAMES = list(linear_sdes())
SETTINGS = settings(derandomize=True, deadline=None, max_examples=25)


def _t(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float64)


def _log_uniform_time(sde: LinearSDE, u: float) -> torch.Tensor:
    """u in [0, 1] -> t from t_min to T, log-spaced so both ends get probed."""
    return _t(sde.t_min * (sde.T / sde.t_min) ** u)


def _central_difference(fn, t: torch.Tensor, T: float) -> torch.Tensor:
    # alpha, sigma^2 and log alpha are smooth on the scale of T (down to t = 0), so h = 1e-6 T:
    # truncation O((h / scale)^2) <= 1e-7 even for the cosine schedule's scale 1 - T = 5e-3,
    # rounding ~ 1e-16 / h
    h = torch.minimum(torch.full_like(t, 1e-6 * T), 0.5 * t)
    return (fn(t + h) - fn(t - h)) / (2 * h)


# ---------------------------------------------------------------- closed forms from the papers


def test_vp_closed_form_song_eq_33():
    """Song et al. 2021, eq. 33: mean coefficient exp(-t^2 (b1 - b0)/4 - t b0 / 2)."""
    sde, t = VPSDE(0.1, 20.0), time_grid(VPSDE())
    log_mean = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    torch.testing.assert_close(sde.alpha(t), torch.exp(log_mean), rtol=1e-14, atol=0)
    torch.testing.assert_close(
        sde.sigma(t), torch.sqrt(1 - torch.exp(2 * log_mean)), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(sde.g2(t), 0.1 + t * (20.0 - 0.1), rtol=1e-14, atol=0)


def test_subvp_closed_form_song_eq_12():
    sde, t = SubVPSDE(0.1, 20.0), time_grid(SubVPSDE())
    B = 0.1 * t + 0.5 * t**2 * (20.0 - 0.1)
    torch.testing.assert_close(sde.sigma(t), 1 - torch.exp(-B), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        sde.g2(t), (0.1 + t * (20.0 - 0.1)) * (1 - torch.exp(-2 * B)), rtol=1e-12, atol=0
    )


def test_ve_closed_form_song_eq_9():
    sde, t = VESDE(0.01, 50.0), time_grid(VESDE())
    sigma = 0.01 * (50.0 / 0.01) ** t
    torch.testing.assert_close(sde.sigma(t), sigma, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.g2(t), sigma**2 * 2 * math.log(50.0 / 0.01), rtol=1e-13, atol=0)
    assert torch.equal(sde.alpha(t), torch.ones_like(t))


def test_cosine_vp_alpha_bar_nichol_dhariwal_eq_17():
    sde = VPSDE.cosine()
    t = time_grid(sde)

    def f(u):
        return torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    torch.testing.assert_close(sde.alpha(t) ** 2, f(t) / f(torch.zeros(1, dtype=t.dtype)))
    assert isinstance(sde.schedule, CosineBeta) and sde.T == 0.9946


def test_edm_and_ou_closed_forms():
    edm, t = EDMSDE(), time_grid(EDMSDE())
    assert torch.equal(edm.sigma(t), t) and torch.equal(edm.g2(t), 2 * t)
    ou = OUSDE(theta=0.7, g=1.3, T=3.0)
    t = time_grid(ou)
    torch.testing.assert_close(ou.alpha(t), torch.exp(-0.7 * t))
    var = 1.3**2 / (2 * 0.7) * (1 - torch.exp(-1.4 * t))
    torch.testing.assert_close(ou.sigma(t) ** 2, var)
    assert ou.prior_std == pytest.approx(math.sqrt(1.3**2 / 1.4), rel=1e-15)


# ------------------------------------------------ closed forms equal the autograd defaults


@pytest.mark.parametrize("name", SDE_NAMES)
def test_closed_form_f_g2_equal_autograd_defaults(name):
    sde = linear_sdes()[name]
    t = time_grid(sde)
    torch.testing.assert_close(sde.f(t), LinearSDE.f(sde, t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sde.g2(t), LinearSDE.g2(sde, t), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_log_forms_and_log_snr_match_alpha_sigma(name):
    sde = linear_sdes()[name]
    t = time_grid(sde)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    torch.testing.assert_close(sde.log_alpha(t), torch.log(alpha), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sde.log_sigma(t), torch.log(sigma), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sde.log_snr(t), 2 * torch.log(alpha / sigma), rtol=1e-12, atol=1e-12)


def test_plain_sde_defaults_match_hand_derivation():
    sde, t = PlainLinearSDE(), time_grid(PlainLinearSDE())
    torch.testing.assert_close(sde.f(t), -1 / (1 + t))
    torch.testing.assert_close(sde.g2(t), 2 * t / (1 + t) ** 2)
    torch.testing.assert_close(sde.log_snr(t), -2 * torch.log(t))


# --------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("name", SDE_NAMES)
def test_g2_is_dsigma2_dt_minus_2f_sigma2(name):
    sde = linear_sdes()[name]
    t = time_grid(sde, margin=1e-4)
    dsigma2 = _central_difference(lambda u: sde.sigma(u) ** 2, t, sde.T)
    torch.testing.assert_close(
        sde.g2(t), dsigma2 - 2 * sde.f(t) * sde.sigma(t) ** 2, rtol=1e-6, atol=0
    )
    dlog_alpha = _central_difference(sde.log_alpha, t, sde.T)
    torch.testing.assert_close(sde.f(t), dlog_alpha, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", SDE_NAMES)
@SETTINGS
@given(u=st.floats(0.0, 1.0), m0=st.floats(-3.0, 3.0), v0=st.floats(0.0, 4.0))
def test_marginal_moments_solve_moment_odes(name, u, m0, v0):
    r"""Data with mean m0 and variance v0: :math:`m = \alpha m_0`,
    :math:`v = \alpha^2 v_0 + \sigma^2` obey
    :math:`\dot m = f m` and :math:`\dot v = 2 f v + g^2` (Särkkä & Solin 2019, eq. 6.2)."""
    sde = linear_sdes()[name]
    t = _log_uniform_time(sde, u).clamp(max=sde.T - 1e-4)

    def mean(s):
        return sde.alpha(s) * m0

    def var(s):
        return sde.alpha(s) ** 2 * v0 + sde.sigma(s) ** 2

    f, g2 = sde.f(t), sde.g2(t)
    torch.testing.assert_close(
        _central_difference(mean, t, sde.T), f * mean(t), rtol=1e-6, atol=1e-9
    )
    torch.testing.assert_close(
        _central_difference(var, t, sde.T), 2 * f * var(t) + g2, rtol=1e-6, atol=1e-9
    )


# ------------------------------------------------------------------------------- log-SNR


@pytest.mark.parametrize("name", SDE_NAMES)
def test_log_snr_strictly_decreasing(name):
    sde = linear_sdes()[name]
    t = torch.linspace(sde.t_min, sde.T, 2001, dtype=torch.float64)
    assert bool((sde.log_snr(t).diff() < 0).all())


@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("inverse", ["closed_form", "bisection"])
@SETTINGS
@given(u=st.floats(0.0, 1.0), near_end=st.booleans())
def test_log_snr_inverse_round_trip(name, inverse, u, near_end):
    sde = linear_sdes()[name]
    # near_end probes T - (T - t_min) * 1e-6 ... T, else log-uniform over [t_min, T]
    t = _t(sde.T - (sde.T - sde.t_min) * 1e-6 * u) if near_end else _log_uniform_time(sde, u)
    lam = sde.log_snr(t)
    back = (
        sde.log_snr_inverse(lam)
        if inverse == "closed_form"
        else LinearSDE.log_snr_inverse(sde, lam)
    )
    torch.testing.assert_close(back, t, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_log_snr_inverse_float32_small_t(name):
    """float32 round trip near t_min is as accurate as the float32 log-SNR allows.

    An error of a few ulp in lambda moves t by ulp * |lambda| / |dlambda/dt| (large for VE, whose
    lambda barely moves there).
    """
    sde = linear_sdes()[name]
    t64 = torch.tensor([sde.t_min, 2 * sde.t_min, 0.5 * sde.T], dtype=torch.float64)
    lam = sde.log_snr(t64)
    dlam = LinearSDE.log_snr(sde, t64.requires_grad_(True))
    (dlam_dt,) = torch.autograd.grad(dlam.sum(), t64)
    eps32 = torch.finfo(torch.float32).eps
    tol = 8 * eps32 * (1 + lam.abs() / (t64 * dlam_dt).abs())
    t = t64.detach().float()
    back = sde.log_snr_inverse(sde.log_snr(t)).double()
    assert bool(((back - t.double()).abs() / t.double() <= tol).all()), (back, t, tol)


# ----------------------------------------------------------------- kernels and marginals


@pytest.mark.parametrize("name", SDE_NAMES)
@SETTINGS
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0), c=st.floats(0.0, 1.0))
def test_transition_composes(name, a, b, c):
    """Kernel s -> u then u -> t is s -> t; marginal(s) then kernel s -> t is marginal(t)."""
    sde = linear_sdes()[name]
    s, u, t = sorted(sde.T * v for v in (a, b, c))
    s, u, t = _t(s), _t(u), _t(t)
    a_us, s_us = sde.transition(s, u)
    a_tu, s_tu = sde.transition(u, t)
    a_ts, s_ts = sde.transition(s, t)
    torch.testing.assert_close(a_tu * a_us, a_ts, rtol=1e-12, atol=0)
    torch.testing.assert_close(a_tu**2 * s_us**2 + s_tu**2, s_ts**2, rtol=1e-10, atol=1e-14)
    alpha_s, sigma_s = sde.marginal(s)
    alpha_t, sigma_t = sde.marginal(t)
    torch.testing.assert_close(a_ts * alpha_s, alpha_t, rtol=1e-12, atol=0)
    torch.testing.assert_close(a_ts**2 * sigma_s**2 + s_ts**2, sigma_t**2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", [n for n in SDE_NAMES if n != "ve"])
def test_transition_from_zero_is_marginal(name):
    """Where the SDE starts from the data itself (alpha(0) = 1, sigma(0) = 0)."""
    sde = linear_sdes()[name]
    t = time_grid(sde)
    alpha_ts, sigma_ts = sde.transition(torch.zeros_like(t), t)
    alpha, sigma = sde.marginal(t)
    torch.testing.assert_close(alpha_ts, alpha, rtol=1e-13, atol=0)
    torch.testing.assert_close(sigma_ts, sigma, rtol=1e-13, atol=0)


def test_ve_marginal_at_zero_is_sigma_min_smoothing():
    sde = VESDE(0.01, 50.0)
    alpha, sigma = sde.marginal(_t(0.0))
    assert float(alpha) == 1.0 and float(sigma) == pytest.approx(0.01, rel=1e-14)
    _, sigma_ts = sde.transition(_t(0.0), _t(1.0))
    assert float(sigma_ts) ** 2 == pytest.approx(50.0**2 - 0.01**2, rel=1e-13)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_perturb(name):
    sde = linear_sdes()[name]
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(4, generator=gen, dtype=torch.float64) * sde.T
    alpha, sigma = sde.marginal(t)
    expected = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * noise
    torch.testing.assert_close(sde.perturb(x0, t, noise), expected)


def test_perturb_statistics_match_marginal():
    """Monte-Carlo: 200k perturbed N(1, 0.5^2) samples: mean alpha, var alpha^2/4 + sigma^2."""
    sde = VPSDE()
    gen = torch.Generator().manual_seed(3)
    n = 200_000
    x0 = 1 + 0.5 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    t = torch.full((n,), 0.3, dtype=torch.float64)
    xt = sde.perturb(x0, t, torch.randn(n, 1, generator=gen, dtype=torch.float64))
    alpha, sigma = (float(v[0]) for v in sde.marginal(t[:1]))
    # standard errors: sqrt(var / n) ~ 2e-3 for the mean and ~ 3e-3 for the variance
    assert float(xt.mean()) == pytest.approx(alpha, abs=1e-2)
    assert float(xt.var()) == pytest.approx(alpha**2 * 0.25 + sigma**2, abs=1.5e-2)


# -------------------------------------------------------------------------------- priors


@pytest.mark.parametrize("name", SDE_NAMES)
def test_prior_log_prob_is_normal(name):
    sde = linear_sdes()[name]
    x = torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    normal = torch.distributions.Normal(0.0, sde.prior_std)
    torch.testing.assert_close(sde.prior_log_prob(x), normal.log_prob(x).flatten(1).sum(1))


@pytest.mark.parametrize("name", SDE_NAMES)
def test_prior_density_integrates_to_one_and_matches_p_T(name):
    sde = linear_sdes()[name]
    s = sde.prior_std
    x = torch.linspace(-12 * s, 12 * s, 40001, dtype=torch.float64)
    mass = torch.trapezoid(sde.prior_log_prob(x[:, None]).exp(), x)
    assert float(mass) == pytest.approx(1.0, abs=1e-10)
    # the prior is (close to) the marginal noise level at T
    assert s == pytest.approx(float(sde.sigma(_t(sde.T))), rel=5e-2)


def test_prior_sample_std():
    for sde in linear_sdes().values():
        x = sde.prior_sample((20_000, 2), generator=torch.Generator().manual_seed(0))
        assert x.dtype == torch.float32 and x.shape == (20_000, 2)
        # std error of the sample std is ~ 0.5 %
        assert float(x.std()) == pytest.approx(sde.prior_std, rel=0.02)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: VPSDE(beta_min=0.0), "beta_min"),
        (lambda: VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: VPSDE(beta_max=-1.0), "beta_max"),
        (lambda: VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: VPSDE(beta_min=math.nan), "beta_min"),
        (lambda: SubVPSDE(beta_min=0.0), "beta_min"),
        (lambda: LinearBeta(0.1, -20.0), "beta_max"),
        (lambda: VPSDE.cosine(T=1.0), "T"),
        (lambda: VPSDE(T=0.0), "T"),
        (lambda: VPSDE(t_min=1.0), "t_min"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: VESDE(sigma_max=-1.0), "sigma_max"),
        (lambda: VESDE(sigma_min=5.0, sigma_max=5.0), "sigma_min must be < sigma_max"),
        (lambda: VESDE(sigma_min=50.0, sigma_max=1.0), "sigma_min must be < sigma_max"),
        (lambda: EDMSDE(sigma_min=-0.002), "sigma_min"),
        (lambda: EDMSDE(sigma_min=80.0, sigma_max=80.0), "sigma_min must be < sigma_max"),
        (lambda: OUSDE(theta=0.0), "theta"),
        (lambda: OUSDE(g=-1.0), "g"),
        (lambda: CosineBeta(s=0.0), "s"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", SDE_NAMES)
def test_time_outside_domain_raises(name):
    sde = linear_sdes()[name]
    for bad in (-1e-3, sde.T * 1.001, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
            sde.marginal(_t(bad))
        with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
            sde.perturb(torch.zeros(1, 2), _t(bad), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"s must lie in \[0, T\]"):
        sde.transition(_t(-0.1), _t(sde.T))
    with pytest.raises(ValueError, match="s must be <= t"):
        sde.transition(_t(sde.T), _t(sde.T / 2))


def test_perturb_noise_shape_mismatch_raises():
    sde = VPSDE()
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        sde.perturb(torch.zeros(2, 3), torch.full((2,), 0.5), torch.zeros(2, 4))


def test_a_python_float_time_raises_naming_t():
    # Documented choice: times are (batch,) tensors everywhere; a float is refused, not guessed at.
    sde = VPSDE()
    with pytest.raises(TypeError, match=r"t must be a \(batch,\) tensor of times, got float 0.5"):
        sde.marginal(0.5)
    with pytest.raises(TypeError, match=r"s must be a \(batch,\) tensor"):
        sde.transition(0.1, torch.full((2,), 0.5))
    with pytest.raises(TypeError, match=r"t must be a \(batch,\) tensor"):
        sde.perturb(torch.zeros(2, 3), 0.5, torch.zeros(2, 3))
