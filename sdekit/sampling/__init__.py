"""Samplers: solvers of the reverse SDE and the probability-flow ODE, behind one entry point.

``sample(model, sde, x_T_or_shape, method=..., steps=...)`` runs any method of the registry
(:data:`SAMPLERS`); :func:`list_samplers` prints them.
"""

from . import euler  # noqa: F401  (registers its samplers)
from .api import SampleInfo, sample
from .grids import GRIDS, time_grid
from .noise import NoiseSource
from .registry import SAMPLERS, SamplerSpec, get_sampler, register

__all__ = [
    "sample",
    "SampleInfo",
    "time_grid",
    "GRIDS",
    "NoiseSource",
    "SAMPLERS",
    "SamplerSpec",
    "get_sampler",
    "register",
]
