r"""The sampling entry point: :func:`sample` runs any registered sampler on a model.

It wraps the model as a score function (:func:`sdekit.parameterization.score_fn`) that counts
model calls, builds the time grid (:mod:`sdekit.sampling.grids`), draws :math:`x_T` from the prior
when given a shape, calls the method from :data:`~sdekit.sampling.registry.SAMPLERS`, and optionally
finishes with Tweedie's denoising step at :math:`t_{\min}` (Efron 2011; Song et al. 2021,
App. G "denoising"):

.. math:: \hat x_0 = \frac{x + \sigma^2(t_{\min})\, s_\theta(x, t_{\min})}{\alpha(t_{\min})}.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..conditioning import Cond, call_model, check_cond
from ..linear import LinearSDE
from ..parameterization import check_prediction, score_fn
from ..sde import SDE, broadcast_to_data
from .grids import check_grid, time_grid
from .noise import NoiseSource
from .registry import SAMPLERS, get_sampler

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SampleInfo:
    """What :func:`sample` did.

    Attributes:
        nfe: the exact number of model calls.
        ts: the time grid used (float64, decreasing, ``ts[-1] = t_min``).
        trajectory: ``(len(ts), *x.shape)`` states at the grid times, when asked for.
        method: the canonical name of the method that ran.
    """

    nfe: int
    ts: torch.Tensor
    trajectory: torch.Tensor | None
    method: str


class _CountingScore:
    """Score function around a model: counts calls (a Python int, no host sync) and hands the
    model's output back in the dtype of ``x``, so a network may compute in bf16 while the sampler's
    state and schedule arithmetic stay in float32/64."""

    def __init__(self, model: Callable, sde: SDE, prediction: str, cond: Cond = None):
        self.nfe = 0
        self._model = model
        self._cond = cond
        self._score = score_fn(self._cast_model, sde, prediction) if prediction != "score" else None

    def _cast_model(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return call_model(self._model, x, t, self._cond).to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._score is None:
            return self._cast_model(x, t)
        return self._score(x, t)


def _prior(sde: SDE, shape, generator: Generator, device, dtype) -> torch.Tensor:
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        return sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"generator must be one per sample: got {len(generator)} for {shape[0]}")
    one = (1, *shape[1:])
    draws = [sde.prior_sample(one, generator=g, device=device, dtype=dtype) for g in generator]
    return torch.cat(draws)


def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x_T_or_shape: torch.Tensor | Sequence[int],
    *,
    method: str = "dpmpp_2m",
    steps: int = 20,
    prediction: str = "score",
    grid: str | torch.Tensor | None = None,
    t_min: float | None = None,
    denoise_final: bool | None = None,
    generator: Generator = None,
    cond: Cond = None,
    return_trajectory: bool = False,
    compile: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **options,
) -> tuple[torch.Tensor, SampleInfo]:
    """Draw samples: integrate the reverse SDE or probability-flow ODE from ``T`` to ``t_min``.

    Args:
        model: ``model(x, t)`` with ``t`` a ``(batch,)`` tensor, predicting ``prediction``.
        sde: the forward SDE; a :class:`~sdekit.LinearSDE` unless the method works on any SDE.
        x_T_or_shape: the starting state :math:`x_T`, or a shape to draw it from ``sde``'s prior
            (on ``device``, in ``dtype``).
        method: a registered name or alias (see :func:`~sdekit.sampling.list_samplers`).
        steps: number of grid steps (>= 1); ignored when ``grid`` is a tensor.
        prediction: what the model outputs: ``"score"``, ``"eps"``, ``"x0"`` or ``"v"``.
        grid: a grid name (default: the method's) or a decreasing tensor of times.
        t_min: the last time, in (0, T); default ``sde.t_min``.
        denoise_final: finish with Tweedie's step (+1 model call). ``None``: only for stochastic
            methods, whose last step leaves noise of level :math:`\\sigma(t_{\\min})`.
        generator: a ``torch.Generator``, or one per sample for batch-size-independent samples.
        cond: the condition of a conditional model (see :mod:`sdekit.conditioning`): the model is
            called as ``model(x, t, cond)``, unchanged by every method; ``None`` calls ``model(x, t)``.
        return_trajectory: also return the states at every grid time in ``info.trajectory``.
        compile: wrap the model, evaluated once or twice per step, with ``torch.compile`` (on CUDA;
            ignored with a warning elsewhere).
        device, dtype: where and in what precision to draw :math:`x_T` when given a shape.
        **options: method options (``eta``, ``snr``, ``S_churn``, ``rtol``, ...).

    Returns:
        ``(samples, info)`` with ``samples`` shaped and placed like :math:`x_T`.
    """
    spec = get_sampler(method)
    check_prediction(prediction)
    linear = isinstance(sde, LinearSDE)
    if spec.needs_marginal and not linear:
        raise ValueError(
            f"method {spec.name!r} needs a LinearSDE's closed-form marginal, got "
            f"{type(sde).__name__}; use 'euler_maruyama' or 'ode' for a general SDE"
        )
    if prediction != "score" and not linear:
        raise ValueError(f"prediction {prediction!r} needs a LinearSDE, use prediction='score'")
    if denoise_final and not linear:
        raise ValueError("denoise_final needs a LinearSDE's marginal (Tweedie's formula)")

    if isinstance(x_T_or_shape, torch.Tensor):
        x = x_T_or_shape
    else:
        x = _prior(sde, x_T_or_shape, generator, device, dtype)
    if x.ndim < 2:
        raise ValueError(f"x_T must have shape (batch, *data_shape), got {tuple(x.shape)}")

    if isinstance(grid, torch.Tensor):
        if t_min is not None:
            raise ValueError("t_min must be None when grid is a tensor (its last time is t_min)")
        ts = check_grid(sde, grid).to(x.device)
    else:
        ts = time_grid(sde, steps, grid or spec.default_grid, t_min=t_min, device=x.device)

    if compile:
        if x.device.type == "cuda":
            model = torch.compile(model)
        else:
            warnings.warn("compile=True is ignored off CUDA: running eagerly", stacklevel=2)
    check_cond(cond, x.shape[0])
    score = _CountingScore(model, sde, prediction, cond)

    trajectory: list[torch.Tensor] | None = None
    if return_trajectory:
        if "callback" not in inspect.signature(spec.fn).parameters:
            raise ValueError(f"method {spec.name!r} cannot return a trajectory")
        trajectory = [x]
        options["callback"] = lambda i, xi: trajectory.append(xi)

    x = spec.fn(score, sde, x, ts, noise=NoiseSource(generator), **options)

    if denoise_final is None:
        denoise_final = spec.stochastic and linear
    if denoise_final:
        t = ts[-1:].expand(x.shape[0])
        alpha, sigma = (broadcast_to_data(v.to(x.dtype), x) for v in sde.marginal(t))
        x = (x + sigma**2 * score(x, t.to(x.dtype))) / alpha

    traj = torch.stack(trajectory) if trajectory is not None else None
    return x, SampleInfo(nfe=score.nfe, ts=ts, trajectory=traj, method=spec.name)


def list_samplers() -> str:
    """Print (and return) a markdown table of the registered samplers and their properties."""
    rows = ["| name | aliases | order | stochastic | needs marginal | evals/step | grid | paper |"]
    rows.append("|" + "---|" * 8)
    for spec in sorted(SAMPLERS.values(), key=lambda s: s.name):
        evals = "adaptive" if spec.evals_per_step is None else str(spec.evals_per_step)
        rows.append(
            f"| {spec.name} | {', '.join(spec.aliases)} | {spec.order:g} | {spec.stochastic} | "
            f"{spec.needs_marginal} | {evals} | {spec.default_grid} | {spec.paper} |"
        )
    table = "\n".join(rows)
    print(table)
    return table
