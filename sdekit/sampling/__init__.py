"""Samplers: solvers of the reverse SDE and the probability-flow ODE, behind one entry point.

``sample(model, sde, x_T_or_shape, method=..., steps=...)`` runs any method of the registry
(:data:`SAMPLERS`); :func:`list_samplers` prints them. :func:`fit_grid` fits a method's time grid
to a model.
"""

# The method modules are imported for their @register side effect.
from . import (  # noqa: F401
    adaptive,
    ddim,
    dpm_solver,
    euler,
    heun,
    learned_variance,
    ode,
    predictor_corrector,
    unipc,
)
from .api import SampleInfo, list_samplers, sample
from .fitted_grid import FittedGrid, fit_grid
from .grids import GRIDS, time_grid
from .noise import NoiseSource
from .registry import SAMPLERS, SamplerSpec, get_sampler, register

__all__ = [
    "sample",
    "SampleInfo",
    "list_samplers",
    "time_grid",
    "fit_grid",
    "FittedGrid",
    "GRIDS",
    "NoiseSource",
    "SAMPLERS",
    "SamplerSpec",
    "get_sampler",
    "register",
]
