r"""The configuration of a training run: :class:`TrainConfig`, one dataclass of checked fields.

Built from keywords, a JSON or TOML file, or command-line flags (``python -m sdekit train --help``);
every value is checked on construction and a bad one raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import DATASETS
from .linear import EDMSDE, VESDE, VPSDE, LinearSDE, SubVPSDE

#: SDEs by the name :attr:`TrainConfig.sde` takes, each with its default parameters
SDES: dict[str, Callable[[], LinearSDE]] = {
    "vp": VPSDE,
    "vp_cosine": VPSDE.cosine,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "edm": EDMSDE,
}
#: what the network predicts; ``"edm"`` is a network behind :class:`~sdekit.networks.EDMPrecond`
TRAIN_PREDICTIONS = ("score", "eps", "x0", "v", "edm")
PRECISIONS = ("fp32", "bf16", "fp16")

# fields that may change when a run is resumed (they do not change what is computed)
RESUMABLE_CHANGES = {
    "steps",
    "device",
    "out",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "sample_method",
    "sample_steps",
    "sample_n",
}


def _help(text: str, default=dataclasses.MISSING, **kwargs):
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``python -m sdekit train --help`` lists the fields.

    Built from keywords, :meth:`from_dict` or :meth:`from_file` (JSON or TOML); every value is
    checked on construction (``ValueError`` naming the field).
    """

    data: str = _help(f"data set: one of {', '.join(DATASETS)}", "two_moons")
    data_root: str | None = _help("directory of the data files (mnist, cifar10, folder)", None)
    toy_size: int = _help("number of points drawn for a toy data set", 50_000)
    image_size: int | None = _help("resize the images of a folder to this side", None)
    class_conditional: bool = _help("condition the network on the data set's labels", False)
    sde: str = _help(f"forward SDE: one of {', '.join(SDES)}", "vp")
    prediction: str = _help(f"network output: one of {', '.join(TRAIN_PREDICTIONS)}", "eps")
    weighting: str = _help("loss weighting (see sdekit.losses)", "default")
    t_sampling: str = _help("how training times are drawn (see sdekit.losses)", "uniform")
    sigma_data: float = _help("EDM's data std (prediction 'edm', weighting 'edm')", 0.5)
    p_mean: float = _help("mean of ln(sigma) for t_sampling 'lognormal' (EDM's P_mean)", -1.2)
    p_std: float = _help("std of ln(sigma) for t_sampling 'lognormal' (EDM's P_std)", 1.2)
    hidden: int = _help("MLP width (vector data)", 256)
    depth: int = _help("MLP hidden layers (vector data)", 3)
    channels: int = _help("UNet base channels (images)", 64)
    channel_mults: tuple[int, ...] = _help("UNet channel multiplier per level", (1, 2))
    num_res_blocks: int = _help("UNet residual blocks per level", 2)
    dropout: float = _help("UNet dropout probability", 0.1)
    steps: int = _help("total optimisation steps", 2000)
    batch_size: int = _help("global batch size (over all processes)", 256)
    lr: float = _help("AdamW learning rate (2e-4 suits UNets)", 1e-3)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    warmup_steps: int = _help("steps of linear learning-rate warm-up", 100)
    grad_clip: float = _help("clip the gradient norm to this (0: no clipping)", 1.0)
    grad_accum: int = _help("micro-batches per step and process (gradient accumulation)", 1)
    ema_decay: float = _help("EMA decay d in [0, 1)", 0.999)
    ema_warmup: bool = _help("EMA decay min(d, (1 + n) / (10 + n)) after n updates", True)
    precision: str = _help(f"network precision: one of {', '.join(PRECISIONS)}", "fp32")
    seed: int = _help("seed of the data, the noise and the initialisation", 0)
    device: str = _help("'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'", "auto")
    out: str = _help("run directory: checkpoint, sample grids, config", "runs/toy")
    log_every: int = _help("steps between progress-bar loss updates", 50)
    sample_every: int = _help("steps between sample grids (0: only at the end)", 1000)
    checkpoint_every: int = _help("steps between checkpoints (0: only at the end)", 1000)
    sample_method: str = _help("sampler for the sample grids", "dpmpp_2m")
    sample_steps: int = _help("sampler steps for the sample grids", 20)
    sample_n: int | None = _help("samples per grid (default 64 images or 2000 points)", None)

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        choices = {
            "data": DATASETS,
            "sde": tuple(SDES),
            "prediction": TRAIN_PREDICTIONS,
            "precision": PRECISIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        at_least = {
            "toy_size": 1, "hidden": 1, "depth": 1, "channels": 1, "num_res_blocks": 1, "steps": 1,
            "batch_size": 1, "warmup_steps": 0, "grad_accum": 1, "log_every": 1, "sample_every": 0,
            "checkpoint_every": 0, "sample_steps": 1, "seed": 0,
        }  # fmt: skip
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("image_size", "sample_n"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        if not self.channel_mults or any(
            not isinstance(m, int) or m < 1 for m in self.channel_mults
        ):
            raise ValueError(f"channel_mults must be integers >= 1, got {self.channel_mults}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("sigma_data", "p_std"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not math.isfinite(self.p_mean):
            raise ValueError(f"p_mean must be a finite number, got {self.p_mean}")
        for name in ("weight_decay", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("ema_decay", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.device != "auto":
            try:
                kind = torch.device(self.device).type
            except RuntimeError:
                kind = None
            if kind not in ("cpu", "cuda"):
                raise ValueError(
                    f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
                )

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a mapping of field names (unknown names are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; the fields are {sorted(names)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """A config from a JSON or TOML file (by extension) of field names and values."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config must be an existing file, {path} does not exist")
        if path.suffix == ".json":
            values = json.loads(path.read_text())
        elif path.suffix == ".toml":
            try:
                import tomllib
            except ImportError as e:  # Python 3.10
                raise ImportError("TOML configs need Python >= 3.11; use JSON") from e

            values = tomllib.loads(path.read_text())
        else:
            raise ValueError(f"config must be a .json or .toml file, got {path}")
        if not isinstance(values, dict):
            raise ValueError(f"config {path} must hold a table/object of fields")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_field_types() -> dict[str, type]:
    """The resolved type of every :class:`TrainConfig` field (for command-line parsing)."""
    return typing.get_type_hints(TrainConfig)
