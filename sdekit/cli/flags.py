"""Flags and set-up that several commands of :mod:`sdekit.cli` share: the TrainConfig fields as
flags, a checkpoint to read, sharded output, and the process group of a sharded run."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import torch

from ..config import TrainConfig, config_field_types
from ..distributed import init_process_group, resolve_device
from ..inference import TrainedModel, load_model
from ..presets import PRESETS

#: the fields some data set's preset sets (their --help says so)
_PRESET_FIELDS = {name for values in PRESETS.values() for name in values}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_config_flags(
    parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None, default: str = ""
) -> None:
    """A flag per TrainConfig field (those in ``names``); ``default`` words every default."""
    types_ = config_field_types()
    for f in dataclasses.fields(TrainConfig):
        if names is not None and f.name not in names:
            continue
        kind = types_[f.name]
        flag = "--" + f.name.replace("_", "-")
        common = {"dest": f.name, "default": argparse.SUPPRESS}
        # a field whose default needs words (None: "keep their size") says it in its help
        help_ = f.metadata["help"]
        if default:
            help_ = help_.split(" (default:")[0] + f" (default: {default})"
        elif "(default:" not in help_:
            preset_note = "; images: see the presets below" if f.name in _PRESET_FIELDS else ""
            help_ += f" (default: {shown(f.default)}{preset_note})"
        help_ = help_.replace("%", "%%")
        args = typing.get_args(kind)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_, **common)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=args[0], nargs="+", help=help_, **common)
        elif isinstance(kind, types.UnionType):  # X | None
            (inner,) = [a for a in args if a is not type(None)]
            parser.add_argument(flag, type=inner, help=help_, **common)
        else:
            parser.add_argument(flag, type=kind, help=help_, **common)


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="the checkpoint.pt of a run, or a directory written by 'sdekit export'",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (CUDA if available), 'cpu' or 'cuda[:N]' (default: auto)",
    )
    ema = parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    # set after construction: Python 3.10's BooleanOptionalAction appends its own default text
    ema.help = "use the EMA weights, or the last weights (default: --ema)"


def add_shard_flags(parser: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    help_ = (
        f"write the {what} as shard_*.npz files and manifest.json here, resuming what a previous "
        "run with the same settings left"
    )
    if not required:
        help_ += "; needed under torchrun (default: none, one --out file)"
    parser.add_argument("--out-dir", type=Path, required=required, help=help_)
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        default=1000,
        help=f"{what} per shard file, the unit of work of a process (default: 1000)",
    )


def start(args: argparse.Namespace) -> TrainedModel:
    """Join torchrun's process group (sharded runs), pick the device, load the model."""
    if getattr(args, "out_dir", None) is not None:
        init_process_group(args.device)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise ValueError(f"--device: {e}") from None
    return load_model(args.checkpoint, ema=args.ema, device=device)


def stop() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
