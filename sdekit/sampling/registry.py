"""The sampler registry: each method declares its order and what it needs from the SDE.

A sampler is a plain function ``fn(score, sde, x, ts, *, noise, callback=None, **options) -> x`` that
integrates from ``ts[0]`` (the noisiest time) to ``ts[-1]`` on the given grid, calling ``score(x, t)``
(``t`` a ``(batch,)`` tensor) and drawing Gaussian noise only through ``noise(x)`` (a
:class:`~sdekit.sampling.noise.NoiseSource`). A fixed-grid method calls ``callback(i, x)`` after step
``i`` with the state at ``ts[i + 1]`` (see :func:`run_callback`); a tensor it returns replaces the state,
which is how an observation is imposed between steps (inpainting by replacement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    Attributes:
        name: the canonical name, as ``sample(method=...)`` takes it.
        fn: the sampler function.
        order: its order of convergence (weak order for stochastic methods, as usually quoted).
        stochastic: whether it injects noise.
        needs_marginal: True when it needs a :class:`~sdekit.LinearSDE`'s closed-form marginal
            (alpha, sigma, log-SNR); False when drift and diffusion suffice (any SDE, nonlinear too).
        evals_per_step: score evaluations per grid step (``None`` when adaptive).
        aliases: community names ("DPM++ 2M", "Euler a", ...).
        default_grid: the time grid it uses unless told otherwise.
    """

    name: str
    fn: Callable
    order: float
    stochastic: bool
    needs_marginal: bool
    evals_per_step: int | None
    aliases: tuple[str, ...] = ()
    default_grid: str = "uniform"
    paper: str = field(default="", compare=False)


def run_callback(
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None, i: int, x: torch.Tensor
) -> torch.Tensor:
    """``callback(i, x)``'s replacement of the state ``x`` after step ``i``, or ``x`` itself."""
    if callback is None:
        return x
    out = callback(i, x)
    if out is None:
        return x
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"callback must return None or a tensor shaped like the state {tuple(x.shape)}, got {got}"
        )
    return out.to(x.dtype)


SAMPLERS: dict[str, SamplerSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace(" ", "").replace("_", "").replace("-", "").replace("+", "p")


def register(
    name: str,
    *,
    order: float,
    stochastic: bool,
    needs_marginal: bool,
    evals_per_step: int | None,
    aliases: tuple[str, ...] = (),
    default_grid: str = "uniform",
    paper: str = "",
):
    """Decorator adding a sampler function to :data:`SAMPLERS` under ``name`` and its aliases."""

    def add(fn: Callable) -> Callable:
        spec = SamplerSpec(
            name,
            fn,
            order,
            stochastic,
            needs_marginal,
            evals_per_step,
            aliases,
            default_grid,
            paper,
        )
        for key in (name, *aliases):
            # an alias may spell the name differently ("DPM++ 2M" for dpmpp_2m), not take another's
            if _ALIASES.get(_key(key), name) != name:
                raise ValueError(f"sampler name {key!r} is already registered")
            _ALIASES[_key(key)] = name
        SAMPLERS[name] = spec
        return fn

    return add


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by name or alias (case, spaces, '-', '_' and '+'/'p' are ignored)."""
    try:
        return SAMPLERS[_ALIASES[_key(name)]]
    except KeyError:
        raise ValueError(
            f"method must be one of {sorted(SAMPLERS)} (or an alias), got {name!r}"
        ) from None
