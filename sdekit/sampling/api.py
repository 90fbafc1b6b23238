r"""The sampling entry point: :func:`sample` runs any registered sampler on a model.

It wraps the model as a score function (:func:`sdekit.parameterization.score_fn`) that counts
model calls, builds the time grid (:mod:`sdekit.sampling.grids`), draws :math:`x_T` from the prior
when given a shape, calls the method from :data:`~sdekit.sampling.registry.SAMPLERS`, and optionally
finishes with Tweedie's denoising step at :math:`t_{\min}` (Efron 2011; Song et al. 2021,
App. G "denoising"):

.. math:: \hat x_0 = \frac{x + \sigma^2(t_{\min})\, s_\theta(x, t_{\min})}{\alpha(t_{\min})}.

Bad numbers never pass silently, at no host synchronisation per step: :math:`x_T` is checked once
before the first step, each model output and each state are reduced to a "first non-finite" index
kept on the device (:class:`~sdekit.checks.FiniteWatch`), and those are read once at the end; a
failure raises naming the first model evaluation or step that went wrong.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..checks import FiniteWatch, check_output
from ..conditioning import Cond, call_model, check_cond
from ..linear import LinearSDE
from ..parameterization import Prediction, check_prediction, score_fn
from ..sde import SDE, broadcast_to_data
from .grids import Grid, check_grid, time_grid
from .noise import NoiseSource
from .registry import SAMPLERS, SamplerSpec, additive_noise, get_sampler

Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[int, torch.Tensor], torch.Tensor | None]


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
    """Score function around a model: counts calls (a Python int, no host sync), checks the first
    output's type and shape, records non-finite outputs, and hands the output back in the dtype
    of ``x``, so a network may compute in bf16 while the sampler's state and schedule arithmetic
    stay in float32/64."""

    def __init__(self, model: Callable, sde: SDE, prediction: Prediction, cond: Cond):
        self.nfe = 0
        self._model = model
        self._cond = cond
        self._score = score_fn(self._cast_model, sde, prediction) if prediction != "score" else None
        self.bad_output = FiniteWatch("the model output")
        self.times: list[torch.Tensor] = []

    def _cast_model(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = call_model(self._model, x, t, self._cond)
        if self.nfe == 0:
            check_output("model", out, x)
        self.bad_output.update(self.nfe, out)
        self.times.append(t[:1])
        self.nfe += 1
        return out.to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._score is None:
            return self._cast_model(x, t)
        return self._score(x, t)


def _check_generator(generator: Generator, batch: int | None) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, Sequence) and all(isinstance(g, torch.Generator) for g in generator):
        if batch is not None and len(generator) != batch:
            raise ValueError(
                f"generator must be one per sample: got {len(generator)} for a batch of {batch}"
            )
        return
    raise ValueError(
        "generator must be a torch.Generator, a list of one per sample, or None; got "
        f"{type(generator).__name__} (to seed: torch.Generator().manual_seed(0))"
    )


def _initial_state(sde: SDE, x_T_or_shape, generator: Generator, device, dtype) -> torch.Tensor:
    """``x_T`` as given (checked), or drawn from the prior for a shape ``(batch, *data_shape)``."""
    if isinstance(x_T_or_shape, torch.Tensor):
        x = x_T_or_shape
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"x_T must be a float32 or float64 tensor, got {x.dtype} (convert with .float(); "
                "a network may still compute in bf16: its outputs are cast to the state's dtype)"
            )
    else:
        shape = x_T_or_shape
        if not (
            isinstance(shape, Sequence)
            and len(shape) >= 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
        ):
            raise ValueError(
                "x_T_or_shape must be a tensor x_T or a shape (batch, *data_shape) of integers "
                f">= 1, e.g. (1000, 2); got {shape!r}"
            )
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        shape = tuple(shape)
        _check_generator(generator, shape[0])
        if generator is None or isinstance(generator, torch.Generator):
            x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
        else:
            one = (1, *shape[1:])
            x = torch.cat(
                [sde.prior_sample(one, generator=g, device=device, dtype=dtype) for g in generator]
            )
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            f"x_T must have shape (batch, *data_shape) with batch >= 1, got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x_T contains NaN or inf")
    return x


def _check_method(spec: SamplerSpec, sde: SDE, x: torch.Tensor) -> None:
    if not isinstance(sde, SDE):
        raise ValueError(f"sde must be an sdekit.SDE, got {type(sde).__name__}")
    if spec.needs_marginal and not isinstance(sde, LinearSDE):
        general = sorted(s.name for s in SAMPLERS.values() if not s.needs_marginal)
        raise ValueError(
            f"method {spec.name!r} needs a LinearSDE's closed-form marginal, got "
            f"{type(sde).__name__}; methods for a general SDE: {general}"
        )
    t = torch.full((x.shape[0],), sde.T, dtype=x.dtype, device=x.device)
    if spec.noise_type == "additive" and not additive_noise(sde, x, t):
        general = sorted(s.name for s in SAMPLERS.values() if s.noise_type == "general")
        raise ValueError(
            f"method {spec.name!r} handles additive noise only (a diffusion independent of x); "
            f"{type(sde).__name__}'s diffusion depends on x: use one of {general}"
        )


def _check_result(x: torch.Tensor, score: _CountingScore, bad_state: FiniteWatch, spec, steps):
    none = torch.full((), -1, dtype=torch.int64, device=x.device)
    firsts = [w.first if w.first is not None else none for w in (score.bad_output, bad_state)]
    # one host synchronisation for the whole run
    finite, bad_eval, bad_step = torch.stack([torch.isfinite(x).all().long(), *firsts]).tolist()
    if bad_eval >= 0:
        t = float(score.times[bad_eval])
        raise FloatingPointError(
            f"the model returned NaN or inf at its evaluation {bad_eval + 1} of {score.nfe} "
            f"(t = {t:.6g}) in method {spec.name!r}: check the model at that time (e.g. a "
            "division by sigma(t) or alpha(t) near the ends of the schedule)"
        )
    if finite:
        return
    where = f" first after step {bad_step + 1} of {steps}" if bad_step >= 0 else ""
    raise FloatingPointError(
        f"the samples of method {spec.name!r} became NaN or inf{where} although every model "
        "output was finite: the steps are too large for this method and model; try more steps, "
        "another grid or a lower-order method"
    )


def sample(
    model: Callable[..., torch.Tensor],
    sde: SDE,
    x_T_or_shape: torch.Tensor | Sequence[int],
    *,
    method: str = "dpmpp_2m",
    steps: int = 20,
    prediction: Prediction = "score",
    grid: Grid | torch.Tensor | None = None,
    t_min: float | None = None,
    denoise_final: bool | None = None,
    generator: Generator = None,
    cond: Cond = None,
    callback: Callback | None = None,
    return_trajectory: bool = False,
    compile: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **options,
) -> tuple[torch.Tensor, SampleInfo]:
    """Draw samples: integrate the reverse SDE or probability-flow ODE from ``T`` to ``t_min``.

    Args:
        model: ``model(x, t)`` (or ``model(x, t, cond)``) with ``t`` a ``(batch,)`` tensor,
            predicting ``prediction``; it must return a tensor shaped like ``x``.
        sde: the forward SDE; a :class:`~sdekit.LinearSDE` unless the method works on any SDE.
        x_T_or_shape: the starting state :math:`x_T` (float32/64), or a shape
            ``(batch, *data_shape)`` to draw it from ``sde``'s prior (on ``device``, in ``dtype``).
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
        callback: ``callback(i, x)`` after step ``i`` with the state at ``ts[i + 1]``; a tensor it
            returns replaces the state (methods whose ``step_callback`` is ``"replace"``).
        return_trajectory: also return the states at every grid time in ``info.trajectory``.
        compile: wrap the model, evaluated once or twice per step, with ``torch.compile`` (on CUDA;
            ignored with a warning elsewhere).
        device, dtype: where and in what precision to draw :math:`x_T` when given a shape.
        **options: method options (``eta``, ``snr``, ``S_churn``, ``rtol``, ...); an option the
            method does not take is an error listing the ones it does.

    Returns:
        ``(samples, info)`` with ``samples`` shaped and placed like :math:`x_T`.

    Raises:
        FloatingPointError: when the model returned, or the samples became, NaN or inf (checked
            once at the end; the message names the first evaluation or step).
    """
    spec = get_sampler(method)
    check_prediction(prediction)
    _check_generator(generator, None)
    x = _initial_state(sde, x_T_or_shape, generator, device, dtype)
    _check_generator(generator, x.shape[0])
    _check_method(spec, sde, x)
    linear = isinstance(sde, LinearSDE)
    if prediction != "score" and not linear:
        raise ValueError(f"prediction {prediction!r} needs a LinearSDE, use prediction='score'")
    if denoise_final and not linear:
        raise ValueError("denoise_final needs a LinearSDE's marginal (Tweedie's formula)")
    check_cond(cond, x.shape[0])

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
    score = _CountingScore(model, sde, prediction, cond)

    if (callback is not None or return_trajectory) and spec.step_callback is None:
        raise ValueError(f"method {spec.name!r} takes no callback and cannot return a trajectory")
    if callback is not None and spec.step_callback != "replace":
        replacing = sorted(s.name for s in SAMPLERS.values() if s.step_callback == "replace")
        raise ValueError(
            f"method {spec.name!r} cannot replace its state between steps (it calls callback only "
            f"after its solve); methods that can: {replacing}"
        )
    trajectory: list[torch.Tensor] | None = [x] if return_trajectory else None
    bad_state = FiniteWatch("the samples", ts)

    def step_callback(i: int, xi: torch.Tensor) -> torch.Tensor | None:
        out = callback(i, xi) if callback is not None else None
        xi = xi if out is None else out
        bad_state.update(i, xi)
        if trajectory is not None:
            trajectory.append(xi)
        return out

    if spec.step_callback is not None:
        options["callback"] = step_callback
    try:
        x = spec(score, sde, x, ts, noise=NoiseSource(generator), **options)
    except FloatingPointError:  # a method that stopped on NaN: name the model evaluation
        _check_result(x, score, bad_state, spec, ts.shape[0] - 1)
        raise

    if denoise_final is None:
        denoise_final = spec.stochastic and linear
    if denoise_final:
        t = ts[-1:].expand(x.shape[0])
        alpha, sigma = (broadcast_to_data(v.to(x.dtype), x) for v in sde.marginal(t))
        x = (x + sigma**2 * score(x, t.to(x.dtype))) / alpha

    _check_result(x, score, bad_state, spec, ts.shape[0] - 1)
    traj = torch.stack(trajectory) if trajectory is not None else None
    return x, SampleInfo(nfe=score.nfe, ts=ts, trajectory=traj, method=spec.name)


def list_samplers() -> str:
    """Print (and return) a markdown table of the registered samplers and their properties."""
    header = (
        "| name | aliases | order | strong order | stochastic | noise | needs marginal | "
        "evals/step | grid | paper |"
    )
    rows = [header, "|" + "---|" * 10]
    for spec in sorted(SAMPLERS.values(), key=lambda s: s.name):
        evals = "adaptive" if spec.evals_per_step is None else str(spec.evals_per_step)
        strong = "" if spec.strong_order is None else f"{spec.strong_order:g}"
        rows.append(
            f"| {spec.name} | {', '.join(spec.aliases)} | {spec.order:g} | {strong} | "
            f"{spec.stochastic} | {spec.noise_type} | {spec.needs_marginal} | {evals} | "
            f"{spec.default_grid} | {spec.paper} |"
        )
    table = "\n".join(rows)
    print(table)
    return table
