r"""diffusers models as sdekit models, and the sdekit settings that reproduce diffusers' samplers.

A diffusers UNet is trained on timesteps :math:`\tau = 0..N-1` of a scheduler's
``alphas_cumprod`` :math:`\bar\alpha_\tau`. In the :class:`~sdekit.discrete.DiscreteVPSDE` of that
schedule, time :math:`t` is timestep :math:`\tau = Nt - 1` with :math:`\alpha(t)^2 = \bar\alpha_\tau`,
so the model is

.. math:: \text{model}(x, t) = \text{unet}(x,\ Nt - 1), \qquad \text{prediction} =
          \begin{cases} \texttt{"eps"} & \text{prediction\_type = "epsilon"} \\
          \texttt{"v"} & \text{"v\_prediction"}: \ v = \alpha\varepsilon - \sigma x_0 \\
          \texttt{"x0"} & \text{"sample"} \end{cases}

with no rescaling of :math:`x` (``init_noise_sigma = 1``: diffusers' DDPM-type schedulers work in
:math:`x` itself). :func:`options_matching_scheduler` gives the grid and options under which
sdekit's ``ddim`` and ``dpmpp_2m`` (``dpmpp_2m_sde``) take the same steps as diffusers'
``DDIMScheduler`` and ``DPMSolverMultistepScheduler``, or says why a setting cannot be reproduced.
Nothing here imports diffusers: models and schedulers are used through their attributes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..checks import check_choice
from ..conditioning import Cond
from ..discrete import DiscreteVPSDE

#: diffusers' ``prediction_type`` -> sdekit's prediction
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _config(module, name: str):
    config = getattr(module, "config", None)
    if config is None:
        raise ValueError(f"{name} must be a diffusers model or scheduler (with .config)")
    return config


class DiffusersModel(nn.Module):
    r"""An sdekit model ``model(x, t[, cond])`` from a diffusers UNet (see the module for the map).

    Use it as ``sample(model, model.sde, shape, prediction=model.prediction)``. ``cond``: a tensor
    is passed as ``class_labels`` (a class-conditional ``UNet2DModel``), a mapping as keyword
    arguments (``{"encoder_hidden_states": ...}`` for a ``UNet2DConditionModel``).

    A float16/bfloat16 UNet is given ``x`` in its dtype (sdekit's state and schedule stay float32/64).
    Times within the resolution of their dtype of an integer timestep are given to the UNet as that
    integer, so sampling on the scheduler's own timesteps feeds it exactly what diffusers does;
    other times give fractional timesteps (k-diffusion's convention; see
    :mod:`sdekit.discrete`). Times outside timesteps ``[0, N-1]`` raise: the UNet was not trained
    there.

    Args:
        unet: a diffusers model called as ``unet(sample, timestep, ...)``, with ``in_channels`` and
            ``out_channels`` in its config; a "positional" or "learned" time embedding.
        sde: the :class:`~sdekit.discrete.DiscreteVPSDE` of the schedule it was trained with.
        prediction_type: the scheduler's ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
    """

    def __init__(self, unet: nn.Module, sde: DiscreteVPSDE, prediction_type: str = "epsilon"):
        super().__init__()
        if not isinstance(sde, DiscreteVPSDE):
            raise ValueError(
                f"sde must be a DiscreteVPSDE (the model's discrete schedule), got "
                f"{type(sde).__name__}: DiscreteVPSDE.from_scheduler(scheduler)"
            )
        self.prediction = PREDICTION_TYPES[
            check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        ]
        config = _config(unet, "unet")
        self.in_channels = config.get("in_channels")
        out_channels = config.get("out_channels", self.in_channels)
        if self.in_channels is None or out_channels != self.in_channels:
            raise ValueError(
                f"unet's config must have out_channels == in_channels, got in_channels = "
                f"{self.in_channels}, out_channels = {out_channels} (a model with learned "
                "variance outputs [prediction, variance]; it is not a plain prediction model)"
            )
        embedding = config.get("time_embedding_type", "positional")
        if embedding not in ("positional", "learned"):
            raise ValueError(
                f"unet's time_embedding_type must be 'positional' or 'learned' (a timestep "
                f"model), got {embedding!r} ('fourier' UNets are conditioned on a VE noise level)"
            )
        trained = config.get("num_train_timesteps")
        if trained is not None and trained != sde.num_timesteps:
            raise ValueError(
                f"unet's config.num_train_timesteps = {trained} does not match the schedule's "
                f"{sde.num_timesteps} timesteps (len(alphas_cumprod))"
            )
        if embedding == "learned" and trained is None:
            raise ValueError("unet's learned time embedding needs config.num_train_timesteps")
        self.unet, self.sde = unet, sde
        self.integer_timesteps = embedding == "learned"

    @classmethod
    def from_scheduler(cls, unet: nn.Module, scheduler) -> DiffusersModel:
        """The model of ``unet`` with the schedule and ``prediction_type`` of a diffusers scheduler."""
        config = _config(scheduler, "scheduler")
        return cls(unet, DiscreteVPSDE.from_scheduler(scheduler), config.prediction_type)

    def timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps :math:`\\tau = Nt - 1` the UNet sees at times ``t`` (checked, see above)."""
        n = self.sde.num_timesteps
        tau = self.sde.timestep(t)
        # t carries a relative rounding error of eps, i.e. N * eps in timestep units
        resolution = 4 * n * torch.finfo(t.dtype).eps
        nearest = tau.round()
        integer = (tau - nearest).abs() <= resolution
        ok = (tau >= -resolution) & (tau <= n - 1 + resolution)
        if self.integer_timesteps:
            ok = ok & integer
        if tau.device.type == "cpu":
            if not bool(ok.all()):
                bad = t[~ok][:4].tolist()
                what = "integer timesteps" if self.integer_timesteps else "timesteps"
                raise ValueError(
                    f"t must lie at {what} in [0, {n - 1}] of the model (times (tau + 1)/N in "
                    f"[{1 / n:g}, 1]), got t = {bad}"
                )
        else:
            torch._assert_async(ok.all(), "t must lie at the model's timesteps [0, N-1]")
        return torch.where(integer, nearest, tau)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (batch, {self.in_channels}, height, width) for this unet "
                f"(in_channels = {self.in_channels}), got {tuple(x.shape)}"
            )
        tau = self.timesteps(t)
        if self.integer_timesteps:
            tau = tau.long()
        if cond is None:
            kwargs = {}
        elif isinstance(cond, Mapping):
            kwargs = dict(cond)
        else:
            kwargs = {"class_labels": cond}
        # a half-precision UNet gets its own dtype; sample() casts the output back to the state's
        dtype = getattr(self.unet, "dtype", x.dtype)
        return self.unet(x.to(dtype), tau, **kwargs, return_dict=False)[0]


def _is(obj, class_name: str) -> bool:
    return any(c.__name__ == class_name for c in type(obj).__mro__)


def _require(config, name: str, value, why: str) -> None:
    if config.get(name) != value:
        raise ValueError(
            f"scheduler.config.{name} = {config.get(name)!r} is not reproducible: {why}; create the "
            f"scheduler with {name}={value!r}"
        )


def options_matching_scheduler(scheduler, sde: DiscreteVPSDE | None = None) -> dict:
    r"""Keyword arguments of :func:`sdekit.sample` that take the steps ``scheduler`` takes.

    ``scheduler``: a diffusers ``DDIMScheduler`` or ``DPMSolverMultistepScheduler`` after
    ``set_timesteps(n)``. Returns ``method``, ``grid`` (the times of its timesteps, and of the
    final level), ``denoise_final`` (a last step to :math:`\sigma = 0` is Tweedie's
    :math:`\hat x_0`) and the method's options, so that
    ``sample(model, sde, x_T, prediction=model.prediction, **options)`` equals diffusers' loop from
    the same :math:`x_T` (for DDIM with ``eta > 0`` pass ``eta`` and the generator diffusers gets).
    Raises ``ValueError`` naming the setting when the scheduler's algorithm is not one of sdekit's.
    """
    config = _config(scheduler, "scheduler")
    if _is(scheduler, "DDIMScheduler"):
        build = _ddim_options
    elif _is(scheduler, "DPMSolverMultistepScheduler"):
        build = _dpm_solver_options
    else:
        raise ValueError(
            f"scheduler must be a DDIMScheduler or DPMSolverMultistepScheduler, got "
            f"{type(scheduler).__name__} (for Euler and Heun see options_matching_sigmas and "
            "k-diffusion's samplers)"
        )
    sde = DiscreteVPSDE.from_scheduler(scheduler) if sde is None else sde
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("scheduler has no timesteps yet: call scheduler.set_timesteps(n) first")
    if config.get("num_train_timesteps") != sde.num_timesteps:
        raise ValueError(
            f"scheduler.config.num_train_timesteps = {config.get('num_train_timesteps')} does not "
            f"match the sde's {sde.num_timesteps} timesteps"
        )
    timesteps = scheduler.timesteps.detach().to("cpu", torch.float64)
    if not bool((timesteps[1:] < timesteps[:-1]).all()):
        raise ValueError(
            "scheduler's timesteps repeat (num_inference_steps close to num_train_timesteps): "
            "steps of length zero are not reproducible; use fewer steps"
        )
    _require(config, "thresholding", False, "dynamic thresholding edits x0 at every step")
    return build(scheduler, config, sde, timesteps)


def _ddim_options(scheduler, config, sde: DiscreteVPSDE, timesteps: torch.Tensor) -> dict:
    _require(config, "clip_sample", False, "DDIM's default clips x0 to [-1, 1] at every step")
    stride = config.num_train_timesteps // scheduler.num_inference_steps
    # diffusers steps from tau to tau - stride, then calls the model at its next listed timestep
    for tau, nxt in zip(timesteps[:-1].tolist(), timesteps[1:].tolist(), strict=True):
        if tau - stride != nxt:
            raise ValueError(
                f"DDIMScheduler steps from timestep {tau:g} to {tau - stride:g} (timestep - "
                f"num_train_timesteps // num_inference_steps) but then evaluates the model at "
                f"{nxt:g}: state and time disagree, which no sampler on a time grid reproduces; "
                "use timestep_spacing='leading', or 'trailing' with num_inference_steps dividing "
                "num_train_timesteps"
            )
    grid = [sde.time(timesteps)]
    last = float(timesteps[-1]) - stride
    denoise_final = False
    if last >= 0:
        grid.append(sde.time([last]))
    elif config.set_alpha_to_one:
        denoise_final = True  # the last step goes to alpha_bar = 1: x0
    elif float(timesteps[-1]) > 0:
        grid.append(sde.time([0.0]))  # to alpha_bar_0 (at timestep 0 itself: an identity step)
    grid = torch.cat(grid)
    if grid.shape[0] < 2:
        raise ValueError("one DDIM step to x0 is sdekit's denoise step alone: use >= 2 steps")
    return {"method": "ddim", "grid": grid, "denoise_final": denoise_final}


def _dpm_solver_options(scheduler, config, sde: DiscreteVPSDE, timesteps: torch.Tensor) -> dict:
    algorithm = config.algorithm_type
    if algorithm not in ("dpmsolver++", "sde-dpmsolver++"):
        raise ValueError(
            f"scheduler.config.algorithm_type = {algorithm!r} is not reproducible: sdekit's "
            "DPM-Solver++ is the data-prediction solver; use 'dpmsolver++' or 'sde-dpmsolver++'"
        )
    _require(config, "solver_type", "midpoint", "sdekit's 2M is the midpoint form (Alg. 2)")
    if config.solver_order not in (1, 2):
        raise ValueError(
            f"scheduler.config.solver_order = {config.solver_order} is not reproducible: sdekit's "
            "dpmpp_3m estimates D'' in full where diffusers halves it; use solver_order 1 or 2"
        )
    # The levels diffusers steps with must be those of the timesteps the model is told; Karras,
    # Lu or exponential sigmas round the timesteps and keep the unrounded levels.
    sigmas = scheduler.sigmas.detach().to("cpu", torch.float64)
    expected = torch.exp(-0.5 * sde.log_snr(sde.time(timesteps)))
    if not torch.allclose(sigmas[:-1], expected, rtol=1e-5, atol=0):
        raise ValueError(
            "scheduler steps with noise levels that are not those of the timesteps it gives the "
            "model (use_karras_sigmas, use_lu_lambdas or use_exponential_sigmas round the "
            "timesteps): not reproducible by a sampler on one time grid"
        )
    n = len(timesteps)
    to_zero = config.final_sigmas_type == "zero"
    grid = sde.time(timesteps) if to_zero else torch.cat([sde.time(timesteps), sde.time([0.0])])
    if grid.shape[0] < 2:
        raise ValueError("one DPM-Solver step to x0 is sdekit's denoise step alone: use >= 2 steps")
    stochastic = algorithm == "sde-dpmsolver++"
    if config.solver_order == 1:
        return {"method": "ddim", "grid": grid, "denoise_final": to_zero, "eta": float(stochastic)}
    options = {
        "method": "dpmpp_2m_sde" if stochastic else "dpmpp_2m",
        "grid": grid,
        "denoise_final": to_zero,
    }
    # diffusers' last step is first order when it goes to sigma = 0 (sdekit's denoise step), with
    # euler_at_final, or with lower_order_final below 15 steps: sdekit's final="lower_order"
    # (for a second-order method, only the last step is lowered)
    first_order_last = config.euler_at_final or (config.lower_order_final and n < 15)
    lowered = first_order_last and not to_zero
    options["final"] = "lower_order" if lowered else "full_order"
    return options
