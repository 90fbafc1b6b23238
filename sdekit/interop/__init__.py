"""Models from other libraries, exactly: diffusers UNets, k-diffusion/EDM denoisers, model directories.

- :class:`DiffusersModel`: a diffusers UNet on its :class:`~sdekit.discrete.DiscreteVPSDE`, and
  :func:`options_matching_scheduler`, the ``sample()`` settings that reproduce diffusers' DDIM and
  DPM-Solver++ schedulers step for step.
- :class:`KDiffusionModel` / :class:`KDiffusionDenoiser`: a denoiser :math:`D(\\tilde x,
  \\tilde\\sigma)` as an sdekit model and back, for any linear SDE; :func:`options_matching_sigmas`
  follows a k-diffusion grid.
- :func:`save_pretrained` / :func:`load_pretrained`: a network as a diffusers-style directory
  (``config.json`` + safetensors).

The guide page "Using models from diffusers and k-diffusion" gives the equations and the settings.
"""

from .diffusers import PREDICTION_TYPES, DiffusersModel, options_matching_scheduler
from .export import load_pretrained, save_pretrained
from .k_diffusion import (
    KDiffusionDenoiser,
    KDiffusionModel,
    edm_sigma,
    edm_time,
    options_matching_sigmas,
)

__all__ = [
    "DiffusersModel",
    "options_matching_scheduler",
    "PREDICTION_TYPES",
    "KDiffusionModel",
    "KDiffusionDenoiser",
    "edm_sigma",
    "edm_time",
    "options_matching_sigmas",
    "save_pretrained",
    "load_pretrained",
]
