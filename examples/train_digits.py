r"""
Training a UNet on 8×8 digits
=============================

A small DDPM++-style UNet (:class:`sdekit.networks.UNet`) learns the scikit-learn handwritten digits
(1797 images of 8×8 pixels, grey levels 0–16 mapped to :math:`[-1, 1]`) by denoising score matching
on the VP SDE (Song et al. 2021), predicting the noise :math:`\varepsilon` (Ho et al. 2020),
through :class:`sdekit.training.Trainer` with an EMA of the weights. The EMA network is sampled
two ways:

- DPM-Solver++(2M) (Lu et al. 2022) on the probability-flow ODE, 20 steps (20 network calls);
- Euler–Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6), 200 steps, with Tweedie's final
  denoising step.

Run ``python examples/train_digits.py`` (under a minute on one idle CPU core: blurry blobs, not
yet digits), ``--full`` for 20,000 steps that draw clean digits (about an hour on one CPU core; a
GPU with ``--device cuda`` takes minutes), ``--class-conditional`` to draw each class in turn. The
run directory is ``outputs/train_digits/`` (running again resumes from its checkpoint); the figure,
real digits beside the samples of both methods, goes to ``outputs/train_digits.png``.
``benchmarks/quality_digits.py`` measures such samples with a classifier.
"""

import argparse
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from sdekit.data import to_pixel_range
from sdekit.training import TrainConfig, Trainer

parser = argparse.ArgumentParser(description="Train a UNet on 8x8 digits and sample it two ways")
parser.add_argument("--full", action="store_true", help="20,000 steps")
parser.add_argument("--steps", type=int, help="training steps (default 200; full 20,000)")
parser.add_argument("--n", type=int, default=64, help="samples per method")
parser.add_argument("--class-conditional", action="store_true", help="condition on the labels")
parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
parser.add_argument("--out", default="outputs/train_digits", help="run directory")
args = parser.parse_args()
torch.set_num_threads(1)  # small tensors: extra threads only spin on a shared machine

config = TrainConfig(
    data="digits",
    class_conditional=args.class_conditional,
    sde="vp",
    prediction="eps",
    channels=32,
    channel_mults=(1, 2),
    num_res_blocks=1,
    dropout=0.1,
    batch_size=128,
    steps=args.steps or (20_000 if args.full else 200),
    lr=1e-3,
    warmup_steps=200,
    ema_decay=0.999 if args.full else 0.99,
    sample_every=0,
    checkpoint_every=0 if not args.full else 2000,
    device=args.device,
    out=args.out,
)
trainer = Trainer(config)
start = time.perf_counter()
losses = trainer.train()
print(f"trained {config.steps} steps in {time.perf_counter() - start:.1f} s", end="")
print(f", final loss {losses[-1]:.4f}" if losses else " (resumed a finished run)")

# %%
# Sampling the EMA network with an ODE solver and with the reverse SDE
panels = {"training digits": trainer.x[: args.n].cpu()}
for method, steps in (("dpmpp_2m", 20), ("euler_maruyama", 200)):
    panels[f"{method}, {steps} steps"] = trainer.sample(args.n, method=method, steps=steps).cpu()


def grid(x: torch.Tensor) -> torch.Tensor:
    """``(n, 1, 8, 8)`` images in [-1, 1] as one square grid of grey levels in [0, 1]."""
    cols = int(len(x) ** 0.5 + 0.999)
    pixels = to_pixel_range(x, 1.0).clamp(0, 1)  # clipped for display only
    pad = torch.ones(cols * cols - len(x), *x.shape[1:])
    tiles = torch.nn.functional.pad(torch.cat([pixels, pad]), (1, 0, 1, 0), value=1.0)
    size = tiles.shape[-1]
    return tiles[:, 0].reshape(cols, cols, size, size).permute(0, 2, 1, 3).reshape(-1, cols * size)


# %%
# Real digits beside the samples of both methods
fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), layout="constrained")
for ax, (title, x) in zip(axes, panels.items(), strict=True):
    ax.imshow(grid(x), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
Path("outputs").mkdir(exist_ok=True)
fig.savefig("outputs/train_digits.png", dpi=100)
