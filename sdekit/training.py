r"""Training a network by stochastic gradient descent on a loss: the :class:`Trainer`.

One optimisation step minimises the loss (by default
:class:`~sdekit.losses.DenoisingScoreMatching`) on a global batch of ``batch_size`` examples with
AdamW (Loshchilov & Hutter 2019), a linear learning-rate warm-up and gradient-norm clipping, then
updates an :class:`~sdekit.ema.EMA` of the weights, which is what samples are drawn from. The
network may run under autocast (bf16, or fp16 with loss scaling) while the loss keeps its schedule
arithmetic in float32/64.

Where the parts come from. Each set-up step is one function of :mod:`sdekit.builders` (data,
SDE, network, loss, optimiser, precision), :mod:`sdekit.distributed` (process group, device,
batch split, DDP) and :mod:`sdekit.seeding` (counter-based randomness); the Trainer calls them in
order and runs the loop, checkpoints (:mod:`sdekit.checkpoint`), logs (:mod:`sdekit.run_log`) and
sample grids (:mod:`sdekit.figures`). Other kinds of training reuse it by passing their own parts::

    Trainer(config, model=classifier, loss_fn=cross_entropy_on_noisy_x, data=(x, labels),
            sample_grid=False)
    Trainer(config, model=controlled_unet, data=(x, {"hint": hints, "labels": labels}))
    Trainer(config, sde=VPSDE(beta_max=10.0))       # any LinearSDE, a user's own included

The checkpoint records the configs of the SDE and the network
(:func:`sdekit.inference.describe_setup`), so :func:`~sdekit.inference.load_model` and
``python -m sdekit sample`` rebuild the set-up whole.

Only parameters that require grad are optimised and averaged (a frozen base network stays
bitwise as it was), and checkpoints hold whatever the model's ``state_dict`` holds.

Reproducibility. The data order and the loss's noise are *counter-based* (:mod:`sdekit.seeding`):
a resumed run draws exactly what an uninterrupted one would (bitwise on CPU), and ``W`` processes
with ``grad_accum = A`` compute the same gradients as one process with ``grad_accum = W * A`` (up
to the order of floating-point sums). The global generators (torch, CUDA, NumPy, Python; e.g.
dropout) are saved in every checkpoint, one set per process.

Multi-process training runs under ``torchrun`` (:mod:`sdekit.distributed`): each process takes its
slice of every global batch and DDP averages the gradients.

Speed. A step asks the host for nothing on an accelerator: the loss and gradient norm stay on the
device and are read every ``log_every`` steps (on a CPU, where a read is free, every step, so a NaN
stops the run at its step); the value checks of the loss are ``torch._assert_async`` there, and
AdamW is fused (:func:`~sdekit.builders.build_optimizer`), its step counter on the device.
``config.channels_last`` puts image networks and batches in channels_last memory format (with
``precision="bf16"``, the usual fast path of convolutions on a GPU), ``config.compile`` wraps the
network in ``torch.compile``. fp16 loss scaling alone reads the host each step (its inf check).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .builders import (
    build_grad_scaler,
    build_loss,
    build_model,
    build_optimizer,
    build_sde,
    check_cond_for_built_model,
    check_data,
    load_data,
    num_classes,
    sample_prediction,
    trainable_parameters,
    with_precision,
)
from .checkpoint import (
    check_finite_parameters,
    load_checkpoint,
    remove_stale_temporaries,
    require_keys,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .conditioning import Cond, select
from .config import RESUMABLE_CHANGES, TrainConfig
from .config import SDES as SDES  # re-exported: the names people import from sdekit.training
from .configurable import to_config
from .distributed import (
    all_gather_objects,
    all_reduce_mean,
    init_process_group,
    micro_batch_ids,
    micro_batch_size,
    resolve_device,
    wrap_ddp,
)
from .ema import EMA
from .figures import save_samples
from .inference import TrainedModel as TrainedModel
from .inference import describe_setup, sample_from
from .inference import load_model as load_model
from .linear import LinearSDE
from .run_log import RunLog
from .seeding import BatchOrder, noise_generator, seed_global_generators

CHECKPOINT_NAME = "checkpoint.pt"
#: the first sample grid of a :meth:`Trainer.train` call comes after this many steps, or
EARLY_GRID_STEPS = 100
#: after this many seconds if that is sooner: a wrong setup shows in minutes
EARLY_GRID_SECONDS = 60.0
_STATE_KEYS = ("step", "config", "data_shape", "num_classes", "model", "ema", "optimizer",
               "scheduler", "scaler", "rng")  # fmt: skip


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last checkpoint (written before it) is intact."""


def _cond_to(cond: Cond, device: torch.device) -> Cond:
    if isinstance(cond, torch.Tensor):
        return cond.to(device)
    if cond is not None:
        return {key: value.to(device) for key, value in cond.items()}
    return None


class Trainer:
    """Trains a network on ``config``'s run, resuming from ``out/checkpoint.pt`` if present.

    Args:
        config: the run.
        model: a network called as ``model(x, t)`` / ``model(x, t, cond)``, instead of the one
            :func:`~sdekit.builders.build_model` makes. Its parameters that require grad are
            trained and averaged; its ``state_dict`` is what checkpoints hold.
        loss_fn: ``loss_fn(net, x0, cond=..., generator=...) -> scalar`` instead of
            :class:`~sdekit.losses.DenoisingScoreMatching` of the config; ``cond`` is the
            micro-batch's rows of the condition (``None`` without one), ``generator`` the
            micro-batch's own (draw all randomness from it for exact resumes).
        sde: the forward SDE instead of ``config.sde``'s (which is then unused): any
            :class:`~sdekit.linear.LinearSDE`, e.g. ``VPSDE(beta_max=10.0)`` or your own. Its
            config is recorded in the checkpoint (see :mod:`sdekit.inference`: a class of your
            own must be importable, i.e. defined in a module, where the model is loaded).
        data: ``(x, cond)`` instead of ``config.data``: ``x`` a float tensor ``(N, ...)``,
            ``cond`` ``None``, a tensor ``(N, ...)`` (class labels) or a mapping of such tensors
            (``{"hint": ..., "labels": ...}``), indexed with :func:`sdekit.conditioning.select`.
        sample_grid: ``True``: sample grids of the EMA network with the config's sampler
            (:meth:`sample`); ``False``: none (a network that is not a generative model, e.g.
            a classifier); or ``fn(ema_network, n) -> samples`` for one that samples its own way.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from the environment.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: nn.Module | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        data: tuple[torch.Tensor, Cond] | None = None,
        sde: LinearSDE | None = None,
        sample_grid: bool | Callable[[nn.Module, int], torch.Tensor] = True,
    ):
        self.config = cfg = config
        self.sample_grid = sample_grid
        self.rank, self.world_size = init_process_group(cfg.device)
        self.device = resolve_device(cfg.device)
        self.micro_batch = micro_batch_size(cfg.batch_size, self.world_size, cfg.grad_accum)
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out must be a run directory, {self.out} is a file")
        self.checkpoint_path = self.out / CHECKPOINT_NAME

        x, cond = load_data(cfg) if data is None else data
        check_data(x, cond)
        if model is None:
            check_cond_for_built_model(cfg, cond)
        self.num_classes = num_classes(cfg, cond)
        self.x, self.cond = x.to(self.device), _cond_to(cond, self.device)
        self.data_shape = tuple(x.shape[1:])
        self._order = BatchOrder(x.shape[0], cfg.batch_size, cfg.seed, self.device)

        if sde is not None and not isinstance(sde, LinearSDE):
            raise ValueError(
                f"sde must be a LinearSDE (sdekit.linear: VP, sub-VP, VE, EDM, OU or your own "
                f"subclass), got {type(sde).__name__}"
            )
        self.sde = build_sde(cfg) if sde is None else sde
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        if model is None:
            model = build_model(cfg, self.data_shape, self.num_classes, self.sde)
        self.model = model.to(self.device)
        self.setup = describe_setup(self.sde, self.model)
        if cfg.channels_last and len(self.data_shape) == 3:
            # NHWC convolutions: the network's 4D weights and the data (so every batch) alike
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.loss_fn = build_loss(cfg, self.sde) if loss_fn is None else loss_fn
        self.trainable = trainable_parameters(self.model)
        self.ema = EMA(self.model, cfg.ema_decay, warmup=cfg.ema_warmup)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.trainable)
        self.scaler = build_grad_scaler(cfg, self.device)
        self._ddp = wrap_ddp(self.model, self.device)
        # compiled around DDP, as torch recommends; EMA and checkpoints keep the plain module
        net = torch.compile(self._ddp) if cfg.compile else self._ddp
        self.net = with_precision(net, cfg.precision, self.device)
        seed_global_generators(cfg.seed, self.rank)

        self.step = 0
        self.grad_norm = torch.zeros((), device=self.device)
        if self.rank == 0:
            removed = remove_stale_temporaries(self.checkpoint_path)
            if removed:
                print(
                    f"sdekit: removed {len(removed)} temporary file(s) that an interrupted save "
                    f"left in {self.out}",
                    file=sys.stderr,
                )
        if self.checkpoint_path.exists():
            self._resume(load_checkpoint(self.checkpoint_path, map_location=self.device))

    def train_step(self) -> torch.Tensor:
        """One optimisation step on the next global batch; returns the (global) loss, on device.

        Leaves the gradient norm before clipping in :attr:`grad_norm` (on device).
        """
        cfg, b = self.config, self.micro_batch
        idx = self._order(self.step)
        total = torch.zeros((), device=self.device)
        for a, m in enumerate(micro_batch_ids(self.rank, cfg.grad_accum)):
            chunk = idx[m * b : (m + 1) * b]
            cond = select(self.cond, chunk)
            # under DDP, gradients are averaged over the processes at the last micro-batch only
            accumulate = a < cfg.grad_accum - 1 and self._ddp is not self.model
            with self._ddp.no_sync() if accumulate else contextlib.nullcontext():
                g = noise_generator(cfg.seed, self.step, m, self.device)
                loss = self.loss_fn(self.net, self.x[chunk], cond=cond, generator=g)
                loss = loss / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            self.grad_norm = nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        else:
            grads = [p.grad for p in self.trainable if p.grad is not None]
            self.grad_norm = nn.utils.get_total_norm(grads)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return all_reduce_mean(total)

    def train(self) -> list[float]:
        """Run until ``config.steps``; returns the losses of the steps run by this call.

        Writes ``config.json``, the log (:mod:`sdekit.run_log`), checkpoints every
        ``checkpoint_every`` steps and at the end, and sample grids: the first after
        :data:`EARLY_GRID_STEPS` steps or :data:`EARLY_GRID_SECONDS` seconds, then every
        ``sample_every`` steps and at the end. Raises :class:`NonFiniteLossError` naming the step
        at the first NaN/inf loss, before any later checkpoint is written.
        """
        cfg = self.config
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        losses: list[float] = []
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        since: list[tuple[float, float]] = []  # (loss, grad norm) since the last log line
        # on CPU reading the loss costs nothing: check it every step; on GPU at log intervals
        flush_every = 1 if self.device.type == "cpu" else cfg.log_every
        start, early = self.step, bool(cfg.sample_every) and self.sample_grid is not False
        log = RunLog(
            self.out if self.rank == 0 else None,
            start_step=self.step,
            total_steps=cfg.steps,
            batch_size=cfg.batch_size,
        )
        with log:
            while self.step < cfg.steps:
                pending.append((self.train_step(), self.grad_norm))
                log.advance()
                k = self.step
                done = k == cfg.steps
                regular = cfg.sample_every and k % cfg.sample_every == 0
                soon = early and (
                    k - start >= EARLY_GRID_STEPS or log.elapsed() >= EARLY_GRID_SECONDS
                )
                sample_now = self.sample_grid is not False and (regular or soon or done)
                save_now = done or (cfg.checkpoint_every and k % cfg.checkpoint_every == 0)
                log_now = k % cfg.log_every == 0 or sample_now or done
                if k % flush_every == 0 or log_now or save_now:
                    since += self._flush(pending, losses)
                    pending = []
                if save_now:
                    self.save()
                grid = None
                if sample_now:
                    early = False
                    if self.rank == 0:
                        grid = self.out / f"samples_{k:07d}.png"
                        self.save_sample_grid(grid)
                if log_now:
                    loss, norm = (math.fsum(v) / len(since) for v in zip(*since, strict=True))
                    log.record(k, loss, self._lr(), norm, grid.name if grid else None)
                    since = []
                if grid is not None or done:
                    log.save_curve()
        return losses

    def _flush(
        self, pending: list[tuple[torch.Tensor, torch.Tensor]], losses: list[float]
    ) -> list[tuple[float, float]]:
        first = self.step - len(pending) + 1
        values = torch.stack([loss for loss, _ in pending]).tolist()
        norms = torch.stack([norm for _, norm in pending]).tolist()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss is {value} at step {first + i}: training stopped; the last checkpoint "
                    f"({self.checkpoint_path}) is from before it"
                )
            losses.append(value)
        return list(zip(values, norms, strict=True))

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        """Everything a resume needs (collective under DDP: every process must call it)."""
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "data_shape": list(self.data_shape),
            "num_classes": self.num_classes,
            "setup": self.setup,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": all_gather_objects(rng_state()),
        }

    def save(self) -> None:
        """Write ``out/checkpoint.pt`` atomically (process 0 writes, all take part)."""
        state = self.state_dict()
        if self.rank == 0:
            save_checkpoint(state, self.checkpoint_path)

    def _resume(self, state: dict) -> None:
        path = self.checkpoint_path
        require_keys(state, _STATE_KEYS, path)
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        changed = sorted(
            k
            for k, v in self.config.to_dict().items()
            if saved[k] != v and k not in RESUMABLE_CHANGES
        )
        if changed:
            raise ValueError(
                f"{path} was written with different {changed}: resume with the same values or "
                "choose another out directory"
            )
        step = int(state["step"])
        if self.config.steps < step:
            raise ValueError(
                f"{path} is at step {step}, past steps={self.config.steps}: pass steps > {step} "
                "to train on, or choose another out directory (nothing was changed)"
            )
        self._check_setup(state.get("setup"), saved)
        if tuple(state["data_shape"]) != self.data_shape:
            raise ValueError(
                f"{path} was trained on data of shape {tuple(state['data_shape'])}, this data "
                f"has {self.data_shape}: choose another out directory"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        check_finite_parameters(self.model, "model", path)
        check_finite_parameters(self.ema.module, "EMA", path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = step
        rngs = state["rng"]
        if len(rngs) == self.world_size:
            set_rng_state(rngs[self.rank])

    def _check_setup(self, saved_setup: dict | None, saved_config: dict) -> None:
        """The resumed run's SDE and network configs must be the checkpoint's."""
        if saved_setup is None:  # a checkpoint from before set-ups: its SDE is the config's
            sde = build_sde(TrainConfig.from_dict(saved_config))
            saved_setup = {"sde": to_config(sde, "SDE"), "model": None}
        for key, what in (("sde", "SDE"), ("model", "network")):
            ours, theirs = self.setup.get(key), saved_setup.get(key)
            if ours is not None and theirs is not None and ours != theirs:
                raise ValueError(
                    f"{self.checkpoint_path} was written with another {what}, "
                    f"{json.dumps(theirs)}; this run has {json.dumps(ours)}: resume with the same "
                    f"{what} or choose another out directory"
                )

    def sample(
        self,
        n: int,
        *,
        method: str | None = None,
        steps: int | None = None,
        threshold: str | None = None,
    ):
        """``n`` samples from the EMA weights, seeded by ``config.seed`` (grids stay comparable),
        with the config's sampler, steps and ``sample_threshold`` unless given.

        A class-conditional run draws its classes in turn; a run with another condition draws
        with the conditions of the first ``n`` training examples (repeated if fewer).
        """
        cfg = self.config
        labels = self.num_classes is not None and isinstance(self.cond, torch.Tensor)
        cond = None
        if self.cond is not None and not labels:
            cond = select(self.cond, torch.arange(n, device=self.device) % self.x.shape[0])
        return sample_from(
            self.ema.module,
            self.sde,
            (n, *self.data_shape),
            prediction=sample_prediction(cfg),
            num_classes=self.num_classes if labels else None,
            cond=cond,
            method=method or cfg.sample_method,
            steps=steps or cfg.sample_steps,
            generator=torch.Generator(self.device).manual_seed(cfg.seed),
            threshold=threshold or cfg.sample_threshold,
        )

    def save_sample_grid(self, path: str | Path) -> None:
        """Draw ``config.sample_n`` samples (default 64 images or 2000 points) and save them as
        a PNG (:func:`sdekit.figures.save_samples`; points over the data in grey)."""
        n = self.config.sample_n or (64 if len(self.data_shape) == 3 else 2000)
        reference = self.x[:2000] if len(self.data_shape) == 1 else None
        if callable(self.sample_grid):
            with torch.no_grad():
                x = self.sample_grid(self.ema.module, n)
        else:
            x = self.sample(n)
        save_samples(x, path, reference=reference)
