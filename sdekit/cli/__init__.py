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

from . import export, inpaint, likelihood, sample, train
from .train import train_config

__all__ = ["build_parser", "main", "train_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdekit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # in this order in --help
    for commands in (train, sample, likelihood, export, inpaint):
        commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sdekit`` and of the ``sdekit`` script."""
    args = build_parser().parse_args(argv)
    return args.run(args, args.parser)
