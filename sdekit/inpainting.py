r"""Sampling given an observation :math:`y = Ax` of part of the data: inpainting and imputation.

An unconditional model of :math:`p_0(x)` can sample :math:`p_0(x \mid y)` without retraining.
Every method here works with every linear SDE and with the samplers of
:data:`~sdekit.sampling.SAMPLERS` it can drive (see :func:`inpaint`). Write the observed part of
a state as :math:`\Pi x` with :math:`\Pi = A^+A` (:mod:`sdekit.measurements`; for a mask, the
entries it keeps) and the noised observation at time :math:`t`,
:math:`y_t = \alpha_t A^+y + \sigma_t\,\Pi z` (:math:`z \sim \mathcal N(0, I)`), which is
:math:`\Pi x_t` for :math:`x_t \sim p_t(\cdot \mid x_0)` with :math:`Ax_0 = y`. On the grid
:math:`T = t_0 > \dots > t_N = t_{\min}`:

- ``"replacement"`` (Song et al. 2021, App. I.2, "imputation"): after every step of the sampler,
  :math:`x_{k+1} \leftarrow (I - \Pi)\,x_{k+1} + y_{t_{k+1}}`, with fresh noise each step. It is
  biased: the unobserved part follows the score given the *noised* observed part, and nothing
  weighs how likely the model finds the observation.
- ``"repaint"`` (Lugmayr et al. 2022, Alg. 1 and §4.2): replacement, and every ``jump_length``
  steps the state is sent back ``jump_length`` steps by the forward kernel,
  :math:`x_{t_{k-j}} = \alpha_{t_{k-j}|t_k} x_{t_k} + \sigma_{t_{k-j}|t_k} z`, and denoised again,
  ``resamples - 1`` times, so that the two parts harmonise (:func:`repaint_schedule`). As in
  Alg. 1 the observation is imposed after each step, and the last step is taken once. Its
  default step is DDIM with ``eta = 1``, the posterior of the forward chain
  :math:`q(x_{t_{k+1}} \mid x_{t_k}, \hat x_0)` (DDPM's :math:`\sigma_t^2 = \tilde\beta_t`,
  diffusers' ``eta = 1``): with few steps, a step whose noise is the forward one
  (``ancestral``'s :math:`\sigma_t^2 = \beta_t`, ``euler_maruyama``) leaves about
  :math:`\sigma_{t_{N-1}}` of noise in the unobserved part after the last step.
- ``"smcdiff"`` and ``"tds"``: sequential Monte Carlo over ``particles`` states per sample
  (:mod:`sdekit.smc`), SMCDiff (Trippe et al. 2023) and twisted diffusion sampling (Wu et al.
  2023), which correct replacement's bias by weighting and resampling; TDS is asymptotically
  exact in the particles at any step count.
- ``"guidance"``: :class:`~sdekit.measurements.ReconstructionGuidance`, the model's score plus
  :math:`\nabla\log p(y \mid \hat x_0(x_t))`, for any sampler; the observation is approached, not
  imposed.

All but ``"guidance"`` return samples whose observed part is the observation, :math:`\Pi x = A^+y`
(bit for bit for a :class:`~sdekit.measurements.Mask`), imposed after the last step and after the
optional final denoising. Noise comes from the sampler's generator, so a seed reproduces the
samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .checks import check_choice, check_probability
from .conditioning import Cond, check_cond
from .linear import LinearSDE
from .measurements import LinearOperator, ReconstructionGuidance
from .parameterization import Prediction, check_prediction
from .sampling.api import Generator, sample
from .sampling.grids import Grid, check_grid, time_grid
from .sampling.noise import NoiseSource
from .sampling.registry import SamplerSpec, get_sampler
from .sde import broadcast_to_data
from .smc import ModelScore, ParticleNoise, check_gaussian_step, smcdiff, tds

Method = Literal["replacement", "repaint", "smcdiff", "tds", "guidance"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclass
class InpaintInfo:
    """What :func:`inpaint` did: ``nfe`` model calls (each on the whole batch, or on all the
    particles for SMC), the base time grid ``ts``, and the canonical names of the method and
    sampler."""

    nfe: int
    ts: torch.Tensor
    method: str
    sampler: str


def _check_fixed_grid(spec: SamplerSpec, method: str) -> None:
    if spec.step_callback != "replace":
        raise ValueError(
            f"method {method!r} replaces the state between steps, which sampler {spec.name!r} "
            "does not allow (its callback only observes a solve); use a fixed-grid sampler "
            "(euler_maruyama, ancestral, ddim, pc, heun, euler, dpmpp_*) or method='guidance'"
        )


def _tweedie(score: ModelScore, sde: LinearSDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tb = t.to(x.dtype).expand(x.shape[0])
    alpha, sigma = (broadcast_to_data(v.to(x.dtype), x) for v in sde.marginal(tb))
    return (x + sigma**2 * score(x, tb)) / alpha


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def repaint_schedule(steps: int, jump_length: int, resamples: int) -> list[int]:
    """The grid indices RePaint visits, from 0 (time T) to ``steps`` (t_min).

    Lugmayr et al. 2022, §4.2 and their code's ``get_schedule_jump``: going down the grid, at
    each index ``k = steps - 1 - m * jump_length`` (``m = 0, 1, ...``) with ``k >= jump_length``
    the state jumps back to ``k - jump_length``, ``resamples - 1`` times; ``resamples = 1`` is
    replacement's plain descent.
    """
    _check_int("jump_length", jump_length, 1)
    _check_int("resamples", resamples, 1)
    jumps = {k: resamples - 1 for k in range(steps - 1, jump_length - 1, -jump_length)}
    path, k = [0], 0
    while k < steps:
        k += 1
        path.append(k)
        if jumps.get(k, 0) > 0:
            jumps[k] -= 1
            k -= jump_length
            path.append(k)
    return path


class _Run:
    """What every method shares: the checked inputs, the score, the grid and the noise."""

    def __init__(self, model, sde, operator, observation, spec, ts, prediction, cond, noise):
        self.sde, self.operator, self.spec, self.ts = sde, operator, spec, ts
        self.y = observation
        self.target = operator.pinv(observation)  # A^+ y
        self.score = ModelScore(model, sde, prediction, cond)
        self.noise = noise
        self.alpha, self.sigma = sde.alpha(ts), sde.sigma(ts)

    def noised(self, k: int, like: torch.Tensor) -> torch.Tensor:
        r""":math:`y_{t_k} = \alpha_{t_k} A^+y + \sigma_{t_k}\Pi z`, the noise drawn like ``like``."""
        a, s = (v[k].to(like.dtype) for v in (self.alpha, self.sigma))
        return a * self.target + s * self.operator.project(self.noise(like))

    def replacing(self, offset: int):
        """The callback of a run over ``ts[offset:]``: impose the noised observation."""

        def callback(i: int, x: torch.Tensor) -> torch.Tensor:
            return self.operator.impose(x, self.noised(offset + i + 1, x))

        return callback

    def descend(self, x: torch.Tensor, start: int, end: int, options: dict) -> torch.Tensor:
        grid = self.ts[start : end + 1]
        return self.spec(
            self.score, self.sde, x, grid, noise=self.noise, callback=self.replacing(start),
            **options,
        )  # fmt: skip

    def jump(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The forward kernel from ``ts[start]`` back up to the noisier ``ts[end]``."""
        s, t = (self.ts[k : k + 1].expand(x.shape[0]) for k in (start, end))
        a, c = (broadcast_to_data(v.to(x.dtype), x) for v in self.sde.transition(s, t))
        return a * x + c * self.noise(x)


def _replacement(run: _Run, x: torch.Tensor, options: dict) -> torch.Tensor:
    return run.descend(x, 0, run.ts.shape[0] - 1, options)


def _repaint(run: _Run, x: torch.Tensor, options: dict, jump_length: int, resamples: int):
    path = repaint_schedule(run.ts.shape[0] - 1, jump_length, resamples)
    start = 0
    for k, k_next in zip(path, path[1:] + [None], strict=True):
        if k_next is not None and k_next > k:
            continue  # still going down: extend the segment
        if k > start:
            x = run.descend(x, start, k, options)
        if k_next is not None:
            x = run.jump(x, k, k_next)
        start = k_next
    return x


def inpaint(
    model: Callable[..., torch.Tensor],
    sde: LinearSDE,
    operator: LinearOperator,
    observation: torch.Tensor,
    *,
    method: Method = "replacement",
    sampler: str | None = None,
    steps: int = 100,
    prediction: Prediction = "score",
    grid: Grid | torch.Tensor | None = None,
    t_min: float | None = None,
    denoise_final: bool | None = None,
    generator: Generator = None,
    cond: Cond = None,
    dtype: torch.dtype = torch.float32,
    jump_length: int | None = None,
    resamples: int | None = None,
    particles: int | None = None,
    ess_threshold: float | None = None,
    noise_std: float | None = None,
    scale: float | None = None,
    **options,
) -> tuple[torch.Tensor, InpaintInfo]:
    """Samples of ``model``'s data given ``observation`` :math:`= A x` (see the module).

    Which samplers each method runs with (a clear error otherwise):

    - ``"replacement"``, ``"repaint"``: every fixed-grid sampler (their callback replaces the state
      after each step), stochastic or not; not the adaptive ones (``ode``, ``adaptive_sde``). A
      multistep sampler (DPM-Solver++ 2M/3M) restarts its history after each RePaint jump.
    - ``"smcdiff"``, ``"tds"``: samplers whose step is Gaussian, :math:`x' = m(x) + c z` with one
      model call at :math:`x` and :math:`c > 0` (``euler_maruyama``, ``ancestral``, ``ddim`` with
      ``eta > 0``, ``pc`` without corrector), since the weights are that step's likelihood. Not
      deterministic ones (no density), correctors, second stages or churn (the model is called
      at a noised state), nor multistep ones (their history cannot follow resampled particles).
    - ``"guidance"``: every sampler, adaptive ones too (it is a model transform).

    Args:
        model: ``model(x, t[, cond])`` predicting ``prediction``, unconditional in :math:`y`.
        sde: its linear SDE.
        operator: the measurement :math:`A` (:mod:`sdekit.measurements`); all methods but
            ``"guidance"`` need its pseudo-inverse (a :class:`~sdekit.measurements.Mask` or
            :class:`~sdekit.measurements.Downsample`).
        observation: :math:`y`, ``(batch, *operator.out_shape)``: one sample per row.
        method: one of :data:`METHODS`.
        sampler: a registered sampler (``sample(method=...)``'s names), with ``**options``;
            ``None``: ``"ddim"`` with ``eta=1`` for ``"repaint"`` (see the module), else
            ``"euler_maruyama"``.
        steps, grid, t_min, prediction, cond: as in :func:`sdekit.sample`.
        denoise_final: finish with Tweedie's step (+1 model call), then impose the observation;
            ``None``: for stochastic samplers, as :func:`sdekit.sample`.
        generator: a ``torch.Generator`` or one per sample (per row of ``observation``).
        dtype: the samples' dtype (on ``observation``'s device).
        jump_length, resamples: RePaint's :math:`j` (default 10) and :math:`r` (default 10).
        particles, ess_threshold: SMC's particles per sample (default 16) and the fraction of
            them (default 0.5) below which the effective sample size triggers resampling. The
            model is called on ``batch * particles`` states at once.
        noise_std, scale: guidance's :math:`\\sigma_y` (default 0) and weight (default 1).

    Returns:
        ``(samples, info)``, samples ``(batch, *operator.in_shape)``.

    Raises:
        ValueError: for bad input, or a method the sampler cannot run (the message says why).
        FloatingPointError: when the samples became NaN or inf.
    """
    check_choice("method", method, METHODS)
    if sampler is None and method == "repaint":
        sampler, options = "ddim", {"eta": 1.0, **options}
    sampler = "euler_maruyama" if sampler is None else sampler
    spec = get_sampler(sampler)
    check_prediction(prediction)
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"sde must be a LinearSDE for inpainting, got {type(sde).__name__}")
    if not isinstance(operator, LinearOperator):
        raise ValueError(f"operator must be a LinearOperator, got {type(operator).__name__}")
    given = {
        "jump_length": jump_length, "resamples": resamples, "particles": particles,
        "ess_threshold": ess_threshold, "noise_std": noise_std, "scale": scale,
    }  # fmt: skip
    owner = {"jump_length": ("repaint",), "resamples": ("repaint",)}
    owner |= {"particles": ("smcdiff", "tds"), "ess_threshold": ("smcdiff", "tds")}
    owner |= {"noise_std": ("guidance",), "scale": ("guidance",)}
    for name, value in given.items():
        if value is not None and method not in owner[name]:
            raise ValueError(
                f"{name} is an option of method {' and '.join(map(repr, owner[name]))}, "
                f"not {method!r}"
            )
    y = operator.check_observation(observation).to(dtype)
    batch = y.shape[0]
    check_cond(cond, batch)

    if method == "guidance":
        guided = ReconstructionGuidance(
            model, sde, operator, y, prediction=prediction,
            noise_std=0.0 if noise_std is None else noise_std,
            scale=1.0 if scale is None else scale,
        )  # fmt: skip
        x, info = sample(
            guided, sde, (batch, *operator.in_shape), method=sampler, steps=steps,
            prediction=prediction, grid=grid, t_min=t_min, denoise_final=denoise_final,
            generator=generator, cond=cond, device=y.device, dtype=dtype, **options,
        )  # fmt: skip
        return x, InpaintInfo(info.nfe, info.ts, method, spec.name)

    _check_fixed_grid(spec, method)
    operator.pinv(y[:1])  # fails early, naming the operator, when it has no pseudo-inverse
    if isinstance(grid, torch.Tensor):
        if t_min is not None:
            raise ValueError("t_min must be None when grid is a tensor (its last time is t_min)")
        ts = check_grid(sde, grid).to(y.device)
    else:
        ts = time_grid(sde, _check_int("steps", steps, 1), grid or spec.default_grid,
                       t_min=t_min, device=y.device)  # fmt: skip
    noise = NoiseSource(generator)
    run = _Run(model, sde, operator, y, spec, ts, prediction, cond, noise)
    if method in ("smcdiff", "tds"):
        check_gaussian_step(spec)
        particles = _check_int("particles", 16 if particles is None else particles, 1)
        ess = check_probability("ess_threshold", 0.5 if ess_threshold is None else ess_threshold)
        smc = {"particles": particles, "ess_threshold": ess, "options": options}
        smc["noise"] = ParticleNoise(generator, particles)
        args = (run.score, sde, spec, operator, run.target, ts)
        if method == "smcdiff":
            x = smcdiff(*args, path_noise=noise, **smc)
        else:
            x = tds(*args, **smc)
    else:
        x = sde.prior_std * noise(y.new_empty((batch, *operator.in_shape)))
        x = operator.impose(x, run.noised(0, x))
        if method == "repaint":
            j = 10 if jump_length is None else jump_length
            r = 10 if resamples is None else resamples
            x = _repaint(run, x, options, j, r)
        else:
            x = _replacement(run, x, options)
    if spec.stochastic if denoise_final is None else denoise_final:
        x = _tweedie(run.score, sde, x, ts[-1])
    x = operator.impose(x, run.target)
    if not bool(torch.isfinite(x).all()):  # one host synchronisation per call
        raise FloatingPointError(
            f"the samples of method {method!r} with sampler {spec.name!r} became NaN or inf: "
            "check the model's outputs near the ends of the schedule, or take more steps"
        )
    return x, InpaintInfo(run.score.nfe, ts, method, spec.name)
