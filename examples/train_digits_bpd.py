r"""
Bits per dimension of a UNet on the digits
==========================================

Trains a small :class:`~sdekit.networks.UNet` (noise prediction, VP SDE) on scikit-learn's 8×8
digits and reports the bits per dimension of held-out digits through the probability-flow ODE
(:func:`sdekit.likelihood.bits_per_dim`).

The digits have :math:`L = 17` grey levels (0..16). For the bits to bound the discrete probability
of the images, the model must be a density of *dequantized* data, so every training batch is
dequantized afresh, :math:`x = 2(v + u)/17 - 1` with :math:`u \sim \mathcal U[0, 1)^{64}`, the map
:func:`~sdekit.likelihood.bits_per_dim` uses with ``levels=17`` (the trainer of
:mod:`sdekit.training` fits the undequantized levels :math:`2v/16 - 1`, hence the loop here).
The loss is denoising score matching with the likelihood weighting :math:`g^2(t)` and
importance-sampled time, whose value bounds the negative log-likelihood (Song et al. 2021b).

For scale the script prints two references: :math:`\log_2 17 \approx 4.09` bits (uniform over the
levels) and the bits of a model with independent pixels, each with its empirical level histogram
from the training set. Not executed by the docs build: on a CPU a step takes about a second (the
default 1500 steps are a coffee break; 250 steps give about 3 bits/dim, not yet better than the
independent pixels); ``--full`` is meant for a GPU.

    python examples/train_digits_bpd.py                       # 1500 steps, 200 test digits
    python examples/train_digits_bpd.py --full --device cuda  # 20000 steps, all 297 test digits
"""

import argparse
import math
import time

import torch

import sdekit
from sdekit.data import load_digits, to_pixel_range
from sdekit.ema import EMA
from sdekit.likelihood import bits_per_dim
from sdekit.losses import DenoisingScoreMatching
from sdekit.networks import UNet

LEVELS = 17

parser = argparse.ArgumentParser(description="Bits per dimension of a UNet on the digits")
parser.add_argument("--full", action="store_true", help="train longer, evaluate all test digits")
parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
parser.add_argument("--steps", type=int, default=None, help="optimisation steps")
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--channels", type=int, default=32, help="UNet base channels")
parser.add_argument("--test", type=int, default=None, help="number of test digits evaluated")
parser.add_argument("--exact", action="store_true", help="exact divergence (64 backward passes)")
parser.add_argument("--rtol", type=float, default=1e-5, help="ODE tolerance (rtol = atol)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
device = torch.device(args.device)
steps = args.steps or (20_000 if args.full else 1500)
n_test = args.test or (297 if args.full else 200)
torch.manual_seed(args.seed)

# The digits as integer levels 0..16, split 1500 / 297 by a seeded permutation.
x, _ = load_digits()
pixels = to_pixel_range(x, LEVELS - 1).round()
perm = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(args.seed))
train, test = pixels[perm[:1500]].to(device), pixels[perm[1500:]][:n_test]

sde = sdekit.VPSDE()
model = UNet(1, 8, args.channels, (1, 2), num_res_blocks=2, attn_resolutions=(4,)).to(device)
ema = EMA(model, decay=0.999)
loss_fn = DenoisingScoreMatching(sde, "eps", weighting="likelihood", t_sampling="importance")
opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.05)
g = torch.Generator(device).manual_seed(args.seed + 1)

start, running = time.perf_counter(), None
for step in range(1, steps + 1):
    idx = torch.randint(0, len(train), (args.batch,), generator=g, device=device)
    v = train[idx]
    x0 = 2 * (v + torch.rand(v.shape, generator=g, device=device)) / LEVELS - 1
    loss = loss_fn(model, x0, generator=g)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    ema.update(model)
    running = loss.detach() if running is None else 0.99 * running + 0.01 * loss.detach()
    if step % 250 == 0 or step == steps:
        print(f"step {step:6d}  loss {running.item():9.3f}  {time.perf_counter() - start:6.0f} s")

# References: uniform over the levels, and independent pixels with their empirical histograms
# (add-one smoothed), both exact discrete probabilities.
counts = torch.stack([(train.cpu() == k).flatten(1).sum(0) for k in range(LEVELS)]) + 1.0
probs = counts / counts.sum(0)  # (levels, 64)
independent = -torch.log2(probs[test.flatten(1).long(), torch.arange(64)]).mean(1)
print(f"\nuniform over {LEVELS} levels: {math.log2(LEVELS):.3f} bits/dim")
print(f"independent pixels (training histograms): {independent.mean():.3f} bits/dim")

divergence = "exact" if args.exact else "hutchinson"
start = time.perf_counter()
bpd, info = bits_per_dim(
    ema.module,
    sde,
    test.to(device),
    levels=LEVELS,
    prediction="eps",
    divergence=divergence,
    rtol=args.rtol,
    atol=args.rtol,
    generator=torch.Generator(device).manual_seed(args.seed + 2),
)
stderr = bpd.std() / math.sqrt(len(bpd))
print(
    f"UNet, probability-flow ODE ({divergence} divergence, rtol {args.rtol:g}, {info.nfe} NFE, "
    f"{time.perf_counter() - start:.0f} s): {bpd.mean():.3f} ± {stderr:.3f} bits/dim "
    f"on {len(bpd)} test digits (upper bound, one dequantization draw each)"
)
