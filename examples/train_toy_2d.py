r"""
Training a 2D score model
=========================

A small MLP learns the score of a 2D toy data set by denoising score matching (Vincent 2011;
Song et al. 2021, eq. 7) through :class:`sdekit.training.Trainer`, on the VP SDE with EDM
preconditioning (Karras et al. 2022, Table 1) and an EMA of the weights. The EMA network is then
sampled two ways:

- DPM-Solver++(2M) (Lu et al. 2022), a second-order multistep solver of the probability-flow ODE,
  at 20 steps (20 network calls);
- Euler–Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6) at 200 steps, plus Tweedie's
  final denoising step.

For the eight-Gaussian ring (``--data gmm_2d``) the law is an exact
:class:`~sdekit.GaussianMixture`, so the script also prints the sliced Wasserstein-1 distance of
each sampler's points to it, beside the Monte-Carlo floor (exact samples of the same size).

Run ``python examples/train_toy_2d.py`` (under a minute on one idle CPU core), ``--full`` for a
longer run, ``--device cuda`` for a GPU. The run directory (checkpoint, config) is
``outputs/train_toy_2d/``; running again resumes from its checkpoint. The figure, data beside the
samples of both methods, goes to ``outputs/train_toy_2d.png``.
"""

import argparse
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from sdekit.data import GMM_2D, TOY_DATASETS
from sdekit.metrics import sliced_w1
from sdekit.training import TrainConfig, Trainer

parser = argparse.ArgumentParser(description="Train a 2D score model and sample it two ways")
parser.add_argument("--data", default="gmm_2d", choices=[k for k in TOY_DATASETS if "1d" not in k])
parser.add_argument("--full", action="store_true", help="20,000 steps and 20,000 samples")
parser.add_argument("--steps", type=int, help="training steps (default 1500; full 20,000)")
parser.add_argument("--n", type=int, help="samples per method (default 4000; full 20,000)")
parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
parser.add_argument("--out", default="outputs/train_toy_2d", help="run directory")
args = parser.parse_args()
torch.set_num_threads(1)  # small matrices: extra threads only spin on a shared machine

steps = args.steps or (20_000 if args.full else 1500)
n = args.n or (20_000 if args.full else 4000)
config = TrainConfig(
    data=args.data,
    toy_size=100_000,
    sde="vp",
    prediction="edm",
    t_sampling="lognormal",
    hidden=256,
    depth=3,
    batch_size=512,
    steps=steps,
    lr=2e-3,
    ema_decay=0.999 if args.full else 0.995,
    sample_every=0,
    checkpoint_every=0,
    device=args.device,
    out=args.out,
)
trainer = Trainer(config)
start = time.perf_counter()
losses = trainer.train()
print(f"trained {config.steps} steps in {time.perf_counter() - start:.1f} s", end="")
print(f", final loss {losses[-1]:.3f}" if losses else " (resumed a finished run)")

# %%
# Sampling the EMA network with an ODE solver and with the reverse SDE
samples = {}
for method, n_steps in (("dpmpp_2m", 20), ("euler_maruyama", 200)):
    x = trainer.sample(n, method=method, steps=n_steps).cpu()
    samples[f"{method}, {n_steps} steps"] = x

if args.data == "gmm_2d":
    directions = torch.Generator().manual_seed(0)
    exact = GMM_2D.sample(n, generator=torch.Generator().manual_seed(1))
    floor = sliced_w1(exact, GMM_2D, generator=directions.manual_seed(0))
    for name, x in samples.items():
        w1 = sliced_w1(x.double(), GMM_2D, generator=directions.manual_seed(0))
        print(f"sliced W1 to the exact mixture, {name}: {w1:.4f}")
    print(f"Monte-Carlo floor ({n} exact samples): {floor:.4f}")

# %%
# Data beside the samples of both methods
data = trainer.x[:n].cpu()
fig, axes = plt.subplots(1, 3, figsize=(12, 4.3), sharex=True, sharey=True, layout="constrained")
for ax, (title, x) in zip(axes, [("data", data), *samples.items()], strict=True):
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
    ax.set_title(title)
    ax.set_aspect("equal")
lim = 1.15 * float(data.abs().max())
axes[0].set_xlim(-lim, lim)
axes[0].set_ylim(-lim, lim)
Path("outputs").mkdir(exist_ok=True)
fig.savefig("outputs/train_toy_2d.png", dpi=100)
