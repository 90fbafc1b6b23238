r"""The command line: ``python -m sdekit COMMAND ...``: train, train-control, train-classifier,
sample, inpaint, likelihood, export.

``train`` takes every :class:`~sdekit.config.TrainConfig` field as a flag (``--batch-size 128``,
``--ema-warmup/--no-ema-warmup``, ``--channel-mults 1 2 2``); values come from the defaults, then
the preset of the data set (:func:`sdekit.presets.preset`: measured settings for 8×8, 28×28 and
32×32 images, with :math:`\hat x_0` clipped while sampling), then a ``--config`` file (JSON or
TOML), then the flags, and all are checked before training starts. Run it under ``torchrun`` for
several processes. ``sample`` draws from a checkpoint's EMA weights in
batches of ``--batch-size`` and writes a PNG grid (or the raw tensor with ``.pt``); sample ``i``
comes from its own generator seeded by ``(--seed, i)``, so it is the same whatever the batch size.
With ``--out-dir`` it writes sharded ``.npz`` files and a manifest instead, over the processes of
``torchrun`` when run under it, and resumes a partly finished run (:mod:`sdekit.sharded`);
``likelihood`` does the same for the log-likelihoods of a data set. ``export`` writes the EMA
network as ``config.json`` and safetensors (:func:`sdekit.inference.export_model`).
``inpaint`` completes images of the checkpoint's data set that a mask hides (or a 2x downsampling
blurs) with any method of :mod:`sdekit.inpainting`, and writes a grid: original, observed,
completions.

``train-control --base RUN/checkpoint.pt --hint edges`` trains a ControlNet on a trained image run
(:func:`sdekit.control.control_trainer`; the training flags default to the base run's values), and
``sample --checkpoint CONTROL.pt --hint-from IMAGES`` draws one sample per image from the hints of
``IMAGES`` (a ``.pt``/``.npy`` tensor or a folder of images, see
:func:`sdekit.control.read_images`), drawn as rows of image, hint and sample.

``train-classifier`` trains the noise-conditional classifier of classifier guidance on the same
flags (:class:`~sdekit.classifier.ClassifierTrainer`); ``sample --guidance W`` draws with
classifier-free guidance of weight :math:`w` (Ho & Salimans' convention, 0: the conditional model;
diffusers' ``guidance_scale`` is :math:`1 + w`), ``--classifier PATH --classifier-scale S`` with
classifier guidance (:mod:`sdekit.guidance`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path

import torch
from torch import nn

from .builders import sample_prediction
from .checks import check_choice
from .classifier import ClassifierTrainer, load_classifier
from .config import SAMPLE_THRESHOLDS, TrainConfig, config_field_types, read_config_file
from .data import DATASETS, IMAGE_DATASETS, TOY_DATASETS, load_dataset
from .distributed import init_process_group, resolve_device
from .figures import outside_pixels_text, save_samples
from .guidance import classifier_free_guidance, classifier_guidance
from .inference import TrainedModel, export_model, load_model
from .likelihood import DIVERGENCES, FIXED_GRID_METHODS
from .presets import PRESETS, preset
from .sampling import get_sampler
from .seeding import data_generator, derive_seed
from .sharded import likelihood_shards, sample_shards
from .shards import MANIFEST_NAME
from .training import NonFiniteLossError, Trainer

#: what ``sample --out`` may end with: a figure of the samples, or ``.pt`` for the raw tensor
SAMPLE_SUFFIXES = (".png", ".jpg", ".pdf", ".svg", ".pt")


#: the fields some data set's preset sets (their --help says so)
_PRESET_FIELDS = {name for values in PRESETS.values() for name in values}


def _presets_epilog() -> str:
    lines = ["presets (under --config and the flags; digits: 8x8, mnist and fashion_mnist: 28x28,"]
    lines.append("cifar10 and folder: 32x32; the toy sets use the defaults above):")
    for name, values in PRESETS.items():
        lines.append(f"  {name}: " + ", ".join(f"{k}={_shown(v)}" for k, v in values.items()))
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_config_flags(
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
            help_ += f" (default: {_shown(f.default)}{preset_note})"
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


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
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


def _add_shard_flags(parser: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    help_ = (
        f"write the {what} as shard_*.npz files and manifest.json here, resuming what a previous "
        "run with the same settings left"
    )
    if not required:
        help_ += "; needed under torchrun (default: none, one --out file)"
    parser.add_argument("--out-dir", type=Path, required=required, help=help_)
    parser.add_argument(
        "--shard-size",
        type=_positive_int,
        default=1000,
        help=f"{what} per shard file, the unit of work of a process (default: 1000)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdekit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
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
    _add_config_flags(train)
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
    _add_config_flags(clf)
    clf.set_defaults(run=_train, parser=clf, trainer=ClassifierTrainer)
    _add_control_parser(sub)
    smp = sub.add_parser(
        "sample",
        help="draw samples from a checkpoint",
        description="Draw samples from a checkpoint (or a directory of 'sdekit export'). With "
        "--out-dir the samples go to sharded .npz files and a manifest, over the processes of "
        "torchrun if run under it, and a rerun resumes the shards not yet done.",
    )
    _add_source_flags(smp)
    smp.add_argument("--method", default="dpmpp_2m", help="sampler name (default: dpmpp_2m)")
    smp.add_argument("--steps", type=_positive_int, default=20, help="sampler steps (default: 20)")
    # --num-samples for torchrun, whose own parser takes --n for an abbreviation of its options
    smp.add_argument(
        "--n",
        "--num-samples",
        dest="n",
        type=_positive_int,
        help="number of samples; under torchrun write --num-samples (default: 64; with "
        "--hint-from one per image, the images taken in turn)",
    )
    smp.add_argument(
        "--batch-size",
        type=_positive_int,
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
    _add_shard_flags(smp, "samples")
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

    lik = sub.add_parser(
        "likelihood",
        help="log-likelihoods and bits/dim of a data set under a checkpoint's model",
        description="Evaluate the probability-flow ODE's log-likelihood of every example of a "
        "data set on a fixed grid, written to sharded .npz files with a manifest and a summary "
        "(over the processes of torchrun if run under it; a rerun resumes).",
    )
    _add_source_flags(lik)
    lik.add_argument("--data", help="data set (default: the run's); one of " + ", ".join(DATASETS))
    lik.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="'test' for the test files of mnist, fashion_mnist, cifar10, or fresh points of a "
        "toy set (default: train, the run's own data)",
    )
    lik.add_argument(
        "--n",
        "--num-examples",
        dest="n",
        type=_positive_int,
        help="evaluate the first N examples; under torchrun write --num-examples (default: all)",
    )
    lik.add_argument(
        "--method",
        choices=FIXED_GRID_METHODS,
        default="rk4",
        help="fixed-grid ODE method (default: rk4)",
    )
    lik.add_argument("--steps", type=_positive_int, default=20, help="ODE steps (default: 20)")
    lik.add_argument(
        "--divergence",
        choices=DIVERGENCES,
        default="exact",
        help="exact, or the Hutchinson estimate (default: exact)",
    )
    lik.add_argument(
        "--probes", type=_positive_int, default=1, help="Hutchinson probes (default: 1)"
    )
    deq = lik.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=True)
    deq.help = (
        "images: add uniform noise to the integer pixels, for bits/dim that bound the discrete "
        "likelihood (default: --dequantize)"
    )
    lik.add_argument(
        "--batch-size", type=_positive_int, default=256, help="examples at once (default: 256)"
    )
    _add_shard_flags(lik, "values", required=True)
    lik.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    lik.set_defaults(run=_likelihood, parser=lik)

    exp = sub.add_parser(
        "export",
        help="write a checkpoint's EMA network as config.json + safetensors",
        description="Write the network of a checkpoint (EMA weights by default) as a "
        "diffusers-style model directory: config.json (with the SDE and the run's config) and "
        "diffusion_pytorch_model.safetensors; 'sdekit sample --checkpoint DIR' reads it back.",
    )
    _add_source_flags(exp)
    exp.add_argument("--out", type=Path, required=True, help="the directory to write")
    exp.set_defaults(run=_export, parser=exp)

    _add_inpaint(sub)
    return parser


def _add_control_parser(sub) -> None:
    from .control import TRAINING_FIELDS
    from .hints import HINT_NAMES

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
        type=_positive_int,
        default=16,
        help="channels of the hint encoder's first layers (default: 16)",
    )
    ema = ctl.add_argument("--base-ema", action=argparse.BooleanOptionalAction, default=True)
    ema.help = "control the base's EMA weights, or its last weights (default: --base-ema)"
    fields = tuple(f for f in TRAINING_FIELDS if f != "out")
    _add_config_flags(ctl, fields, default="the base run's")
    ctl.add_argument(
        "--out",
        help="run directory (default: BASE_RUN_control_HINT beside the base run's directory)",
    )
    ctl.set_defaults(run=_train_control, parser=ctl)


def _train_control(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .control import control_trainer

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


def _check_sample_out(out: Path) -> None:
    if out.is_dir():
        raise ValueError(f"--out must be a file to write, {out} is a directory")
    if out.suffix not in SAMPLE_SUFFIXES:
        raise ValueError(
            f"--out must end with one of {', '.join(SAMPLE_SUFFIXES)} (a figure, or .pt for the "
            f"tensor), got {out}"
        )


def _start(args: argparse.Namespace) -> TrainedModel:
    """Join torchrun's process group (sharded runs), pick the device, load the model."""
    if getattr(args, "out_dir", None) is not None:
        init_process_group(args.device)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise ValueError(f"--device: {e}") from None
    return load_model(args.checkpoint, ema=args.ema, device=device)


def _stop() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


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
        if args.out_dir is not None and (args.guidance, args.classifier) != (None, None):
            raise ValueError(
                "--guidance and --classifier are not recorded in an --out-dir manifest yet: "
                "sample a guided model with --out"
            )
        if args.hint_from is not None:
            if (args.guidance, args.classifier) != (None, None):
                raise ValueError("--guidance and --classifier do not apply to --hint-from")
            return _sample_control(args, out)
        if args.base is not None or args.scale != 1.0:
            raise ValueError("--base and --scale are for a ControlNet checkpoint, with --hint-from")
        trained = _guided(_start(args), args)
        n = 64 if args.n is None else args.n
        options = dict(
            seed=args.seed, method=args.method, steps=args.steps, label=args.label,
            threshold=args.threshold,
        )  # fmt: skip
        if args.out_dir is not None:
            manifest = sample_shards(
                trained, args.out_dir, n=n, shard_size=args.shard_size,
                batch_size=args.batch_size, checkpoint=args.checkpoint, ema=args.ema, **options,
            )  # fmt: skip
        else:
            x = trained.sample_batched(n, batch_size=args.batch_size, **options)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    finally:
        _stop()
    if args.out_dir is not None:
        if _rank() == 0:
            shards = len(manifest["shards"])
            print(f"samples: {n} in {shards} shard(s), {args.out_dir / MANIFEST_NAME}")
        return 0
    threshold = args.threshold or trained.config.sample_threshold
    if threshold != "none":
        print(f"sdekit sample: x0-hat bounded to [-1, 1] at every step ({threshold})")
    return _write_samples(x, out)


def _sample_control(args: argparse.Namespace, out: Path) -> int:
    from .control import load_controlled, read_images
    from .figures import save_image_rows
    from .inference import class_condition

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


def _evaluation_data(trained: TrainedModel, name: str | None, split: str, n: int | None):
    """``(x, labels, pixel_max, description)`` of the data set to evaluate (see ``--data``)."""
    config = trained.config
    name = config.data if name is None else name
    check_choice("--data", name, DATASETS)
    generator, count = None, None
    if name in TOY_DATASETS:
        # the run's own draw (n: its first n points), or n fresh points from another stream
        if split == "train":
            generator, count = data_generator(config.seed), config.toy_size
        else:
            generator = torch.Generator().manual_seed(derive_seed(config.seed, 8))
            count = config.toy_size if n is None else n
    elif split == "test" and name not in ("mnist", "fashion_mnist", "cifar10"):
        raise ValueError(f"--split test: data {name!r} has no test split; use --split train")
    x, labels = load_dataset(
        name, root=config.data_root, n=count, split=split, image_size=config.image_size,
        generator=generator,
    )  # fmt: skip
    if n is not None:
        if n > x.shape[0]:
            raise ValueError(f"--n must be at most the {x.shape[0]} examples of {name}, got {n}")
        x, labels = x[:n], None if labels is None else labels[:n]
    if trained.num_classes is None:
        labels = None
    elif labels is None:
        raise ValueError(f"the model is class-conditional; data {name!r} has no labels")
    pixel_max = ({"digits": 16.0}.get(name, 255.0)) if name in IMAGE_DATASETS else None
    return x, labels, pixel_max, f"{name}:{split}"


def _likelihood(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        trained = _start(args)
        x, labels, pixel_max, described = _evaluation_data(trained, args.data, args.split, args.n)
        manifest = likelihood_shards(
            trained, x, args.out_dir, labels=labels, method=args.method, steps=args.steps,
            divergence=args.divergence, probes=args.probes, pixel_max=pixel_max,
            dequantize=args.dequantize, seed=args.seed, shard_size=args.shard_size,
            batch_size=args.batch_size, data=described, checkpoint=args.checkpoint, ema=args.ema,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    finally:
        _stop()
    if _rank() == 0:
        s = manifest["summary"]
        print(
            f"likelihood of {s['n']} examples of {described}: "
            f"{s['mean_log_likelihood']:.4f} +- {s['sem_log_likelihood']:.4f} nats, "
            f"{s['mean_bits_per_dim']:.4f} +- {s['sem_bits_per_dim']:.4f} bits/dim; "
            f"{args.out_dir / MANIFEST_NAME}"
        )
    return 0


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out must be a directory, {args.out} is a file")
        trained = _start(args)
        export_model(trained, args.out)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"model: {args.out}")
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


class _Guided(nn.Module):
    """A guided model as a module holding the network (so its device and parameters are found)."""

    def __init__(self, net: nn.Module, guided):
        super().__init__()
        self.net, self.guided = net, guided

    def forward(self, x, t, cond=None):
        return self.guided(x, t, cond)


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sdekit`` and of the ``sdekit`` script."""
    args = build_parser().parse_args(argv)
    return args.run(args, args.parser)
