"""``sdekit train``, ``train-classifier`` and ``train-control``: a run from the flags, the
``--config`` file and the data set's preset (:func:`train_config`), trained to a checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..classifier import ClassifierTrainer
from ..config import TrainConfig, read_config_file
from ..presets import PRESETS, preset
from ..training import NonFiniteLossError, Trainer
from .flags import add_config_flags, positive_int, shown


def _presets_epilog() -> str:
    lines = ["presets (under --config and the flags; digits: 8x8, mnist and fashion_mnist: 28x28,"]
    lines.append("cifar10 and folder: 32x32; the toy sets use the defaults above):")
    for name, values in PRESETS.items():
        lines.append(f"  {name}: " + ", ".join(f"{k}={shown(v)}" for k, v in values.items()))
    return "\n".join(lines)


def train_config(flags: dict, config_file: Path | None = None) -> TrainConfig:
    """The run ``sdekit train`` makes of ``flags`` (field names and values) and a ``--config``
    file: the defaults, then the preset of the data set, then the file, then the flags."""
    base = {}
    if config_file:
        TrainConfig.from_file(config_file)  # the file's own errors name it
        base = read_config_file(config_file)
    data = flags.get("data", base.get("data", TrainConfig.data))
    return TrainConfig.from_dict({**preset(data), **base, **flags})


def add_parsers(sub) -> None:
    """Add ``train``, ``train-classifier`` and ``train-control`` to the subcommands ``sub``."""
    train = sub.add_parser(
        "train",
        help="train a score network (a quick toy run by default)",
        description="Train a score network; flags override the --config file, which overrides the "
        "data set's preset. The run directory (--out) receives config.json, checkpoint.pt, "
        "log.jsonl, loss.png and sample grids.",
        epilog=_presets_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--config", type=Path, help="a JSON or TOML file of TrainConfig fields (default: none)"
    )
    add_config_flags(train)
    train.set_defaults(run=_train, parser=train, trainer=Trainer)
    clf = sub.add_parser(
        "train-classifier",
        help="train the noise-conditional classifier of classifier guidance",
        description="Train a classifier p(y | x_t, t) on x_t of --sde (the diffusion model's "
        "SDE) with the data's labels, for sample --classifier; the network is sized by the same "
        "flags as train's (an MLP or the UNet's encoder half). Flags override the --config file.",
    )
    clf.add_argument(
        "--config", type=Path, help="a JSON or TOML file of TrainConfig fields (default: none)"
    )
    add_config_flags(clf)
    clf.set_defaults(run=_train, parser=clf, trainer=ClassifierTrainer)
    _add_control_parser(sub)


def _add_control_parser(sub) -> None:
    from ..control import TRAINING_FIELDS
    from ..hints import HINT_NAMES

    ctl = sub.add_parser(
        "train-control",
        help="train a ControlNet on a trained image run",
        description="Train a ControlNet: a trainable copy of a trained U-Net's encoder, fed hint "
        "images made from the run's data, added to the locked network through zero "
        "convolutions. The checkpoint holds the control branch and names its base.",
    )
    ctl.add_argument("--base", type=Path, required=True, help="the base run's checkpoint.pt")
    ctl.add_argument(
        "--hint",
        required=True,
        choices=HINT_NAMES,
        help="edges (Sobel), downsample (2x block means), mask (25%% of the pixels kept)",
    )
    ctl.add_argument(
        "--hint-dropout",
        type=float,
        default=0.0,
        help="probability of a zero hint per example, for guidance on the hint (default: 0.0)",
    )
    ctl.add_argument(
        "--hint-hidden",
        type=positive_int,
        default=16,
        help="channels of the hint encoder's first layers (default: 16)",
    )
    ema = ctl.add_argument("--base-ema", action=argparse.BooleanOptionalAction, default=True)
    ema.help = "control the base's EMA weights, or its last weights (default: --base-ema)"
    fields = tuple(f for f in TRAINING_FIELDS if f != "out")
    add_config_flags(ctl, fields, default="the base run's")
    ctl.add_argument(
        "--out",
        help="run directory (default: BASE_RUN_control_HINT beside the base run's directory)",
    )
    ctl.set_defaults(run=_train_control, parser=ctl)


def _train_control(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..control import control_trainer

    if not args.base.is_file():
        parser.error(f"--base {args.base}: no such file (the checkpoint.pt of a trained image run)")
    skip = ("command", "run", "parser", "base", "hint", "hint_dropout", "hint_hidden", "base_ema")
    overrides = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if "out" not in overrides:
        overrides["out"] = str(
            args.base.parent.parent / f"{args.base.parent.name}_control_{args.hint}"
        )
    try:
        trainer = control_trainer(
            args.base, args.hint, hint_dropout=args.hint_dropout, hint_hidden=args.hint_hidden,
            base_ema=args.base_ema, **overrides,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return _run(trainer, "sdekit train-control")


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    skip = ("command", "config", "run", "parser", "trainer")
    values = {k: v for k, v in vars(args).items() if k not in skip}
    try:
        config = train_config(values, args.config)
        trainer = args.trainer(config)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if trainer.rank == 0:
        _say_preset(config, values, args.config)
    return _run(trainer, "sdekit train")


def _run(trainer: Trainer, prog: str) -> int:
    try:
        trainer.train()
    except NonFiniteLossError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.rank == 0:
        print(f"checkpoint: {trainer.checkpoint_path}")
    return 0


def _say_preset(config: TrainConfig, flags: dict, config_file: Path | None) -> None:
    values = preset(config.data)
    if not values:
        return
    overridden = sorted(k for k in values if k in flags or getattr(config, k) != values[k])
    note = f" (overridden: {', '.join(overridden)})" if overridden else ""
    print(f"sdekit train: the preset for {config.data} (sdekit.presets){note}", file=sys.stderr)
    if config.sample_threshold == "none":
        print(
            "sdekit train: sample grids: x0-hat not bounded (sample_threshold none)",
            file=sys.stderr,
        )
    else:
        print(
            f"sdekit train: sample grids: x0-hat bounded to [-1, 1] at every step "
            f"({config.sample_threshold}, sdekit.thresholding; --sample-threshold none to turn it "
            "off)",
            file=sys.stderr,
        )
