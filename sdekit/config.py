r"""The configuration of a training run: :class:`TrainConfig`, one dataclass of checked fields.

Built from keywords, a JSON or TOML file, or command-line flags (``python -m sdekit train --help``);
every value is checked on construction and a bad one raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checks import check_choice
from .data import DATASETS, FASHION_MNIST_DEBIAN
from .linear import EDMSDE, VESDE, VPSDE, LinearSDE, SubVPSDE
from .losses import T_SAMPLINGS, WEIGHTINGS
from .sampling import SAMPLERS, get_sampler
from .thresholding import THRESHOLDINGS

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
#: how samples bound their x0-hat (:mod:`sdekit.thresholding`); ``"none"`` for unbounded data
SAMPLE_THRESHOLDS = ("none", *THRESHOLDINGS)
#: data sets read from ``data_root``, and the fixed image side of those that ``image_size`` cannot
#: change
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "folder")
FIXED_IMAGE_SIDES = {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32}

# fields that may change when a run is resumed (they do not change what is computed; device,
# memory format and compilation change at most its round-off)
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
    "channels_last",
    "compile",
    "sample_threshold",
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
    data_root: str | None = _help(
        "directory of the data files of mnist, fashion_mnist, cifar10 or folder (default: "
        f"{FASHION_MNIST_DEBIAN} for fashion_mnist, required for the others)",
        None,
    )
    toy_size: int = _help("number of points drawn for a toy data set", 50_000)
    image_size: int | None = _help(
        "resize the images of data 'folder' to this square side (default: keep their size)", None
    )
    class_conditional: bool = _help("condition the network on the data set's labels", False)
    p_uncond: float = _help(
        "label-dropout probability to a learned null label, for classifier-free guidance "
        "(class_conditional; Ho & Salimans use 0.1-0.2)",
        0.0,
    )
    sde: str = _help(f"forward SDE: one of {', '.join(SDES)}", "vp")
    prediction: str = _help(f"network output: one of {', '.join(TRAIN_PREDICTIONS)}", "eps")
    weighting: str = _help(
        f"loss weighting: one of {', '.join(WEIGHTINGS)} (sdekit.losses)", "default"
    )
    t_sampling: str = _help(
        f"how training times are drawn: one of {', '.join(T_SAMPLINGS)} (sdekit.losses)", "uniform"
    )
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
    channels_last: bool = _help(
        "image networks and batches in channels_last memory format (for bf16 convolutions on a "
        "GPU; no faster on a CPU)",
        False,
    )
    compile: bool = _help("torch.compile the network (its first steps compile it)", False)
    seed: int = _help("seed of the data, the noise and the initialisation", 0)
    device: str = _help("'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'", "auto")
    out: str = _help("run directory: checkpoint, sample grids, config", "runs/toy")
    log_every: int = _help("steps between lines of log.jsonl and of progress", 50)
    sample_every: int = _help(
        "steps between sample grids, the first after 100 steps or 60 s (0: only at the end)", 1000
    )
    checkpoint_every: int = _help("steps between checkpoints (0: only at the end)", 1000)
    sample_method: str = _help(
        "sampler for the sample grids (any of sdekit.sampling.list_samplers())", "dpmpp_2m"
    )
    sample_steps: int = _help("sampler steps for the sample grids", 20)
    sample_n: int | None = _help("samples per grid (default: 64 images or 2000 points)", None)
    sample_threshold: str = _help(
        f"bound x0-hat in [-1, 1] while sampling: one of {', '.join(SAMPLE_THRESHOLDS)} "
        "(sdekit.thresholding; image data: the preset's, clip)",
        "none",
    )

    def __post_init__(self):
        kinds = config_field_types()
        for f in dataclasses.fields(self):
            setattr(self, f.name, _typed(f.name, getattr(self, f.name), kinds[f.name]))
        choices = {
            "data": DATASETS,
            "sde": tuple(SDES),
            "prediction": TRAIN_PREDICTIONS,
            "weighting": WEIGHTINGS,
            "t_sampling": T_SAMPLINGS,
            "precision": PRECISIONS,
            "sample_threshold": SAMPLE_THRESHOLDS,
        }
        for name, allowed in choices.items():
            check_choice(name, getattr(self, name), allowed)
        try:
            get_sampler(self.sample_method)
        except ValueError:
            check_choice("sample_method", self.sample_method, sorted(SAMPLERS))
        if self.data_root is not None and self.data not in FILE_DATASETS:
            raise ValueError(
                f"data_root is where {', '.join(FILE_DATASETS)} are read from; data "
                f"{self.data!r} reads no files: remove data_root"
            )
        if self.image_size is not None and self.data != "folder":
            what = (
                f"has {FIXED_IMAGE_SIDES[self.data]}x{FIXED_IMAGE_SIDES[self.data]} images"
                if self.data in FIXED_IMAGE_SIDES
                else "is not images"
            )
            raise ValueError(
                f"image_size resizes the images of data 'folder'; data {self.data!r} {what}, "
                "which image_size cannot change: remove image_size"
            )
        at_least = {
            "toy_size": 1, "hidden": 1, "depth": 1, "channels": 1, "num_res_blocks": 1, "steps": 1,
            "batch_size": 1, "warmup_steps": 0, "grad_accum": 1, "log_every": 1, "sample_every": 0,
            "checkpoint_every": 0, "sample_steps": 1, "seed": 0,
        }  # fmt: skip
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)}")
        for name in ("image_size", "sample_n"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or an integer >= 1, got {value}")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
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
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must lie in [0, 1), got {self.p_uncond}")
        if self.p_uncond > 0 and not self.class_conditional:
            raise ValueError(
                "p_uncond drops the class labels of a class-conditional network: set "
                "class_conditional=True, or p_uncond=0"
            )
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
        values = read_config_file(path)
        try:
            return cls.from_dict(values)
        except ValueError as e:
            raise ValueError(f"config {path}: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_config_file(path: str | Path) -> dict:
    """The fields a JSON or TOML file (by extension) sets, as written (checked by
    :meth:`TrainConfig.from_file`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config must be an existing file, {path} does not exist")
    if path.suffix == ".json":
        parse, kind = json.loads, "JSON"
    elif path.suffix == ".toml":
        try:
            import tomllib
        except ImportError as e:  # Python 3.10
            raise ImportError("TOML configs need Python >= 3.11; use JSON") from e
        parse, kind = tomllib.loads, "TOML"
    else:
        raise ValueError(f"config must be a .json or .toml file, got {path}")
    try:
        values = parse(path.read_text())
    except ValueError as e:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise ValueError(f"config {path} is not valid {kind}: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config {path} must hold a table/object of fields")
    return values


def config_field_types() -> dict[str, type]:
    """The resolved type of every :class:`TrainConfig` field (for checks and command-line parsing)."""
    return typing.get_type_hints(TrainConfig)


def _describe(kind) -> str:
    if isinstance(kind, types.UnionType):
        (inner,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return f"{_describe(inner)} or None"
    if typing.get_origin(kind) is tuple:
        return "a list of integers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def _typed(name: str, value, kind):
    """``value`` as field ``name`` of type ``kind`` holds it (an integer is a valid float, a list
    a valid tuple), or ``ValueError`` naming the field and the type."""
    if isinstance(kind, types.UnionType):
        if value is None:
            return None
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok, value = number, float(value) if number else value
    elif kind is str:
        ok = isinstance(value, str)
    else:  # tuple[int, ...]
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        value = tuple(value) if ok else value
    if not ok:
        raise ValueError(f"{name} must be {_describe(kind)}, got {type(value).__name__} {value!r}")
    return value
