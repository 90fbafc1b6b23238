"""A diffusers UNet2DModel through sdekit equals diffusers' own DDIM and DPM-Solver++ loops.

The UNet is small and randomly initialised (what is compared is the sampler, not the model). With
diffusers' alphas_cumprod cast to float64 its DDIM loop is sdekit's to 1e-12 (rounding only); as
diffusers ships it (float32 alphas_cumprod; DPMSolverMultistep also rounds its state to float32 at
every step) the two agree to 2e-6 relative, the float32 rounding of ~20 steps amplified by the
1/alpha_T = 157 of the first x0 estimate. A wrong setting (an order, a final step, a grid point)
changes the samples by 1e-3 or more.
"""

from __future__ import annotations

import copy

import pytest
import torch

import sdekit
from sdekit.discrete import DiscreteVPSDE
from sdekit.interop import DiffusersModel, options_matching_scheduler

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()
# diffusers' own use of np.array(tensor) under NumPy 2
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`algorithm_types dpmsolver:FutureWarning"),
]

PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]
EXACT = 1e-12  # float64 throughout: rounding only
FLOAT32 = 2e-6  # diffusers' float32 schedule / state


def _unet(**config) -> torch.nn.Module:
    torch.manual_seed(0)
    defaults = dict(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
    )
    return diffusers.UNet2DModel(**{**defaults, **config}).eval()


UNET = _unet().double()
UNETS = {torch.float64: UNET, torch.float32: copy.deepcopy(UNET).float()}


def _x_T(dtype=torch.float64) -> torch.Tensor:
    return torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _diffusers_loop(scheduler, x, steps, *, seed=None, float64=False, **step_options):
    scheduler.set_timesteps(steps)
    if float64:  # DDIM's step reads these; cast, its arithmetic is float64 like sdekit's
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    unet = UNETS[x.dtype]
    with torch.no_grad():
        for tau in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, tau), tau).sample
            x = scheduler.step(eps, tau, x, generator=generator, **step_options).prev_sample
    return x


def _sdekit(scheduler, x, *, seed=None, **extra):
    model = DiffusersModel.from_scheduler(UNETS[x.dtype], scheduler)
    options = {**options_matching_scheduler(scheduler), **extra}
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out, info = sdekit.sample(
            model, model.sde, x, prediction=model.prediction, generator=generator, **options
        )
    return out, info


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


DDIM_SETTINGS = {
    "leading": {},
    "trailing, to alpha_bar_0": {"timestep_spacing": "trailing", "set_alpha_to_one": False},
    "stable diffusion": {"steps_offset": 1, "set_alpha_to_one": False},
}


# every setting with eps, every prediction type with the first setting (they are independent)
DDIM_CASES = [("epsilon", name) for name in DDIM_SETTINGS] + [
    (p, "leading") for p in PREDICTION_TYPES[1:]
]


@pytest.mark.parametrize("prediction_type, setting", DDIM_CASES)
def test_ddim_equals_diffusers(prediction_type, setting):
    config = {"prediction_type": prediction_type, "clip_sample": False, **DDIM_SETTINGS[setting]}
    reference = _diffusers_loop(diffusers.DDIMScheduler(**config), _x_T(), 10, float64=True)
    scheduler = diffusers.DDIMScheduler(**config)
    scheduler.set_timesteps(10)
    out, info = _sdekit(scheduler, _x_T())
    assert info.nfe == 10
    assert _relative(out, reference) < EXACT
    # as diffusers ships it, its float32 alphas_cumprod
    shipped = _diffusers_loop(diffusers.DDIMScheduler(**config), _x_T(), 10)
    assert _relative(out, shipped) < FLOAT32


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_stochastic_ddim_equals_diffusers_with_the_same_generator(prediction_type):
    config = {"prediction_type": prediction_type, "clip_sample": False}
    reference = _diffusers_loop(
        diffusers.DDIMScheduler(**config), _x_T(), 10, seed=3, float64=True, eta=1.0
    )
    scheduler = diffusers.DDIMScheduler(**config)
    scheduler.set_timesteps(10)
    out, _ = _sdekit(scheduler, _x_T(), seed=3, eta=1.0)
    assert _relative(out, reference) < EXACT


DPM_SETTINGS = {
    "defaults (to sigma = 0)": ({}, 10),
    "20 steps": ({}, 20),
    "trailing": ({"timestep_spacing": "trailing"}, 10),
    "to sigma_min, second-order last": (
        {"final_sigmas_type": "sigma_min", "lower_order_final": False},
        10,
    ),
    "to sigma_min, first-order last": ({"final_sigmas_type": "sigma_min"}, 8),
    # diffusers lowers the last step below 15 steps, as sdekit's final="lower_order" always does
    "to sigma_min, first-order last, 12 steps": ({"final_sigmas_type": "sigma_min"}, 12),
    "first order": ({"solver_order": 1}, 10),
}


DPM_CASES = [("epsilon", name) for name in DPM_SETTINGS] + [
    (p, "defaults (to sigma = 0)") for p in PREDICTION_TYPES[1:]
]


@pytest.mark.parametrize("prediction_type, setting", DPM_CASES)
def test_dpm_solver_2m_equals_diffusers(prediction_type, setting):
    config, steps = DPM_SETTINGS[setting]
    config = {"prediction_type": prediction_type, **config}
    reference = _diffusers_loop(diffusers.DPMSolverMultistepScheduler(**config), _x_T(), steps)
    scheduler = diffusers.DPMSolverMultistepScheduler(**config)
    scheduler.set_timesteps(steps)
    out, info = _sdekit(scheduler, _x_T())
    assert info.nfe == steps
    assert _relative(out, reference) < FLOAT32


def test_sde_dpm_solver_2m_equals_diffusers_with_the_same_generator():
    """Float32 throughout: diffusers draws its noise in float32, sdekit in the state's dtype."""
    config = {"algorithm_type": "sde-dpmsolver++"}
    reference = _diffusers_loop(
        diffusers.DPMSolverMultistepScheduler(**config), _x_T(torch.float32), 10, seed=5
    )
    scheduler = diffusers.DPMSolverMultistepScheduler(**config)
    scheduler.set_timesteps(10)
    out, _ = _sdekit(scheduler, _x_T(torch.float32), seed=5)
    assert _relative(out, reference) < FLOAT32


def test_the_comparison_detects_a_wrong_setting():
    """The tolerance is far below what a different algorithm gives: a second-order last step where
    diffusers takes a first-order one (7.8e-5) or no final step to x0 (DDIM) are > 10x it."""
    scheduler = diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min")
    scheduler.set_timesteps(8)
    reference = _diffusers_loop(
        diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min"), _x_T(), 8
    )
    wrong, _ = _sdekit(scheduler, _x_T(), final="full_order")
    assert _relative(wrong, reference) > 10 * FLOAT32
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    reference = _diffusers_loop(diffusers.DDIMScheduler(clip_sample=False), _x_T(), 10)
    wrong, _ = _sdekit(scheduler, _x_T(), denoise_final=False)
    assert _relative(wrong, reference) > 10 * FLOAT32


# --------------------------------------------------------------------------- what is not reproducible


def _scheduler(cls, steps=10, **config):
    scheduler = getattr(diffusers, cls)(**config)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize(
    "cls, steps, config, match",
    [
        ("DDIMScheduler", 10, {}, "clip_sample"),
        ("DDIMScheduler", 10, {"clip_sample": False, "thresholding": True}, "thresholding"),
        (
            "DDIMScheduler",
            10,
            {"clip_sample": False, "timestep_spacing": "linspace"},
            "evaluates the model at",
        ),
        (
            "DDIMScheduler",
            7,
            {"clip_sample": False, "timestep_spacing": "trailing"},
            "evaluates the model at",
        ),
        ("DPMSolverMultistepScheduler", 10, {"use_karras_sigmas": True}, "use_karras_sigmas"),
        ("DPMSolverMultistepScheduler", 10, {"solver_order": 3}, "solver_order = 3"),
        ("DPMSolverMultistepScheduler", 10, {"solver_type": "heun"}, "solver_type"),
        (
            "DPMSolverMultistepScheduler",
            10,
            {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
            "algorithm_type",
        ),
        ("DPMSolverMultistepScheduler", 1000, {}, "repeat"),
        ("EulerDiscreteScheduler", 10, {}, "DDIMScheduler or DPMSolverMultistepScheduler"),
    ],
)
def test_settings_that_are_not_reproducible_raise(cls, steps, config, match):
    scheduler = _scheduler(cls, steps, **config)
    with pytest.raises(ValueError, match=match):
        options_matching_scheduler(scheduler)


def test_scheduler_without_timesteps_raises():
    with pytest.raises(ValueError, match="set_timesteps"):
        options_matching_scheduler(diffusers.DDIMScheduler(clip_sample=False))


# --------------------------------------------------------------------------- the model wrapper


def test_model_sees_the_integer_timesteps_diffusers_gives_it():
    sde = DiscreteVPSDE.from_scheduler(diffusers.DDIMScheduler())
    model = DiffusersModel(UNET, sde)
    tau = torch.tensor([0, 1, 499, 998, 999])
    for dtype in (torch.float32, torch.float64):
        got = model.timesteps(sde.time(tau).to(dtype))
        assert torch.equal(got, tau.to(dtype))
    half = model.timesteps(sde.time(torch.tensor([10.5, 200.25])))
    torch.testing.assert_close(half, torch.tensor([10.5, 200.25], dtype=torch.float64))


def test_model_bad_input_raises():
    scheduler = diffusers.DDIMScheduler()
    sde = DiscreteVPSDE.from_scheduler(scheduler)
    with pytest.raises(ValueError, match="num_train_timesteps = 500 does not match"):
        DiffusersModel(_unet(num_train_timesteps=500), sde)
    with pytest.raises(ValueError, match="out_channels == in_channels"):
        DiffusersModel(_unet(out_channels=4), sde)
    with pytest.raises(ValueError, match="time_embedding_type"):
        DiffusersModel(_unet(time_embedding_type="fourier"), sde)
    with pytest.raises(ValueError, match="DiscreteVPSDE"):
        DiffusersModel(UNET, sdekit.VPSDE())
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        DiffusersModel(UNET, sde, "noise")
    model = DiffusersModel(UNET, sde)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(batch, 2, height, width\)"):
        model(torch.zeros(3, 3, 8, 8, dtype=torch.float64), t)
    with pytest.raises(ValueError, match=r"t must lie at timesteps in \[0, 999\]"):
        model(_x_T(), torch.full((3,), 1e-4, dtype=torch.float64))
    with pytest.raises(ValueError, match="t must lie at timesteps"):
        sdekit.sample(model, sde, _x_T(), prediction="eps", steps=2, t_min=5e-4, denoise_final=True)


def test_learned_time_embedding_takes_integer_timesteps_only():
    sde = DiscreteVPSDE.linear(50)
    unet = _unet(time_embedding_type="learned", num_train_timesteps=50).double()
    model = DiffusersModel(unet, sde)
    tau = torch.tensor([0, 17, 49])
    with torch.no_grad():
        out = model(_x_T(), sde.time(tau))
        torch.testing.assert_close(out, unet(_x_T(), tau).sample, rtol=0, atol=0)
    with pytest.raises(ValueError, match="integer timesteps"):
        model(_x_T(), sde.time(torch.tensor([0.5, 17, 49])))


def test_class_conditional_unet_gets_cond_as_class_labels():
    unet = _unet(num_class_embeds=3).double()
    sde = DiscreteVPSDE.linear()
    model = DiffusersModel(unet, sde)
    labels = torch.tensor([0, 2, 1])
    t = sde.time(torch.tensor([999, 500, 3]))
    with torch.no_grad():
        expected = unet(_x_T(), torch.tensor([999, 500, 3]), class_labels=labels).sample
        torch.testing.assert_close(model(_x_T(), t, labels), expected, rtol=0, atol=0)
        torch.testing.assert_close(
            model(_x_T(), t, {"class_labels": labels}), expected, rtol=0, atol=0
        )
        x, _ = sdekit.sample(model, sde, _x_T(), prediction="eps", steps=3, cond=labels)
    assert x.shape == (3, 2, 8, 8)


def test_gallery_example_prints_the_agreement(tmp_path):
    from test_examples import numbers, run_example

    out = run_example("plot_diffusers_interop", tmp_path)
    discrete, continuous = numbers(r"(?:discrete|continuous VP) ([\d.e+-]+)", out)
    assert discrete == pytest.approx(4.0358e-5, rel=1e-4)
    assert continuous == pytest.approx(4.3186e-5, rel=1e-4)
    gaps = numbers(r"max relative difference ([\d.e+-]+)", out)
    assert len(gaps) == 2 and max(gaps) < FLOAT32


def test_half_precision_unet_gets_its_dtype():
    unet = _unet().to(torch.bfloat16)
    model = DiffusersModel(unet, DiscreteVPSDE.linear())
    with torch.no_grad():
        x, _ = sdekit.sample(model, model.sde, _x_T(torch.float32), prediction="eps", steps=3)
    assert x.dtype == torch.float32 and bool(torch.isfinite(x).all())
