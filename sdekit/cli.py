"""The command line: ``python -m sdekit train ...`` and ``python -m sdekit sample ...``.

``train`` takes every :class:`~sdekit.config.TrainConfig` field as a flag (``--batch-size 128``,
``--ema-warmup/--no-ema-warmup``, ``--channel-mults 1 2 2``); values come from the defaults, then a
``--config`` file (JSON or TOML), then the flags. Run it under ``torchrun`` for several processes.
``sample`` draws from a checkpoint's EMA weights and writes a PNG (or the raw tensor with ``.pt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

import torch

from .config import TrainConfig, config_field_types
from .training import NonFiniteLossError, Trainer, load_model, save_samples


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    types_ = config_field_types()
    for f in dataclasses.fields(TrainConfig):
        kind = types_[f.name]
        flag = "--" + f.name.replace("_", "-")
        common = {"dest": f.name, "default": argparse.SUPPRESS}
        help_ = f"{f.metadata['help']} (default: {f.default})"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdekit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a score network (a quick toy run by default)",
        description="Train a score network; flags override the --config file.",
    )
    train.add_argument("--config", type=Path, help="a JSON or TOML file of TrainConfig fields")
    _add_config_flags(train)
    train.set_defaults(run=_train, parser=train)
    smp = sub.add_parser("sample", help="draw samples from a checkpoint")
    smp.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint.pt of a run")
    smp.add_argument("--method", default="dpmpp_2m", help="sampler name (default: dpmpp_2m)")
    smp.add_argument("--steps", type=_positive_int, default=20, help="sampler steps (default 20)")
    smp.add_argument("--n", type=_positive_int, default=64, help="number of samples (default 64)")
    smp.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG, or .pt: tensor")
    smp.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    smp.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:N]'")
    smp.add_argument("--label", type=int, help="class to draw (class-conditional models)")
    smp.add_argument(
        "--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights"
    )
    smp.set_defaults(run=_sample, parser=smp)
    return parser


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    values = {
        k: v for k, v in vars(args).items() if k not in ("command", "config", "run", "parser")
    }
    try:
        base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
        trainer = Trainer(TrainConfig.from_dict({**base, **values}))
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    try:
        trainer.train()
    except NonFiniteLossError as e:
        print(f"sdekit train: {e}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.rank == 0:
        print(f"checkpoint: {trainer.checkpoint_path}")
    return 0


def _sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        trained = load_model(args.checkpoint, ema=args.ema, device=device)
        g = torch.Generator(device).manual_seed(args.seed)
        x = trained.sample(
            args.n, method=args.method, steps=args.steps, label=args.label, generator=g
        )
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if args.out.suffix == ".pt":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(x.cpu(), args.out)
    else:
        save_samples(x, args.out)
    print(f"samples: {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sdekit`` and of the ``sdekit`` script."""
    args = build_parser().parse_args(argv)
    return args.run(args, args.parser)
