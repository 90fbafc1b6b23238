"""k-diffusion denoisers through sdekit equal k-diffusion's own samplers on the same sigmas.

Float64 throughout (k-diffusion computes in the dtype of its inputs), so agreement is to rounding:
1e-12 relative. Only ``k_diffusion/sampling.py`` and ``external.py`` are loaded (by file, with a stub
``k_diffusion.utils``): the package's ``__init__`` imports its training stack.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

import sdekit
from sdekit.discrete import DiscreteVPSDE
from sdekit.interop import (
    DiffusersModel,
    KDiffusionDenoiser,
    KDiffusionModel,
    edm_sigma,
    edm_time,
    options_matching_sigmas,
)

EXACT = 1e-12


def _load_k_diffusion():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or importlib.util.find_spec("torchsde") is None:
        pytest.skip("k-diffusion (with torchsde) is not installed")
    root = spec.submodule_search_locations[0]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [root]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package.utils = utils
    names = ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling", "k_diffusion.external")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    modules = {}
    try:
        for name in ("sampling", "external"):
            file_spec = importlib.util.spec_from_file_location(
                f"k_diffusion.{name}", f"{root}/{name}.py"
            )
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[f"k_diffusion.{name}"] = module
            setattr(package, name, module)
            file_spec.loader.exec_module(module)
            modules[name] = module
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return modules["sampling"], modules["external"]


@pytest.fixture(scope="module")
def k():
    return _load_k_diffusion()


def _karras(lo: float, hi: float, n: int) -> torch.Tensor:
    """Karras et al. 2022, eq. 5 (rho = 7), n levels then 0; float64."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    levels = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    return torch.cat([levels, levels.new_zeros(1)])


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


# (k-diffusion sampler, sdekit method, options)
PAIRS = {
    "euler": ("sample_euler", "ddim", {}),
    "euler (Karras' Euler)": ("sample_euler", "euler", {}),
    "heun": ("sample_heun", "heun", {}),
    "dpmpp_2m": ("sample_dpmpp_2m", "dpmpp_2m", {"final": "full_order"}),
}


@pytest.fixture(scope="module")
def discrete_model(k):
    """A random diffusers UNet behind k-diffusion's own DiscreteEpsDDPMDenoiser (CompVis style)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()
    unet.double()
    sde = DiscreteVPSDE.scaled_linear()
    denoiser = k[1].DiscreteEpsDDPMDenoiser(
        lambda x, t: unet(x, t).sample, sde.alphas_cumprod, quantize=False
    )
    return unet, sde, denoiser


@pytest.mark.parametrize("pair", PAIRS)
def test_discrete_model_through_sdekit_equals_k_diffusion(k, discrete_model, pair):
    """Karras sigmas over the model's whole range: fractional timesteps, which sdekit's
    DiscreteVPSDE maps exactly as k-diffusion's sigma_to_t (log-sigma linear between them)."""
    sampling, _ = k
    unet, sde, denoiser = discrete_model
    name, method, options = PAIRS[pair]
    sigmas = _karras(float(denoiser.sigma_min), float(denoiser.sigma_max), 8)
    x_tilde = torch.randn(
        3, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    with torch.no_grad():
        reference = getattr(sampling, name)(denoiser, x_tilde, sigmas, disable=True)
        grid = options_matching_sigmas(sde, sigmas)
        x_T = x_tilde * sde.alpha(grid["grid"][:1])
        for model, prediction in (
            (KDiffusionModel(denoiser, sde), "x0"),
            (DiffusersModel(unet, sde), "eps"),
        ):
            out, _ = sdekit.sample(
                model, sde, x_T, method=method, prediction=prediction, **grid, **options
            )
            assert _relative(out, reference) < EXACT
    # the fractional timesteps themselves
    levels = sigmas[1:-2]
    torch.testing.assert_close(
        sde.timestep(edm_time(sde, levels)), denoiser.sigma_to_t(levels), rtol=0, atol=1e-9
    )


def test_sdekit_model_through_k_diffusion_equals_sdekit(k, discrete_model):
    """The other way: KDiffusionDenoiser of an sdekit model in k-diffusion's DPM-Solver++(2M)."""
    sampling, _ = k
    unet, sde, _ = discrete_model
    model = DiffusersModel(unet, sde)
    lo, hi = (
        float(v) for v in edm_sigma(sde, torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
    )
    sigmas = _karras(lo, hi, 8)
    x_tilde = torch.randn(
        3, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    with torch.no_grad():
        reference = sampling.sample_dpmpp_2m(
            KDiffusionDenoiser(model, sde, "eps"), x_tilde, sigmas, disable=True
        )
        grid = options_matching_sigmas(sde, sigmas)
        x_T = x_tilde * sde.alpha(grid["grid"][:1])
        out, _ = sdekit.sample(model, sde, x_T, prediction="eps", final="full_order", **grid)
    assert _relative(out, reference) < EXACT


def _mixture_denoiser(sde):
    """The exact EDM denoiser of a 2D Gaussian mixture: D = x~ + sigma~^2 grad log p(x~)."""
    gm = sdekit.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [0.3, 0.6])
    score = gm.score_fn(sdekit.EDMSDE(sigma_min=1e-3, sigma_max=1e3))

    def denoiser(x, sigma):
        s = sigma.reshape(-1, 1)
        return x + s**2 * score(x, sigma)

    return denoiser


@pytest.mark.parametrize("pair", PAIRS)
def test_edm_denoiser_through_sdekit_equals_k_diffusion(k, pair):
    """EDM's own SDE (x~ = x, sigma~ = t): the samplers are the same arithmetic."""
    sampling, _ = k
    sde = sdekit.EDMSDE()
    name, method, options = PAIRS[pair]
    denoiser = _mixture_denoiser(sde)
    sigmas = _karras(sde.t_min, sde.T, 12)
    x_T = 80.0 * torch.randn(
        500, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    reference = getattr(sampling, name)(denoiser, x_T, sigmas, disable=True)
    out, _ = sdekit.sample(
        KDiffusionModel(denoiser, sde),
        sde,
        x_T,
        method=method,
        prediction="x0",
        **options_matching_sigmas(sde, sigmas),
        **options,
    )
    assert _relative(out, reference) < EXACT


@pytest.mark.parametrize(
    "sde", [sdekit.VPSDE(), sdekit.VESDE(), sdekit.SubVPSDE(), sdekit.EDMSDE()]
)
def test_the_two_wrappers_invert_each_other(sde):
    denoiser = _mixture_denoiser(sde)
    t = torch.tensor([sde.t_min, 0.3 * sde.T, sde.T], dtype=torch.float64)
    sigma = edm_sigma(sde, t)
    torch.testing.assert_close(edm_time(sde, sigma), t, rtol=1e-12, atol=1e-15)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    back = KDiffusionDenoiser(KDiffusionModel(denoiser, sde), sde, "x0")
    torch.testing.assert_close(back(x, sigma), denoiser(x, sigma), rtol=1e-12, atol=1e-12)
    # and an sdekit model's x0 from its score, at the state x = alpha x~
    gm = sdekit.GaussianMixture([1.0], [[0.5, -0.5]], [0.4])
    d = KDiffusionDenoiser(gm.score_fn(sde), sde, "score")
    alpha, sig = (v.reshape(-1, 1) for v in sde.marginal(t))
    x_t = alpha * x
    expected = (x_t + sig**2 * gm.score_fn(sde)(x_t, t)) / alpha
    torch.testing.assert_close(d(x, sigma), expected, rtol=1e-12, atol=1e-12)


def test_cond_reaches_the_denoiser_as_extra_args():
    seen = {}

    def denoiser(x, sigma, **extra):
        seen.update(extra)
        return x

    sde = sdekit.EDMSDE()
    t = torch.ones(2, dtype=torch.float64)
    KDiffusionModel(denoiser, sde)(
        torch.zeros(2, 2, dtype=torch.float64), t, {"cond": t, "uncond": t}
    )
    assert set(seen) == {"cond", "uncond"}


def test_bad_input_raises(k):
    _, external = k
    sde = DiscreteVPSDE.linear()
    eps = external.DiscreteEpsDDPMDenoiser(lambda x, t: x, sde.alphas_cumprod, quantize=False)
    with pytest.raises(ValueError, match=r"exceed the denoiser's \[sigma_min, sigma_max\]"):
        KDiffusionModel(eps, sdekit.EDMSDE())
    KDiffusionModel(eps, sde)  # its own schedule fits
    with pytest.raises(ValueError, match="LinearSDE"):
        KDiffusionModel(eps, object())
    d = KDiffusionDenoiser(lambda x, t: x, sde, "eps")
    with pytest.raises(ValueError, match="sigma must lie within"):
        d(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1e4], dtype=torch.float64))
    with pytest.raises(ValueError, match="prediction must be one of"):
        KDiffusionDenoiser(lambda x, t: x, sde, "noise")
    with pytest.raises(ValueError, match="strictly decreasing"):
        options_matching_sigmas(sde, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2 positive"):
        options_matching_sigmas(sde, torch.tensor([1.0, 0.0]))
