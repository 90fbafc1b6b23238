"""sdekit: score-based diffusion models as continuous-time SDEs, in PyTorch."""

from . import (
    conditioning,
    elbo,
    guidance,
    inpainting,
    interop,
    measurements,
    metrics,
    networks,
    sampling,
    thresholding,
)
from .discrete import DiscreteVPSDE
from .discretization import DDPMSchedule, ddpm_ancestral_step, ddpm_step, smld_ancestral_step
from .fokker_planck import fokker_planck_residual, solve_fokker_planck
from .guidance import classifier_free_guidance, classifier_guidance
from .inpainting import inpaint
from .likelihood import bits_per_dim, log_likelihood
from .linear import EDMSDE, OUSDE, VESDE, VPSDE, LinearSDE, SubVPSDE
from .losses import DenoisingScoreMatching
from .mixture import GaussianMixture
from .sampling import sample
from .schedules import BetaSchedule, CosineBeta, LinearBeta
from .sde import SDE, ProbabilityFlowODE, ReverseSDE, broadcast_to_data
from .simulate import simulate
from .training import TrainConfig, Trainer, load_model

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "EDMSDE",
    "OUSDE",
    "DiscreteVPSDE",
    "BetaSchedule",
    "LinearBeta",
    "CosineBeta",
    "GaussianMixture",
    "DDPMSchedule",
    "ddpm_step",
    "ddpm_ancestral_step",
    "smld_ancestral_step",
    "simulate",
    "solve_fokker_planck",
    "fokker_planck_residual",
    "broadcast_to_data",
    "sampling",
    "networks",
    "metrics",
    "interop",
    "conditioning",
    "elbo",
    "guidance",
    "inpainting",
    "measurements",
    "thresholding",
    "classifier_free_guidance",
    "classifier_guidance",
    "inpaint",
    "DenoisingScoreMatching",
    "TrainConfig",
    "Trainer",
    "load_model",
    "sample",
    "log_likelihood",
    "bits_per_dim",
]
