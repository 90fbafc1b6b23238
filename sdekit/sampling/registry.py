"""The sampler registry: each method declares its order, the noise it handles and what it needs.

A sampler is a plain function (the :class:`Sampler` protocol)
``fn(score, sde, x, ts, *, noise, callback=None, **options) -> x`` that integrates from ``ts[0]``
(the noisiest time) to ``ts[-1]`` on the given decreasing float64 grid, calling ``score(x, t)``
(``t`` a ``(batch,)`` tensor) and drawing Gaussian noise only through ``noise(x)`` (a
:class:`~sdekit.sampling.noise.NoiseSource`). A fixed-grid method calls ``callback(i, x)`` after step
``i`` with the state at ``ts[i + 1]`` (see :func:`run_callback`); a tensor it returns replaces the
state, which is how an observation is imposed between steps (inpainting by replacement).

A family of methods is one function registered several times with options bound by ``fixed``
(``dpmpp_3m`` is the multistep DPM-Solver++ with ``order=3``); ``defaults`` changes an option's
default without binding it. Registering a name or alias that exists raises unless
``override=True``, so a plug-in cannot replace a built-in method by accident.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

if TYPE_CHECKING:
    from ..sde import SDE, ScoreFn
    from .grids import Grid
    from .noise import NoiseSource

#: the SDE noise a method is valid for: ``"additive"`` (a diffusion independent of x) or
#: ``"general"`` (also a state-dependent diagonal diffusion)
NoiseType = Literal["additive", "general"]
#: what a method does with ``callback``: the returned state replaces its own ("replace"), it only
#: sees the states after the solve ("observe"), or it takes no callback (None)
StepCallback = Literal["replace", "observe"] | None

# arguments every sampler receives from sample() itself, never from the user's options
_PROTOCOL_ARGS = ("score", "sde", "x", "ts", "noise", "callback")


class Sampler(Protocol):
    """The call every registered sampler function supports."""

    def __call__(
        self,
        score: ScoreFn,
        sde: SDE,
        x: torch.Tensor,
        ts: torch.Tensor,
        *,
        noise: NoiseSource,
        **options: Any,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    Attributes:
        name: the canonical name, as ``sample(method=...)`` takes it.
        fn: the sampler function.
        order: its order of convergence in the step size: the ODE order of a deterministic
            method, the weak order of a stochastic one.
        stochastic: whether it injects noise.
        needs_marginal: True when it needs a :class:`~sdekit.LinearSDE`'s closed-form marginal
            (alpha, sigma, log-SNR); False when drift and diffusion suffice (any SDE).
        evals_per_step: score evaluations per grid step (``None`` when adaptive).
        strong_order: the strong (pathwise) order of a stochastic method where it is declared.
        noise_type: the SDE noise the method is valid for (see :data:`NoiseType`).
        aliases: community names ("DPM++ 2M", "Euler a", ...).
        default_grid: the time grid it uses unless told otherwise.
        paper: where the method comes from.
        fixed: options bound for this method (the user may not pass them).
        defaults: options whose default this method changes.
        observes_only: the method calls ``callback`` only after its solve, so a callback cannot
            replace the state between steps.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    order: float
    stochastic: bool
    needs_marginal: bool
    evals_per_step: int | None
    strong_order: float | None = None
    noise_type: NoiseType = "additive"
    aliases: tuple[str, ...] = ()
    default_grid: Grid = "uniform"
    paper: str = field(default="", compare=False)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    observes_only: bool = False

    @property
    def options(self) -> dict[str, Any]:
        """The options a user may pass, with their defaults (``inspect.Parameter.empty`` if none)."""
        params = inspect.signature(self.fn).parameters
        return {
            name: self.defaults.get(name, p.default)
            for name, p in params.items()
            if name not in _PROTOCOL_ARGS
            and name not in self.fixed
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    @property
    def step_callback(self) -> StepCallback:
        """What the method does with a ``callback`` (see :data:`StepCallback`)."""
        if "callback" not in inspect.signature(self.fn).parameters:
            return None
        return "observe" if self.observes_only else "replace"

    def __call__(self, score, sde, x, ts, *, noise, **options) -> torch.Tensor:
        """Run the method with the user's ``options`` (checked by name) over its bound ones."""
        allowed = self.options
        unknown = sorted(set(options) - set(allowed) - {"callback"})
        if unknown:
            bound = f"; {sorted(self.fixed)} are fixed by the method" if self.fixed else ""
            raise ValueError(
                f"method {self.name!r} takes the options {sorted(allowed)}, got {unknown}{bound}"
            )
        return self.fn(score, sde, x, ts, noise=noise, **self.fixed, **{**self.defaults, **options})


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
    strong_order: float | None = None,
    noise_type: NoiseType = "additive",
    aliases: tuple[str, ...] = (),
    default_grid: Grid = "uniform",
    paper: str = "",
    fixed: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    observes_only: bool = False,
    override: bool = False,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Add a sampler function to :data:`SAMPLERS` under ``name`` and its aliases.

    Used as a decorator, or called on a function to register a variant of it
    (``register("dpmpp_3m", ..., fixed={"order": 3})(dpmpp_multistep)``). ``observes_only``
    declares that the method calls ``callback`` only after its solve (the states cannot be
    replaced between steps). A name or alias already taken by another method raises
    ``ValueError`` unless ``override=True``.
    """
    if noise_type not in ("additive", "general"):
        raise ValueError(f"noise_type must be 'additive' or 'general', got {noise_type!r}")
    if not (isinstance(order, int | float) and order > 0):
        raise ValueError(f"order must be a number > 0, got {order!r}")

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        params = inspect.signature(fn).parameters
        missing = [p for p in ("noise",) if p not in params]
        unknown = sorted((set(fixed or {}) | set(defaults or {})) - set(params))
        if missing or unknown:
            raise ValueError(
                f"sampler {name!r}: fn must take keyword 'noise' and every fixed/default option; "
                f"missing {missing}, unknown options {unknown}"
            )
        spec = SamplerSpec(
            name=name,
            fn=fn,
            order=order,
            stochastic=stochastic,
            needs_marginal=needs_marginal,
            evals_per_step=evals_per_step,
            strong_order=strong_order,
            noise_type=noise_type,
            aliases=tuple(aliases),
            default_grid=default_grid,
            paper=paper,
            fixed=MappingProxyType(dict(fixed or {})),
            defaults=MappingProxyType(dict(defaults or {})),
            observes_only=observes_only,
        )
        keys = [_key(k) for k in (name, *aliases)]
        taken = sorted({_ALIASES[k] for k in keys if k in _ALIASES} - {name})
        if (taken or name in SAMPLERS) and not override:
            raise ValueError(
                f"sampler name {name!r} (or an alias) is already registered"
                f"{' as ' + str(taken) if taken else ''}; pass override=True to replace it"
            )
        if name in SAMPLERS:
            old = SAMPLERS.pop(name)
            for k in (old.name, *old.aliases):
                _ALIASES.pop(_key(k), None)
        for k in keys:
            _ALIASES[k] = name
        SAMPLERS[name] = spec
        return fn

    return add


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by name or alias (case, spaces, '-', '_' and '+'/'p' are ignored)."""
    if not isinstance(name, str):
        raise ValueError(f"method must be a sampler name (str), got {type(name).__name__}")
    try:
        return SAMPLERS[_ALIASES[_key(name)]]
    except KeyError:
        raise ValueError(
            f"method must be one of {sorted(SAMPLERS)} (or an alias), got {name!r}"
        ) from None


def additive_noise(sde: SDE, x: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether ``sde``'s diffusion is independent of x (one autograd probe at ``(x, t)``)."""
    from ..linear import LinearSDE

    if isinstance(sde, LinearSDE):
        return True
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        g = sde.diffusion(x_, t)
    return not (isinstance(g, torch.Tensor) and g.requires_grad)


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
