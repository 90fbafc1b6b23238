"""The command line: ``python -m sdekit train ...``, ``sample ...`` and ``inpaint ...``.

``train`` takes every :class:`~sdekit.config.TrainConfig` field as a flag (``--batch-size 128``,
``--ema-warmup/--no-ema-warmup``, ``--channel-mults 1 2 2``); values come from the defaults, then a
``--config`` file (JSON or TOML), then the flags, and all are checked before training starts. Run
it under ``torchrun`` for several processes. ``sample`` draws from a checkpoint's EMA weights in
batches of ``--batch-size`` and writes a PNG grid (or the raw tensor with ``.pt``); sample ``i``
comes from its own generator seeded by ``(--seed, i)``, so it is the same whatever the batch size.
``inpaint`` completes images of the checkpoint's data set that a mask hides (or a 2x downsampling
blurs) with any method of :mod:`sdekit.inpainting`, and writes a grid: original, observed,
completions.
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
from .distributed import resolve_device
from .figures import save_samples
from .inference import load_model
from .sampling import get_sampler
from .training import NonFiniteLossError, Trainer

#: what ``sample --out`` may end with: a figure of the samples, or ``.pt`` for the raw tensor
SAMPLE_SUFFIXES = (".png", ".jpg", ".pdf", ".svg", ".pt")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    types_ = config_field_types()
    for f in dataclasses.fields(TrainConfig):
        kind = types_[f.name]
        flag = "--" + f.name.replace("_", "-")
        common = {"dest": f.name, "default": argparse.SUPPRESS}
        # a field whose default needs words (None: "keep their size") says it in its help
        help_ = f.metadata["help"]
        if "(default:" not in help_:
            help_ += f" (default: {_shown(f.default)})"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdekit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a score network (a quick toy run by default)",
        description="Train a score network; flags override the --config file. The run directory "
        "(--out) receives config.json, checkpoint.pt, log.jsonl, loss.png and sample grids.",
    )
    train.add_argument(
        "--config", type=Path, help="a JSON or TOML file of TrainConfig fields (default: none)"
    )
    _add_config_flags(train)
    train.set_defaults(run=_train, parser=train)
    smp = sub.add_parser("sample", help="draw samples from a checkpoint")
    smp.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint.pt of a run")
    smp.add_argument("--method", default="dpmpp_2m", help="sampler name (default: dpmpp_2m)")
    smp.add_argument("--steps", type=_positive_int, default=20, help="sampler steps (default: 20)")
    smp.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    smp.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        help="samples drawn at once; the samples do not depend on it (default: 256)",
    )
    smp.add_argument(
        "--out",
        type=Path,
        default=Path("samples.png"),
        help=f"a figure ({', '.join(SAMPLE_SUFFIXES[:-1])}) or .pt for the raw tensor in the "
        "model range (default: samples.png)",
    )
    smp.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    smp.add_argument(
        "--device",
        default="auto",
        help="'auto' (CUDA if available), 'cpu' or 'cuda[:N]' (default: auto)",
    )
    smp.add_argument(
        "--label",
        type=int,
        help="class to draw, for class-conditional models (default: every class in turn)",
    )
    ema = smp.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    # set after construction: Python 3.10's BooleanOptionalAction appends its own default text
    ema.help = "use the EMA weights, or the last weights (default: --ema)"
    smp.set_defaults(run=_sample, parser=smp)
    _add_inpaint(sub)
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


def _check_sample_out(out: Path) -> None:
    if out.is_dir():
        raise ValueError(f"--out must be a file to write, {out} is a directory")
    if out.suffix not in SAMPLE_SUFFIXES:
        raise ValueError(
            f"--out must end with one of {', '.join(SAMPLE_SUFFIXES)} (a figure, or .pt for the "
            f"tensor), got {out}"
        )


def _sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        # everything that can be checked is, before the checkpoint is read
        _check_sample_out(args.out)
        get_sampler(args.method)
        try:
            device = resolve_device(args.device)
        except ValueError as e:
            raise ValueError(f"--device: {e}") from None
        trained = load_model(args.checkpoint, ema=args.ema, device=device)
        x = trained.sample_batched(
            args.n,
            batch_size=args.batch_size,
            seed=args.seed,
            method=args.method,
            steps=args.steps,
            label=args.label,
        )
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if args.out.suffix == ".pt":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(x, args.out)
    else:
        save_samples(x, args.out)
    print(f"samples: {args.out}")
    return 0


def _add_inpaint(sub) -> None:
    from .inpainting import METHODS
    from .measurements import MASKS

    inp = sub.add_parser(
        "inpaint",
        help="complete masked images with a checkpoint's model",
        description="Complete images of the checkpoint's data set; writes a grid whose rows are "
        "images and whose columns are the original, what is observed and the completions.",
    )
    inp.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint.pt of a run")
    inp.add_argument(
        "--mask",
        choices=(*MASKS, "sr2"),
        default="centre",
        help="what is hidden: the centre square, the left half, 50%% random pixels, or sr2 "
        "(observe the 2x downsampled image) (default: centre)",
    )
    inp.add_argument(
        "--method", choices=METHODS, default="repaint", help="how to complete (default: repaint)"
    )
    inp.add_argument("--sampler", default="ancestral", help="sampler name (default: ancestral)")
    inp.add_argument(
        "--steps", type=_positive_int, default=100, help="sampler steps (default: 100)"
    )
    inp.add_argument(
        "--particles", type=_positive_int, help="particles of smcdiff and tds (default: 16)"
    )
    inp.add_argument("--n", type=_positive_int, default=8, help="images to complete (default: 8)")
    inp.add_argument(
        "--completions", type=_positive_int, default=4, help="completions per image (default: 4)"
    )
    inp.add_argument(
        "--images",
        type=Path,
        help="a .pt tensor (N, C, H, W) in [-1, 1] of images to complete (default: the "
        "checkpoint's data set)",
    )
    inp.add_argument(
        "--out", type=Path, default=Path("inpainting.png"), help="the PNG (default: inpainting.png)"
    )
    inp.add_argument(
        "--seed", type=int, default=0, help="seed of the images and the sampler (default: 0)"
    )
    inp.add_argument(
        "--device",
        default="auto",
        help="'auto' (CUDA if available), 'cpu' or 'cuda[:N]' (default: auto)",
    )
    inp.add_argument(
        "--label",
        type=int,
        help="class to draw, needed by class-conditional models (default: none)",
    )
    ema = inp.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    ema.help = "use the EMA weights, or the last weights (default: --ema)"
    inp.set_defaults(run=_inpaint, parser=inp)


def _inpaint(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .builders import sample_prediction
    from .data import load_dataset
    from .inference import class_condition
    from .inpainting import inpaint
    from .measurements import Downsample, image_mask

    try:
        try:
            device = resolve_device(args.device)
        except ValueError as e:
            raise ValueError(f"--device: {e}") from None
        trained = load_model(args.checkpoint, ema=args.ema, device=device)
        shape = trained.data_shape
        if len(shape) != 3:
            raise ValueError(f"inpaint needs an image model (C, H, W), the checkpoint's is {shape}")
        total = args.n * args.completions
        if trained.num_classes is not None and args.label is None:
            raise ValueError("--label: a class-conditional model needs the class to draw")
        cond = class_condition(total, trained.num_classes, args.label, device)
        if args.images is not None:
            if not args.images.is_file():
                raise FileNotFoundError(f"images must be an existing file, got {args.images}")
            pool = torch.load(args.images, map_location="cpu").float()
        else:
            cfg = trained.config
            pool, _ = load_dataset(cfg.data, root=cfg.data_root, image_size=cfg.image_size)
        if pool.ndim != 4 or tuple(pool.shape[1:]) != shape:
            raise ValueError(f"images must have shape (N, *{shape}), got {tuple(pool.shape)}")
        g = torch.Generator().manual_seed(args.seed)
        originals = pool[torch.randperm(pool.shape[0], generator=g)[: args.n]].to(device)
        op = (
            Downsample(shape, 2)
            if args.mask == "sr2"
            else image_mask(args.mask, shape, generator=g)
        )
        observed = op(originals)
        extra = {} if args.particles is None else {"particles": args.particles}
        x, info = inpaint(
            trained.model, trained.sde, op, observed.repeat_interleave(args.completions, 0),
            method=args.method, sampler=args.sampler, steps=args.steps, cond=cond,
            prediction=sample_prediction(trained.config),
            generator=torch.Generator(device).manual_seed(args.seed), **extra,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    shown = op.pinv(observed)  # what is known: the observed pixels (grey elsewhere), or the blur
    if args.mask != "sr2":
        shown = torch.where(op.mask.to(shown.device), shown, torch.zeros_like(shown))
    columns = [originals[:, None], shown[:, None], x.reshape(args.n, args.completions, *shape)]
    _save_grid(torch.cat(columns, 1), args.out)
    print(f"inpainting ({args.method}, {info.sampler}, {info.nfe} model calls): {args.out}")
    return 0


def _save_grid(images: torch.Tensor, path: Path) -> None:
    """Images ``(rows, cols, C, H, W)`` in :math:`[-1, 1]` as a PNG grid (clipped for display)."""
    from matplotlib.figure import Figure

    rows, cols, c, h, w = images.shape
    pixels = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for r in range(rows):
        for q in range(cols):
            grid[
                :, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w
            ] = pixels[r, q]
    img = grid.permute(1, 2, 0).numpy()
    fig = Figure(figsize=(cols * 0.7 + 0.4, rows * 0.7 + 0.4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img[..., 0] if c == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sdekit`` and of the ``sdekit`` script."""
    args = build_parser().parse_args(argv)
    return args.run(args, args.parser)
