"""``sdekit likelihood``: the probability-flow ODE's log-likelihoods and bits/dim of a data set
under a checkpoint's model, to sharded files."""

from __future__ import annotations

import argparse

import torch

from ..checks import check_choice
from ..data import DATASETS, IMAGE_DATASETS, TOY_DATASETS, load_dataset
from ..inference import TrainedModel
from ..likelihood import DIVERGENCES, FIXED_GRID_METHODS
from ..seeding import data_generator, derive_seed
from ..sharded import likelihood_shards
from ..shards import MANIFEST_NAME
from .flags import add_shard_flags, add_source_flags, positive_int, rank, start, stop


def add_parsers(sub) -> None:
    """Add ``likelihood`` to the subcommands ``sub``."""
    lik = sub.add_parser(
        "likelihood",
        help="log-likelihoods and bits/dim of a data set under a checkpoint's model",
        description="Evaluate the probability-flow ODE's log-likelihood of every example of a "
        "data set on a fixed grid, written to sharded .npz files with a manifest and a summary "
        "(over the processes of torchrun if run under it; a rerun resumes).",
    )
    add_source_flags(lik)
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
        type=positive_int,
        help="evaluate the first N examples; under torchrun write --num-examples (default: all)",
    )
    lik.add_argument(
        "--method",
        choices=FIXED_GRID_METHODS,
        default="rk4",
        help="fixed-grid ODE method (default: rk4)",
    )
    lik.add_argument("--steps", type=positive_int, default=20, help="ODE steps (default: 20)")
    lik.add_argument(
        "--divergence",
        choices=DIVERGENCES,
        default="exact",
        help="exact, or the Hutchinson estimate (default: exact)",
    )
    lik.add_argument(
        "--probes", type=positive_int, default=1, help="Hutchinson probes (default: 1)"
    )
    deq = lik.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=True)
    deq.help = (
        "images: add uniform noise to the integer pixels, for bits/dim that bound the discrete "
        "likelihood (default: --dequantize)"
    )
    lik.add_argument(
        "--batch-size", type=positive_int, default=256, help="examples at once (default: 256)"
    )
    add_shard_flags(lik, "values", required=True)
    lik.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    lik.set_defaults(run=_likelihood, parser=lik)


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
        trained = start(args)
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
        stop()
    if rank() == 0:
        s = manifest["summary"]
        print(
            f"likelihood of {s['n']} examples of {described}: "
            f"{s['mean_log_likelihood']:.4f} +- {s['sem_log_likelihood']:.4f} nats, "
            f"{s['mean_bits_per_dim']:.4f} +- {s['sem_bits_per_dim']:.4f} bits/dim; "
            f"{args.out_dir / MANIFEST_NAME}"
        )
    return 0
