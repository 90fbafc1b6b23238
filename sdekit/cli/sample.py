"""``sdekit sample``: samples of a checkpoint to one file or to sharded files, with
classifier-free or classifier guidance, thresholding, or a ControlNet's hints."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from ..builders import sample_prediction
from ..classifier import load_classifier
from ..config import SAMPLE_THRESHOLDS
from ..distributed import resolve_device
from ..figures import outside_pixels_text, save_samples
from ..guidance import classifier_free_guidance, classifier_guidance
from ..inference import TrainedModel
from ..sampling import get_sampler
from ..sharded import sample_shards
from ..shards import MANIFEST_NAME
from .flags import add_shard_flags, add_source_flags, positive_int, rank, start, stop

#: what ``sample --out`` may end with: a figure of the samples, or ``.pt`` for the raw tensor
SAMPLE_SUFFIXES = (".png", ".jpg", ".pdf", ".svg", ".pt")


def add_parsers(sub) -> None:
    """Add ``sample`` to the subcommands ``sub``."""
    smp = sub.add_parser(
        "sample",
        help="draw samples from a checkpoint",
        description="Draw samples from a checkpoint (or a directory of 'sdekit export'). With "
        "--out-dir the samples go to sharded .npz files and a manifest, over the processes of "
        "torchrun if run under it, and a rerun resumes the shards not yet done.",
    )
    add_source_flags(smp)
    smp.add_argument("--method", default="dpmpp_2m", help="sampler name (default: dpmpp_2m)")
    smp.add_argument("--steps", type=positive_int, default=20, help="sampler steps (default: 20)")
    # --num-samples for torchrun, whose own parser takes --n for an abbreviation of its options
    smp.add_argument(
        "--n",
        "--num-samples",
        dest="n",
        type=positive_int,
        help="number of samples; under torchrun write --num-samples (default: 64; with "
        "--hint-from one per image, the images taken in turn)",
    )
    smp.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="samples drawn at once; the samples do not depend on it, up to round-off "
        "(default: 256)",
    )
    smp.add_argument(
        "--out",
        type=Path,
        help=f"a figure ({', '.join(SAMPLE_SUFFIXES[:-1])}) or .pt for the raw tensor in the "
        "model range (default: samples.png, unless --out-dir)",
    )
    add_shard_flags(smp, "samples")
    smp.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    smp.add_argument(
        "--label",
        type=int,
        help="class to draw, for class-conditional models (default: every class in turn)",
    )
    smp.add_argument(
        "--hint-from",
        type=Path,
        metavar="IMAGES",
        help="a ControlNet checkpoint draws from the hints of these images: a .pt/.npy tensor "
        "(N, C, H, W) of floats in [-1, 1] or uint8 pixels, or a folder of image files "
        "(default: none)",
    )
    smp.add_argument(
        "--base",
        type=Path,
        help="the base checkpoint of a ControlNet checkpoint (default: the path it names)",
    )
    smp.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="ControlNet conditioning scale, 0 gives the base model (default: 1.0)",
    )
    smp.add_argument(
        "--threshold",
        choices=SAMPLE_THRESHOLDS,
        help="bound x0-hat in [-1, 1] at every step (sdekit.thresholding) (default: the run's "
        "sample_threshold: clip for the image presets, none otherwise)",
    )
    smp.add_argument(
        "--guidance",
        type=float,
        metavar="W",
        help="classifier-free guidance weight w (Ho & Salimans: 0 is the conditional model; "
        "diffusers' guidance_scale is 1 + w); needs a model trained with --p-uncond > 0 "
        "(default: none)",
    )
    smp.add_argument(
        "--classifier",
        type=Path,
        metavar="PATH",
        help="the checkpoint.pt of a train-classifier run on the same SDE: classifier guidance "
        "(default: none)",
    )
    smp.add_argument(
        "--classifier-scale",
        type=float,
        metavar="S",
        help="classifier guidance scale s (default: 1.0 with --classifier)",
    )
    smp.set_defaults(run=_sample, parser=smp)


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
        if args.out_dir is None:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ValueError(
                    "under torchrun the samples go to --out-dir (sharded .npz files and a "
                    "manifest): pass --out-dir"
                )
            out = Path("samples.png") if args.out is None else args.out
            _check_sample_out(out)
        elif args.out is not None:
            raise ValueError("pass --out (one file) or --out-dir (sharded files), not both")
        elif args.hint_from is not None:
            raise ValueError("--hint-from writes one --out file; it takes no --out-dir")
        get_sampler(args.method)
        if args.classifier_scale is not None and args.classifier is None:
            raise ValueError("--classifier-scale needs --classifier PATH")
        if args.hint_from is not None:
            if (args.guidance, args.classifier) != (None, None):
                raise ValueError("--guidance and --classifier do not apply to --hint-from")
            return _sample_control(args, out)
        if args.base is not None or args.scale != 1.0:
            raise ValueError("--base and --scale are for a ControlNet checkpoint, with --hint-from")
        trained = _guided(start(args), args)
        n = 64 if args.n is None else args.n
        options = dict(
            seed=args.seed, method=args.method, steps=args.steps, label=args.label,
            threshold=args.threshold,
        )  # fmt: skip
        if args.out_dir is not None:
            manifest = sample_shards(
                trained, args.out_dir, n=n, shard_size=args.shard_size,
                batch_size=args.batch_size, checkpoint=args.checkpoint, ema=args.ema,
                guidance=_guidance_settings(args), **options,
            )  # fmt: skip
        else:
            x = trained.sample_batched(n, batch_size=args.batch_size, **options)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    finally:
        stop()
    if args.out_dir is not None:
        if rank() == 0:
            shards = len(manifest["shards"])
            print(f"samples: {n} in {shards} shard(s), {args.out_dir / MANIFEST_NAME}")
        return 0
    threshold = args.threshold or trained.config.sample_threshold
    if threshold != "none":
        print(f"sdekit sample: x0-hat bounded to [-1, 1] at every step ({threshold})")
    return _write_samples(x, out)


def _sample_control(args: argparse.Namespace, out: Path) -> int:
    from ..control import load_controlled, read_images
    from ..figures import save_image_rows
    from ..inference import class_condition

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise ValueError(f"--device: {e}") from None
    trained = load_controlled(
        args.checkpoint, base=args.base, ema=args.ema, scale=args.scale, device=device
    )
    images = read_images(args.hint_from, trained.data_shape)
    n = args.n or images.shape[0]
    images = images[torch.arange(n) % images.shape[0]]
    hints = trained.hints(images, seed=args.seed)
    labels = class_condition(n, trained.num_classes, args.label, "cpu")
    x = trained.sample_batched(
        hints, labels=labels, batch_size=args.batch_size, seed=args.seed, method=args.method,
        steps=args.steps,
    )  # fmt: skip
    if out.suffix == ".pt":
        return _write_samples(x, out)
    save_image_rows([images, hints, x], out, names=["image", "hint", "sample"])
    print(f"samples: {out}")
    return 0


def _write_samples(x: torch.Tensor, out: Path) -> int:
    if out.suffix == ".pt":
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(x, out)
    else:
        save_samples(x, out)
    note = f" ({outside_pixels_text(int((x.abs() > 1).sum()), x.numel())})" if x.ndim == 4 else ""
    print(f"samples: {out}{note}")
    return 0


class _Guided(nn.Module):
    """A guided model as a module holding the network (so its device and parameters are found)."""

    def __init__(self, net: nn.Module, guided):
        super().__init__()
        self.net, self.guided = net, guided

    def forward(self, x, t, cond=None):
        return self.guided(x, t, cond)


def _guidance_settings(args: argparse.Namespace) -> dict | None:
    """The guidance flags as an --out-dir manifest records them (None without guidance)."""
    if args.guidance is None and args.classifier is None:
        return None
    scale = None
    if args.classifier is not None:
        scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    return {"w": args.guidance, "classifier": args.classifier, "classifier_scale": scale}


def _guided(trained: TrainedModel, args: argparse.Namespace) -> TrainedModel:
    """``trained`` with ``--guidance`` and ``--classifier`` applied (unchanged without them)."""
    if args.guidance is None and args.classifier is None:
        return trained
    model, num_classes = trained.model, trained.num_classes
    if args.guidance is not None:
        try:
            model = classifier_free_guidance(model, w=args.guidance)
        except ValueError as e:
            raise ValueError(f"--guidance: {e}") from None
    if args.classifier is not None:
        device = next(trained.model.parameters()).device
        clf = load_classifier(args.classifier, device=device)
        mismatch = [
            f"{what} {a!r} (model: {b!r})"
            for what, a, b in (
                ("sde", clf.config.sde, trained.config.sde),
                ("data shape", clf.data_shape, trained.data_shape),
                ("classes", clf.num_classes, num_classes or clf.num_classes),
            )
            if a != b
        ]
        if mismatch:
            raise ValueError(
                f"--classifier {args.classifier} was trained with {', '.join(mismatch)}: train "
                "it on the model's data and SDE"
            )
        scale = 1.0 if args.classifier_scale is None else args.classifier_scale
        try:
            model = classifier_guidance(
                model, clf.classifier, scale=scale, prediction=sample_prediction(trained.config),
                sde=trained.sde, conditional_model=num_classes is not None,
                num_classes=clf.num_classes,
            )  # fmt: skip
        except ValueError as e:
            raise ValueError(f"--classifier-scale: {e}") from None
        num_classes = clf.num_classes
    return trained._replace(model=_Guided(trained.model, model), num_classes=num_classes)
