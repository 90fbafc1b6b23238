"""The continuous-time bound of linear SDEs: closed forms, the entropy identity, the DSM relation."""

import math

import pytest
import torch
from conftest import linear_sdes
from gaussian_chain import continuous_bound as closed_form
from gaussian_chain import eps_oracle

import sdekit
from sdekit.elbo import ContinuousBoundLoss, continuous_bound
from sdekit.likelihood import log_likelihood
from sdekit.losses import DenoisingScoreMatching

MU, S = [0.3, -0.5], [0.5, 0.8]
GM = sdekit.GaussianMixture([1.0], [MU], [S])
GM2 = sdekit.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [0.8, -0.3]], [[0.3, 0.5], [0.4, 0.2]])


@pytest.mark.parametrize("name", list(linear_sdes()))
def test_every_term_matches_the_closed_form_on_gaussian_data(name):
    sde = linear_sdes()[name]
    x0 = torch.tensor([[0.1, -1.2]], dtype=torch.float64).repeat(4000, 1)
    b = continuous_bound(eps_oracle(GM, sde), sde, x0, generator=torch.Generator().manual_seed(0))
    prior, diffusion, recon = closed_form(MU, S, sde, x0)
    torch.testing.assert_close(b.prior, prior, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.reconstruction, recon, rtol=1e-10, atol=1e-12)
    se = float(b.diffusion.std()) / math.sqrt(len(x0))
    assert abs(float(b.diffusion.mean() - diffusion[0])) < 4 * se
    torch.testing.assert_close(b.total, b.prior + b.diffusion + b.reconstruction)
    torch.testing.assert_close(b.bpd, b.total / (2 * math.log(2)))
    assert b.nfe == 1 and bool(torch.isnan(b.diffusion_stderr).all())


def test_uniform_time_sampling_estimates_the_same_bound():
    sde = sdekit.VPSDE()
    x0 = torch.tensor([[0.1, -1.2]], dtype=torch.float64).repeat(2000, 1)
    b = continuous_bound(
        eps_oracle(GM, sde),
        sde,
        x0,
        samples=10,
        t_sampling="uniform",
        generator=torch.Generator().manual_seed(0),
    )
    _, diffusion, _ = closed_form(MU, S, sde, x0)
    se = float(b.diffusion.std()) / math.sqrt(len(x0))
    assert abs(float(b.diffusion.mean() - diffusion[0])) < 4 * se
    # each sample's standard error from its ten draws estimates the spread of a ten-draw mean
    assert 0.5 < float(b.diffusion_stderr.square().mean().sqrt() / b.diffusion.std()) < 2
    assert b.nfe == 10


def test_exact_score_bound_is_the_entropy_of_the_decoded_law_plus_the_prior_mismatch():
    # with the exact score, E_x[-ELBO(x)] = H(p_{t_min}) - d log alpha(t_min) + KL(p_T || prior)
    # for any data law (de Bruijn: the diffusion term is I(x0; x_{t_min}) - I(x0; x_T)); here a
    # two-component mixture, whose denoiser is not linear. The ODE of the same score gives
    # E_z[-log p_ODE(z)] = H(p_{t_min}) + KL(p_T || prior) on z ~ p_{t_min}, the same number.
    sde = sdekit.VPSDE()
    g = torch.Generator().manual_seed(0)
    x = GM2.sample(20000, generator=g)
    b = continuous_bound(eps_oracle(GM2, sde), sde, x, generator=g)
    z = GM2.sample(20000, sde.t_min, sde, generator=g)
    entropy = -GM2.log_prob(z, sde.t_min, sde)
    zT = GM2.sample(20000, sde.T, sde, generator=g)
    prior_kl = GM2.log_prob(zT, sde.T, sde) - sde.prior_log_prob(zT)
    log_alpha = float(sde.log_alpha(torch.tensor(sde.t_min, dtype=torch.float64)))
    predicted = entropy.mean() - 2 * log_alpha + prior_kl.mean()
    se = math.sqrt(b.total.var() / len(x) + entropy.var() / len(z) + prior_kl.var() / len(zT))
    assert abs(float(b.total.mean() - predicted)) < 4 * se
    log_p, _ = log_likelihood(GM2.score_fn(sde), sde, z[:500], rtol=1e-5, atol=1e-5)
    ode = -log_p - 2 * log_alpha
    se_ode = math.sqrt(b.total.var() / len(x) + ode.var() / 500)
    assert abs(float(b.total.mean() - ode.mean())) < 4 * se_ode


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "edm", "plain"])
@pytest.mark.parametrize("prediction", ["eps", "score", "x0", "v"])
def test_likelihood_weighted_dsm_is_twice_the_bounds_integrand(name, prediction):
    # -1/2 lambda'(t) |eps - eps_hat|^2 with lambda' by autograd of the log-SNR: the DSM weighting
    # g^2 on the score error is exactly twice the bound's integrand, for every output type
    sde = linear_sdes()[name]
    torch.manual_seed(0)
    net = sdekit.networks.MLP(2, 32, 2).double()
    x0 = GM.sample(64, generator=torch.Generator().manual_seed(1))
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(64, dtype=torch.float64)
    noise = torch.randn(64, 2, dtype=torch.float64)

    def model(x, t):
        alpha, sigma = (v[:, None] for v in sde.marginal(t))
        eps = net(x, t)
        return sdekit.parameterization.from_score(-eps / sigma, prediction, x, alpha, sigma)

    alpha, sigma = (v[:, None] for v in sde.marginal(t))
    with torch.no_grad():
        eps_hat = net(alpha * x0 + sigma * noise, t)
    with torch.enable_grad():
        t_ = t.clone().requires_grad_(True)
        (dlam,) = torch.autograd.grad(sde.log_snr(t_).sum(), t_)
    integrand = -0.5 * dlam * (noise - eps_hat).square().sum(1)
    dsm = DenoisingScoreMatching(sde, prediction, "likelihood")
    with torch.no_grad():
        per = dsm.per_sample(model, x0, t, noise)
    torch.testing.assert_close(per, 2 * integrand, rtol=1e-6, atol=1e-9)


def test_bound_loss_is_the_dsm_loss_times_half_the_time_range_plus_a_constant():
    sde = sdekit.VPSDE.cosine()
    x0 = GM.sample(256, generator=torch.Generator().manual_seed(0)).float()
    loss_fn = ContinuousBoundLoss(sde)
    dsm = DenoisingScoreMatching(sde, "eps", "likelihood", "importance")
    half = 0.5 * (sde.T - sde.t_min)
    constants = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = sdekit.networks.MLP(2, 32, 2)
        bound = loss_fn(net, x0, generator=torch.Generator().manual_seed(3))
        (g_bound,) = torch.autograd.grad(bound, net.out.weight)
        value = dsm(net, x0, generator=torch.Generator().manual_seed(3))
        (g_dsm,) = torch.autograd.grad(value, net.out.weight)
        torch.testing.assert_close(g_bound, half * g_dsm, rtol=1e-5, atol=1e-7)
        constants.append(float(bound.detach() - half * value.detach()))
    # the constant: prior and reconstruction terms, the same for both networks
    prior, _, recon = closed_form(MU, S, sde, x0.double())
    assert abs(constants[0] - constants[1]) < 1e-4
    assert abs(constants[0] - float((prior + recon).mean())) < 1e-4


def test_pixel_reconstruction_is_the_normalised_gaussian_over_the_levels():
    sde = sdekit.VPSDE(t_min=0.05)  # alpha(t_min) = 0.985, sigma = 0.17: both matter
    levels = 5
    pixels = torch.tensor([[0, 1, 2, 3, 4], [4, 4, 0, 0, 2]], dtype=torch.float64)
    b = continuous_bound(
        eps_oracle(GM, sde),
        sde,
        pixels[:, :2],
        levels=levels,
        generator=torch.Generator().manual_seed(0),
    )
    assert bool((b.reconstruction > 0).all())
    x = 2 * pixels / (levels - 1) - 1
    got = sdekit.elbo.continuous.reconstruction(
        sde, x, levels, generator=torch.Generator().manual_seed(1)
    )
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha, sigma = sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64))
    z = alpha * x + sigma * eps
    centres = torch.linspace(-1, 1, levels, dtype=torch.float64)
    log_q = -0.5 * ((z[..., None] - alpha * centres) / sigma) ** 2  # log q(z | level k) + const
    log_p = log_q - torch.logsumexp(log_q, -1, keepdim=True)
    expected = -log_p.gather(-1, pixels.long()[..., None])[..., 0].sum(1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_bad_input_raises_naming_the_argument():
    sde = sdekit.VPSDE()
    model = eps_oracle(GM, sde)
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="t_sampling must be one of"):
        continuous_bound(model, sde, x, t_sampling="lognormal")
    with pytest.raises(ValueError, match="sde must be a LinearSDE"):
        continuous_bound(model, sdekit.DDPMSchedule.from_sde(sde, 10), x)
    with pytest.raises(ValueError, match="samples must be"):
        continuous_bound(model, sde, x, samples=0)
    with pytest.raises(ValueError, match=r"integer pixel values in \[0, 16\]"):
        continuous_bound(model, sde, x + 0.5, levels=17)
    with pytest.raises(ValueError, match="float tensor of continuous data"):
        continuous_bound(model, sde, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="pixel grid"):
        ContinuousBoundLoss(sde, levels=17)(model, x + 0.01)
    with pytest.raises(ValueError, match="levels must be"):
        ContinuousBoundLoss(sde, levels=0)
