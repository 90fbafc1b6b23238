r"""Training a score network by denoising score matching: the :class:`Trainer`.

One optimisation step minimises the loss of :class:`~sdekit.losses.DenoisingScoreMatching` on a
global batch of ``batch_size`` examples with AdamW (Loshchilov & Hutter 2019), a linear
learning-rate warm-up and gradient-norm clipping, then updates an :class:`~sdekit.ema.EMA` of the
weights, which is what samples are drawn from. The network may run under autocast (bf16, or fp16
with loss scaling) while the loss keeps its schedule arithmetic in float32/64.

Reproducibility. The data order and the loss's noise are *counter-based*: the permutation of epoch
:math:`e` and the generator of micro-batch :math:`m` at step :math:`k` are seeded from
``(seed, e)`` and ``(seed, k, m)``. So they need no saved state, a resumed run draws exactly what an
uninterrupted one would (bitwise on CPU), and the result does not depend on how the global batch is
split: ``W`` processes with ``grad_accum = A`` compute the same gradients as one process with
``grad_accum = W * A`` (up to the order of floating-point sums). The global generators (torch, CUDA,
NumPy, Python; e.g. dropout) are saved in every checkpoint, one set per process.

What a run does is set by a :class:`~sdekit.config.TrainConfig`.

Multi-process training runs under ``torchrun`` (``env://`` initialisation; NCCL on CUDA, Gloo on
CPU): each process takes its slice of every global batch and DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RESUMABLE_CHANGES, SDES, TrainConfig
from .data import load_dataset, to_pixel_range
from .ema import EMA
from .linear import LinearSDE

CHECKPOINT_NAME = "checkpoint.pt"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last checkpoint (written before it) is intact."""


def build_model(
    config: TrainConfig, data_shape: tuple[int, ...], num_classes: int | None, sde: LinearSDE
) -> nn.Module:
    """The network of ``config``: an :class:`~sdekit.networks.MLP` for vectors, a
    :class:`~sdekit.networks.UNet` for square images (attention at the lowest resolution),
    behind :class:`~sdekit.networks.EDMPrecond` for ``prediction="edm"``."""
    from .networks import MLP, EDMPrecond, UNet

    if len(data_shape) == 1:
        net = MLP(data_shape[0], config.hidden, config.depth, num_classes=num_classes)
    elif len(data_shape) == 3 and data_shape[1] == data_shape[2]:
        lowest = data_shape[1] // 2 ** (len(config.channel_mults) - 1)
        net = UNet(
            data_shape[0],
            data_shape[1],
            config.channels,
            config.channel_mults,
            config.num_res_blocks,
            attn_resolutions=(lowest,),
            dropout=config.dropout,
            num_classes=num_classes,
        )
    else:
        raise ValueError(f"data must be vectors (d,) or square images (C, H, H), got {data_shape}")
    if config.prediction == "edm":
        return EDMPrecond(net, sde, sigma_data=config.sigma_data)
    return net


def sample_prediction(config: TrainConfig) -> str:
    """What the trained model predicts, as :func:`sdekit.sampling.sample` names it."""
    return "x0" if config.prediction == "edm" else config.prediction


def _seed(*words: int) -> int:
    """A 63-bit seed mixing ``words`` (NumPy's SeedSequence hash: close inputs, unrelated seeds)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> 1)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} needs CUDA, which is not available")
        if dist.is_initialized():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


class _Autocast(nn.Module):
    """Runs ``net`` under autocast and hands float32 back, so the loss's arithmetic stays fp32."""

    def __init__(self, net: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.net, self.device_type, self.dtype = net, device_type, dtype

    def forward(self, x, t, *labels):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(x, t, *labels)
        return out.float()


class Trainer:
    """Trains the network of a :class:`TrainConfig`, resuming from ``out/checkpoint.pt`` if present.

    Args:
        config: the run.
        model: a network called as ``model(x, t)`` / ``model(x, t, labels)`` predicting
            ``config.prediction``, instead of the one :func:`build_model` makes.
        loss_fn: ``loss_fn(model, x0, labels=..., generator=...) -> scalar`` instead of
            :class:`~sdekit.losses.DenoisingScoreMatching` of the config.
        data: ``(x, labels)`` tensors instead of ``config.data``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from the environment.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: nn.Module | None = None,
        loss_fn: Callable | None = None,
        data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ):
        self.config = cfg = config
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            cuda = cfg.device.startswith("cuda") or (
                cfg.device == "auto" and torch.cuda.is_available()
            )
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.device = _resolve_device(cfg.device)
        micro = self.world_size * cfg.grad_accum
        if cfg.batch_size % micro:
            raise ValueError(
                f"batch_size must be a multiple of world size x grad_accum = {micro}, "
                f"got {cfg.batch_size}"
            )
        self.micro_batch = cfg.batch_size // micro

        if data is None:
            data = load_dataset(
                cfg.data,
                root=cfg.data_root,
                n=cfg.toy_size,
                image_size=cfg.image_size,
                generator=torch.Generator().manual_seed(_seed(cfg.seed, 1)),
            )
        x, labels = data
        if x.shape[0] < cfg.batch_size:
            raise ValueError(
                f"batch_size must be <= the data size {x.shape[0]}, got {cfg.batch_size}"
            )
        if cfg.class_conditional and labels is None:
            raise ValueError(f"class_conditional needs labels, data {cfg.data!r} has none")
        self.x = x.to(self.device)
        self.labels = labels.to(self.device) if cfg.class_conditional else None
        self.num_classes = int(labels.max()) + 1 if cfg.class_conditional else None
        self.data_shape = tuple(x.shape[1:])

        self.sde = SDES[cfg.sde]()
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        if model is None:
            model = build_model(cfg, self.data_shape, self.num_classes, self.sde)
        self.model = model.to(self.device)
        if loss_fn is None:
            from .losses import DenoisingScoreMatching

            loss_fn = DenoisingScoreMatching(
                self.sde,
                cfg.prediction,
                cfg.weighting,
                cfg.t_sampling,
                sigma_data=cfg.sigma_data,
                p_mean=cfg.p_mean,
                p_std=cfg.p_std,
            )
        self.loss_fn = loss_fn
        self.ema = EMA(self.model, cfg.ema_decay, warmup=cfg.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup else 1.0
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        net = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids)
        self._ddp = net
        if cfg.precision != "fp32":
            dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
            net = _Autocast(net, self.device.type, dtype)
        self.net = net

        # the global generators (dropout, user code): distinct per process
        s = _seed(cfg.seed, 2, self.rank)
        torch.manual_seed(s)
        np.random.seed(s % 2**32)  # noqa: NPY002 (seeding the global state is the point)
        random.seed(s)
        self.step = 0
        self._epoch, self._perm = -1, None
        self.out = Path(cfg.out)
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        if self.checkpoint_path.is_file():
            self._resume(load_checkpoint(self.checkpoint_path, map_location=self.device))

    # --- data order and noise: functions of (seed, step), so nothing to save or restore
    def _batch_indices(self, step: int) -> torch.Tensor:
        cfg, n = self.config, self.x.shape[0]
        per_epoch = n // cfg.batch_size
        epoch, j = divmod(step, per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_seed(cfg.seed, 3, epoch))
            self._epoch, self._perm = epoch, torch.randperm(n, generator=g).to(self.device)
        return self._perm[j * cfg.batch_size : (j + 1) * cfg.batch_size]

    def _noise_generator(self, step: int, micro: int) -> torch.Generator:
        g = torch.Generator(self.device)
        return g.manual_seed(_seed(self.config.seed, 4, step, micro))

    def train_step(self) -> torch.Tensor:
        """One optimisation step on the next global batch; returns the (global) loss, on device."""
        cfg, b = self.config, self.micro_batch
        idx = self._batch_indices(self.step)
        total = torch.zeros((), device=self.device)
        for a in range(cfg.grad_accum):
            m = self.rank * cfg.grad_accum + a
            chunk = idx[m * b : (m + 1) * b]
            kwargs = {"generator": self._noise_generator(self.step, m)}
            if self.labels is not None:
                kwargs["labels"] = self.labels[chunk]
            last = a == cfg.grad_accum - 1
            sync = (
                self._ddp.no_sync()
                if self.world_size > 1 and not last
                else contextlib.nullcontext()
            )
            with sync:
                loss = self.loss_fn(self.net, self.x[chunk], **kwargs) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        if self.world_size > 1:
            dist.all_reduce(total)
            total /= self.world_size
        return total

    def train(self) -> list[float]:
        """Run until ``config.steps``; returns the losses of the steps run by this call.

        Raises :class:`NonFiniteLossError` naming the step at the first NaN/inf loss, before any
        later checkpoint is written.
        """
        cfg = self.config
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        losses: list[float] = []
        pending: list[torch.Tensor] = []
        # on CPU reading the loss costs nothing: check it every step; on GPU at log intervals
        flush_every = 1 if self.device.type == "cpu" else cfg.log_every
        # None: tqdm shows the bar on a terminal and honours TQDM_DISABLE, instead of writing
        # carriage-return frames into redirected logs; other ranks never show one
        quiet = True if self.rank != 0 else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=quiet, desc="train", unit="step")
        with bar:
            while self.step < cfg.steps:
                pending.append(self.train_step())
                bar.update(1)
                k = self.step
                sample_now = cfg.sample_every and k % cfg.sample_every == 0
                save_now = cfg.checkpoint_every and k % cfg.checkpoint_every == 0
                done = k == cfg.steps
                if k % flush_every == 0 or sample_now or save_now or done:
                    self._flush(pending, losses)
                    pending = []
                    if k % cfg.log_every == 0 or done:
                        bar.set_postfix(loss=f"{losses[-1]:.4g}", lr=f"{self._lr():.2e}")
                if save_now or done:
                    self.save()
                if (sample_now or done) and self.rank == 0:
                    self.save_sample_grid(self.out / f"samples_{k:07d}.png")
        return losses

    def _flush(self, pending: list[torch.Tensor], losses: list[float]) -> None:
        first = self.step - len(pending) + 1
        for i, value in enumerate(torch.stack(pending).tolist()):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss is {value} at step {first + i}: training stopped; the last checkpoint "
                    f"({self.checkpoint_path}) is from before it"
                )
            losses.append(value)

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        """Everything a resume needs (collective under DDP: every process must call it)."""
        rng = rng_state()
        rngs = [rng]
        if self.world_size > 1:
            rngs = [None] * self.world_size
            dist.all_gather_object(rngs, rng)
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "data_shape": list(self.data_shape),
            "num_classes": self.num_classes,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
        }

    def save(self) -> None:
        """Write ``out/checkpoint.pt`` atomically (process 0 writes, all take part)."""
        state = self.state_dict()
        if self.rank == 0:
            save_checkpoint(state, self.checkpoint_path)

    def _resume(self, state: dict) -> None:
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        changed = sorted(
            k
            for k, v in self.config.to_dict().items()
            if saved[k] != v and k not in RESUMABLE_CHANGES
        )
        if changed:
            raise ValueError(
                f"{self.checkpoint_path} was written with different {changed}: resume with the "
                "same values or choose another out directory"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == self.world_size:
            set_rng_state(rngs[self.rank])

    def sample(self, n: int, *, method: str | None = None, steps: int | None = None):
        """``n`` samples from the EMA weights, seeded by ``config.seed`` (grids stay comparable)."""
        cfg = self.config
        return sample_from(
            self.ema.module,
            self.sde,
            (n, *self.data_shape),
            prediction=sample_prediction(cfg),
            num_classes=self.num_classes,
            method=method or cfg.sample_method,
            steps=steps or cfg.sample_steps,
            generator=torch.Generator(self.device).manual_seed(cfg.seed),
        )

    def save_sample_grid(self, path: str | Path) -> None:
        n = self.config.sample_n or (64 if len(self.data_shape) == 3 else 2000)
        reference = self.x[:2000] if len(self.data_shape) == 1 else None
        save_samples(self.sample(n), path, reference=reference)


def sample_from(
    model: nn.Module,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    prediction: str,
    num_classes: int | None = None,
    label: int | None = None,
    method: str = "dpmpp_2m",
    steps: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Samples of a trained (class-conditional) model with :func:`sdekit.sampling.sample`.

    A conditional model draws class ``label``, or the classes ``0, 1, ..., K-1`` in turn.
    """
    from .sampling import sample

    device = next(model.parameters()).device
    fn = model
    if num_classes is not None:
        if label is not None and not 0 <= label < num_classes:
            raise ValueError(f"label must lie in [0, {num_classes}), got {label}")
        ys = torch.arange(shape[0], device=device) % num_classes if label is None else None
        ys = torch.full((shape[0],), label, device=device) if label is not None else ys

        def fn(x, t):
            return model(x, t, ys)

    elif label is not None:
        raise ValueError("label needs a class-conditional model")
    with torch.no_grad():
        x, _ = sample(
            fn, sde, shape, method=method, steps=steps, prediction=prediction,
            generator=generator, device=device,
        )  # fmt: skip
    return x


class TrainedModel(NamedTuple):
    """A trained network and what is needed to sample from it (see :func:`load_model`)."""

    model: nn.Module
    sde: LinearSDE
    config: TrainConfig
    data_shape: tuple[int, ...]
    num_classes: int | None

    def sample(
        self,
        n: int,
        *,
        method: str = "dpmpp_2m",
        steps: int = 20,
        label: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` samples with :func:`sample_from`."""
        return sample_from(
            self.model,
            self.sde,
            (n, *self.data_shape),
            prediction=sample_prediction(self.config),
            num_classes=self.num_classes,
            label=label,
            method=method,
            steps=steps,
            generator=generator,
        )


def load_model(
    path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> TrainedModel:
    """The trained network of a checkpoint (the EMA weights by default) in eval mode, with its
    SDE, config, data shape and number of classes (``None`` if unconditional)."""
    state = load_checkpoint(path, map_location=device)
    config = TrainConfig.from_dict(state["config"])
    sde = SDES[config.sde]()
    shape = tuple(state["data_shape"])
    model = build_model(config, shape, state["num_classes"], sde)
    model.load_state_dict(state["ema"]["module"] if ema else state["model"])
    return TrainedModel(model.to(device).eval(), sde, config, shape, state["num_classes"])


def save_samples(
    x: torch.Tensor, path: str | Path, *, reference: torch.Tensor | None = None
) -> None:
    """Save samples as a PNG: images ``(n, C, H, W)`` in :math:`[-1, 1]` as a square grid (values
    outside are clipped for display only), 2D points as a scatter (over ``reference`` points in
    grey), 1D points as a histogram."""
    from matplotlib.figure import Figure

    x = x.detach().float().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.ndim == 4:
        n, c, h, w = x.shape
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
        pixels = to_pixel_range(x, 1.0).clamp(0, 1)
        for i in range(n):
            r, q = divmod(i, cols)
            grid[
                :, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w
            ] = pixels[i]
        img = grid.permute(1, 2, 0).numpy()
        fig = Figure(figsize=(cols * 0.6 + 0.4, rows * 0.6 + 0.4))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(
            img[..., 0] if c == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest"
        )
        ax.axis("off")
    elif x.ndim == 2 and x.shape[1] in (1, 2):
        fig = Figure(figsize=(5, 5))
        ax = fig.subplots()
        if x.shape[1] == 2:
            if reference is not None:
                ref = reference.detach().float().cpu()
                ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", label="data")
            ax.scatter(x[:, 0], x[:, 1], s=2, label="samples")
            ax.set_aspect("equal")
        else:
            if reference is not None:
                ax.hist(reference[:, 0].float().cpu(), bins=80, density=True, color="0.75")
            ax.hist(x[:, 0], bins=80, density=True, histtype="step")
    else:
        raise ValueError(
            f"x must be images (n, C, H, W) or points (n, 1 or 2), got {tuple(x.shape)}"
        )
    fig.savefig(path, dpi=100)
