"""``sdekit inpaint``: images of a checkpoint's data set completed where a mask hides them (or a
2x downsampling blurs them) by a method of :mod:`sdekit.inpainting`, as a grid."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..distributed import resolve_device
from ..inference import load_model
from .flags import positive_int


def add_parsers(sub) -> None:
    """Add ``inpaint`` to the subcommands ``sub``."""
    from ..inpainting import METHODS
    from ..measurements import MASKS

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
    inp.add_argument(
        "--sampler",
        help="sampler name (default: ddim with eta 1 for repaint, its posterior step; ancestral "
        "otherwise)",
    )
    inp.add_argument("--steps", type=positive_int, default=100, help="sampler steps (default: 100)")
    inp.add_argument(
        "--particles", type=positive_int, help="particles of smcdiff and tds (default: 16)"
    )
    inp.add_argument("--n", type=positive_int, default=8, help="images to complete (default: 8)")
    inp.add_argument(
        "--completions", type=positive_int, default=4, help="completions per image (default: 4)"
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
    from ..builders import sample_prediction
    from ..data import load_dataset
    from ..inference import class_condition
    from ..inpainting import inpaint
    from ..measurements import Downsample, image_mask

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
            method=args.method, steps=args.steps, cond=cond,
            # None: RePaint's own default step (sdekit.inpainting)
            sampler=args.sampler or (None if args.method == "repaint" else "ancestral"),
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
