r"""Training and sampling a ControlNet (:mod:`sdekit.networks.controlnet`) from a trained run.

:func:`control_trainer` turns a base checkpoint (``runs/digits/checkpoint.pt``) and a hint
(:mod:`sdekit.hints`) into a :class:`~sdekit.training.Trainer` of the control branch alone:

1. the base network is rebuilt from its checkpoint (its EMA weights by default) and frozen;
2. its data set is loaded and every image's hint made once (a ``"mask"`` hint's masks are drawn
   from the seed ``(seed, 6)``); the condition is ``{"hint": hints}``, plus ``"labels"`` for a
   class-conditional base;
3. the control branch is copied from the base (:meth:`ControlNet.from_unet`, seeded by ``seed``)
   and trained with the base's own loss (prediction, weighting, time sampling, SDE), optionally
   with **hint dropout** (:func:`with_hint_dropout`): each example's hint is replaced by zeros
   with probability :math:`p`, so that the network also learns the hint-free model and
   classifier-free guidance on the hint (Ho & Salimans 2022) becomes possible with
   ``uncond=``:func:`zero_hint`.

The checkpoint (``out/checkpoint.pt``) holds the control branch alone (and its EMA) and, under
``"control"``, the base it belongs to: its path, its :func:`~sdekit.networks.controlnet.fingerprint`
(SHA-256 of its state dict) and which weights (EMA or raw); the hint and the branch's
architecture. :func:`load_controlled` rebuilds the controlled model from it and refuses a base
whose fingerprint differs (:class:`~sdekit.networks.controlnet.BaseMismatchError`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .builders import build_loss, load_data, sample_prediction
from .checkpoint import CheckpointError, load_checkpoint, require_keys
from .conditioning import Cond, select
from .config import TrainConfig
from .data import load_image_folder, to_model_range
from .hints import HINT_NAMES, Hint, make_hints
from .inference import Generator, load_model, sample_from
from .linear import LinearSDE
from .networks.controlnet import (
    BaseMismatchError,
    ControlNet,
    base_unet,
    controlled,
    fingerprint,
)
from .seeding import derive_seed, sample_generators
from .training import CHECKPOINT_NAME, Trainer

#: the fields of the base's config a control run may change (what is trained and how, not on what)
TRAINING_FIELDS = (
    "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "grad_accum",
    "ema_decay", "ema_warmup", "precision", "seed", "device", "out", "log_every", "sample_every",
    "checkpoint_every", "sample_method", "sample_steps", "sample_n",
)  # fmt: skip
#: the checkpoint entries that must match when a control run is resumed
_RESUME_KEYS = ("base_sha256", "base_weights", "hint", "hint_channels", "hint_size", "hint_hidden",
                "hint_dropout")  # fmt: skip


def zero_hint(cond: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``cond`` with its hint replaced by zeros: the condition a network trained with hint dropout
    reads as "no hint" (``uncond=`` of classifier-free guidance); labels are kept."""
    if not isinstance(cond, Mapping) or "hint" not in cond:
        raise ValueError("cond must be a mapping with a 'hint' entry")
    return {**cond, "hint": torch.zeros_like(cond["hint"])}


def with_hint_dropout(
    loss_fn: Callable[..., torch.Tensor], p: float
) -> Callable[..., torch.Tensor]:
    """``loss_fn`` on conditions whose hints are replaced by zeros independently with probability
    ``p`` per example, drawn first from the loss's ``generator`` (so a resumed run drops the same
    hints); ``p = 0`` returns ``loss_fn`` itself."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise ValueError(f"hint_dropout must lie in [0, 1), got {p!r}")
    if p == 0:
        return loss_fn

    def loss(net, x0, *, cond, generator=None):
        hint = cond["hint"]
        u = torch.rand(hint.shape[0], generator=generator, device=hint.device)
        keep = (u >= p).to(hint.dtype).reshape(-1, *[1] * (hint.ndim - 1))
        return loss_fn(net, x0, cond={**cond, "hint": hint * keep}, generator=generator)

    return loss


class ControlTrainer(Trainer):
    """A :class:`~sdekit.training.Trainer` whose checkpoints also hold ``control``: what
    :func:`load_controlled` needs to rebuild the controlled model (see :func:`control_trainer`)."""

    def __init__(self, config: TrainConfig, *, control: dict[str, Any], **parts):
        self.control_info = dict(control)
        with warnings.catch_warnings():
            # the checkpoint records no network config: load_controlled rebuilds the controlled
            # model from the base checkpoint and "control", not load_model from a config
            warnings.filterwarnings("ignore", r"network \(a \w+\) cannot describe itself")
            super().__init__(config, **parts)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "control": self.control_info}


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    bad = sorted(set(overrides) - set(TRAINING_FIELDS))
    if bad:
        raise ValueError(
            f"a control run takes its data, SDE and loss from the base; it cannot change {bad}. "
            f"It may change {list(TRAINING_FIELDS)}"
        )


def control_trainer(
    base: str | Path,
    hint: Hint,
    *,
    hint_dropout: float = 0.0,
    hint_hidden: int = 16,
    base_ema: bool = True,
    data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    sample_grid: bool = True,
    **overrides: Any,
) -> ControlTrainer:
    """A trainer of a ControlNet on the base checkpoint ``base`` (module docs); ``.train()`` runs it.

    Args:
        base: the base run's ``checkpoint.pt``.
        hint: ``"edges"``, ``"downsample"``, ``"mask"`` (:mod:`sdekit.hints`) or a function
            ``fn(x) -> hint`` (a run with one cannot be sampled from the command line, which
            cannot recompute its hints).
        hint_dropout: probability :math:`p \\in [0, 1)` of a zero hint per example.
        hint_hidden: channels of the hint encoder's first layers.
        base_ema: control the base's EMA weights (what it is sampled with), or its raw weights.
        data: ``(images, labels)`` to make the hints from and train on, instead of the base's data
            set (``labels`` ``None`` for an unconditional base).
        sample_grid: draw sample grids (with the first training examples' hints) while training.
        overrides: :class:`~sdekit.config.TrainConfig` fields of :data:`TRAINING_FIELDS`
            (``steps``, ``lr``, ``out``, ...); the others come from the base's config.
    """
    _check_overrides(overrides)
    if not callable(hint) and hint not in HINT_NAMES:
        raise ValueError(f"hint must be one of {HINT_NAMES} or a function, got {hint!r}")
    trained = load_model(base, ema=base_ema, device="cpu")
    if len(trained.data_shape) != 3:
        raise ValueError(
            f"a ControlNet controls an image model; {base} was trained on data of shape "
            f"{trained.data_shape}"
        )
    model = trained.model.requires_grad_(False)
    config = TrainConfig.from_dict({**trained.config.to_dict(), **overrides})
    x, labels = load_data(config) if data is None else data
    if (labels is None) != (trained.num_classes is None):
        need = "needs labels" if labels is None else "is unconditional: give no labels"
        raise ValueError(f"the base model {need} (data=(images, labels))")
    hints = make_hints(
        hint, x, generator=torch.Generator().manual_seed(derive_seed(config.seed, 6))
    )
    cond: dict[str, torch.Tensor] = {"hint": hints}
    if labels is not None:
        cond["labels"] = labels
    torch.manual_seed(config.seed)
    control = ControlNet.from_unet(
        base_unet(model), hints.shape[1], hint_size=hints.shape[-1], hint_hidden=hint_hidden
    )
    info = {
        "base": str(base),
        "base_sha256": fingerprint(base_unet(model)),
        "base_weights": "ema" if base_ema else "model",
        "hint": hint if isinstance(hint, str) else f"custom:{getattr(hint, '__name__', 'fn')}",
        "hint_channels": control.hint_channels,
        "hint_size": control.hint_size,
        "hint_hidden": hint_hidden,
        "hint_dropout": float(hint_dropout),
    }
    _check_resume(Path(config.out) / CHECKPOINT_NAME, info)
    loss = with_hint_dropout(build_loss(config, trained.sde), hint_dropout)
    return ControlTrainer(
        config,
        model=controlled(model, control),
        loss_fn=loss,
        data=(x, cond),
        sample_grid=sample_grid,
        control=info,
    )


def _check_resume(path: Path, info: dict[str, Any]) -> None:
    if not path.exists():
        return
    state = load_checkpoint(path)
    if "control" not in state:
        raise ValueError(
            f"{path} is not a ControlNet run's checkpoint: choose another out directory"
        )
    saved = state["control"]
    changed = [k for k in _RESUME_KEYS if saved.get(k) != info[k]]
    if changed:
        raise ValueError(
            f"{path} was trained with other {changed} ({[saved.get(k) for k in changed]} against "
            f"{[info[k] for k in changed]}): resume with the same base and hint, or choose "
            "another out directory"
        )


class ControlledModel(NamedTuple):
    """A trained ControlNet on its base, ready to sample (see :func:`load_controlled`)."""

    model: nn.Module
    sde: LinearSDE
    config: TrainConfig
    data_shape: tuple[int, ...]
    num_classes: int | None
    control: dict[str, Any]

    def hints(self, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """The hints of ``images`` (model range) by the run's built-in hint."""
        name = self.control["hint"]
        if name not in HINT_NAMES:
            raise ValueError(
                f"this run was trained on the hints of a user function ({name}): make the hints "
                "with it and pass them to sample()"
            )
        generator = torch.Generator().manual_seed(derive_seed(seed, 6))
        return make_hints(name, images.float().cpu(), generator=generator)

    def sample(
        self,
        hints: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        method: str = "dpmpp_2m",
        steps: int = 20,
        generator: Generator = None,
    ) -> torch.Tensor:
        """One sample per hint (and label, for a class-conditional base), in one batch."""
        device = next(self.model.parameters()).device
        cond = self._cond(hints, labels, device)
        return sample_from(
            self.model, self.sde, (hints.shape[0], *self.data_shape),
            prediction=sample_prediction(self.config), cond=cond, method=method, steps=steps,
            generator=generator,
        )  # fmt: skip

    def sample_batched(
        self,
        hints: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        batch_size: int = 256,
        seed: int = 0,
        method: str = "dpmpp_2m",
        steps: int = 20,
    ) -> torch.Tensor:
        """:meth:`sample` in batches of ``batch_size``, sample ``i`` from its own generator
        ``(seed, 5, i)``: the result does not depend on ``batch_size``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        device = next(self.model.parameters()).device
        cond = self._cond(hints, labels, device)
        parts = []
        for start in range(0, hints.shape[0], batch_size):
            rows = slice(start, min(hints.shape[0], start + batch_size))
            x = sample_from(
                self.model, self.sde, (rows.stop - start, *self.data_shape),
                prediction=sample_prediction(self.config), cond=select(cond, rows), method=method,
                steps=steps, generator=sample_generators(seed, range(start, rows.stop), device),
            )  # fmt: skip
            parts.append(x.cpu())
        return torch.cat(parts)

    def _cond(self, hints: torch.Tensor, labels: torch.Tensor | None, device) -> Cond:
        if not isinstance(hints, torch.Tensor) or hints.ndim != 4 or hints.shape[0] < 1:
            raise ValueError("hints must be a non-empty batch of hint images (N, C, H, W)")
        if (labels is None) != (self.num_classes is None):
            need = "needs labels (N,)" if labels is None else "is unconditional: pass no labels"
            raise ValueError(f"the base model {need}")
        cond = {"hint": hints.to(device)}
        if labels is not None:
            cond["labels"] = labels.to(device)
        return cond


def load_controlled(
    path: str | Path,
    *,
    base: str | Path | None = None,
    ema: bool = True,
    scale: float = 1.0,
    device: str | torch.device = "cpu",
) -> ControlledModel:
    """The controlled model of a ControlNet run's checkpoint, in eval mode.

    Args:
        path: the control run's ``checkpoint.pt``.
        base: the base checkpoint (default: the path the control checkpoint names; pass it when
            the base has moved). Its weights must have the fingerprint the control branch was
            trained on: :class:`~sdekit.networks.controlnet.BaseMismatchError` otherwise.
        ema: the control branch's EMA weights, or its last ones.
        scale: the conditioning scale (0: the base model).
    """
    state = load_checkpoint(path, map_location="cpu")
    if "control" not in state:
        raise CheckpointError(
            f"{path} is not a ControlNet checkpoint (it holds no 'control' entry): sample a "
            "plain run without --hint-from (sdekit.inference.load_model)"
        )
    require_keys(state, ("config", "model", "ema"), path)
    info = state["control"]
    base_path = Path(info["base"] if base is None else base)
    if not base_path.exists():
        raise FileNotFoundError(
            f"the base checkpoint {base_path} of {path} does not exist: pass the base's path "
            "(base=..., --base)"
        )
    trained = load_model(base_path, ema=info["base_weights"] == "ema", device="cpu")
    net = base_unet(trained.model.requires_grad_(False))
    found = fingerprint(net)
    if found != info["base_sha256"]:
        raise BaseMismatchError(
            f"{path} was trained on the base with fingerprint {info['base_sha256'][:16]}... "
            f"({info['base']}, {info['base_weights']} weights); {base_path} holds one with "
            f"{found[:16]}...: a different (retrained or overwritten?) base"
        )
    control = ControlNet.from_unet(
        net, info["hint_channels"], hint_size=info["hint_size"], hint_hidden=info["hint_hidden"]
    )
    model = controlled(trained.model, control, scale)
    model.load_state_dict(state["ema"]["module"] if ema else state["model"])
    return ControlledModel(
        model.to(device).eval(), trained.sde, trained.config, trained.data_shape,
        trained.num_classes, info,
    )  # fmt: skip


def read_images(path: str | Path, data_shape: tuple[int, ...]) -> torch.Tensor:
    """Images to make hints from, in the model range: a ``.pt`` or ``.npy`` tensor
    ``(N, C, H, W)`` (or ``(N, H, W)`` for one channel) of floats in :math:`[-1, 1]` or of
    ``uint8`` pixels, or a folder of image files (resized to the model's size). They must have
    the model's ``data_shape``."""
    path = Path(path)
    c, h, w = data_shape
    if path.is_dir():
        x, _ = load_image_folder(path, image_size=h if h == w else None, channels=c)
    elif path.suffix in (".pt", ".npy"):
        if not path.is_file():
            raise FileNotFoundError(f"images must be an existing file or folder, {path} is not")
        if path.suffix == ".pt":
            x = torch.load(path, map_location="cpu", weights_only=True)
        else:
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{path} must hold one tensor of images, got {type(x).__name__}")
        if x.ndim == 3 and c == 1:
            x = x[:, None]
        if x.dtype == torch.uint8:
            x = to_model_range(x)
        elif not x.is_floating_point():
            raise ValueError(f"images in {path} must be floats in [-1, 1] or uint8, got {x.dtype}")
        x = x.float()
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"images in {path} hold NaN or inf")
        if x.numel() and (float(x.min()) < -1.01 or float(x.max()) > 1.01):
            raise ValueError(
                f"images in {path} must lie in the model range [-1, 1] (or be uint8 pixels), got "
                f"values in [{float(x.min()):.3g}, {float(x.max()):.3g}]: for 8-bit pixels as "
                "floats use sdekit.data.to_model_range"
            )
    else:
        raise ValueError(f"images must be a .pt or .npy file or a folder of images, got {path}")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(data_shape) or x.shape[0] < 1:
        raise ValueError(
            f"images in {path} must have shape (N, {c}, {h}, {w}) for this model, got "
            f"{tuple(x.shape)}"
        )
    return x
