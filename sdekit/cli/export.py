"""``sdekit export``: a checkpoint's network as a model directory (config.json and safetensors,
:func:`sdekit.inference.export_model`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inference import export_model
from .flags import add_source_flags, start


def add_parsers(sub) -> None:
    """Add ``export`` to the subcommands ``sub``."""
    exp = sub.add_parser(
        "export",
        help="write a checkpoint's EMA network as config.json + safetensors",
        description="Write the network of a checkpoint (EMA weights by default) as a "
        "diffusers-style model directory: config.json (with the SDE and the run's config) and "
        "diffusion_pytorch_model.safetensors; 'sdekit sample --checkpoint DIR' reads it back.",
    )
    add_source_flags(exp)
    exp.add_argument("--out", type=Path, required=True, help="the directory to write")
    exp.set_defaults(run=_export, parser=exp)


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out must be a directory, {args.out} is a file")
        trained = start(args)
        export_model(trained, args.out)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"model: {args.out}")
    return 0
