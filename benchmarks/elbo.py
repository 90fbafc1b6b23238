r"""Bits per dimension of digits models by DDPM's bound (fixed and learned variance), by the
continuous-time bound and by the probability-flow ODE, with the cost of each, in one run.

A network with a learned-variance output (:class:`sdekit.elbo.LearnedVariance`) is trained by
:class:`sdekit.Trainer` with the hybrid loss of improved DDPM on the 1000-level chain of the VP SDE
(``DDPMSchedule.from_sde``, Ho et al.'s betas), on scikit-learn's 8x8 digits (17 grey levels, pixel
:math:`v` at :math:`x = 2v/16 - 1`; 1500 train / 297 test by a seeded permutation), twice:

- on the **discrete** digits, as DDPM trains (the bound's level-0 term with the discretized
  decoder of 17 levels);
- on **dequantized** digits, drawn afresh at every step uniformly within the decoder's bins,
  :math:`x + U(-1, 1)/16`, which makes the model a density, as the ODE likelihood wants.

Each model is evaluated on the same discrete test digits by every estimator, each an upper bound on
the bits per dimension of a discrete model of them:

- DDPM's bound (:func:`sdekit.elbo.ddpm_bound`, discretized-Gaussian decoder), the exact sum over
  all 1000 levels with the reverse variance beta, beta_tilde and the learned one; the same chain
  started at the first level whose noise reaches the bins' half-width 1/16 (its first step merging
  the levels below, where the optimal denoiser snaps each pixel to the 17-level grid), with the
  fixed variances; and the learned variance's importance-sampled estimate (a
  :class:`SecondMomentSampler` warmed on training digits);
- the continuous-time bound (:func:`sdekit.elbo.continuous_bound`, VDM's decoder, draws of t
  uniform in log-SNR) of the network's noise prediction;
- the probability-flow ODE (:func:`sdekit.likelihood.log_likelihood`, dopri5, Hutchinson trace) of
  uniformly dequantized test digits in the same bins, :math:`-\log_2 p(x)/D + \log_2(16/2)`.

References: uniform over the 17 levels (:math:`\log_2 17`) and independent pixels with their
training histograms (exact discrete probabilities). The table gives the mean over the test digits
with its standard error, the network calls (each on the whole test batch; the ODE's each with a
vector-Jacobian product) and the seconds. By default the network is an MLP on the flattened
digits (CPU minutes); ``--net unet`` trains the UNet (meant for a GPU). Either is fed EDM's noise
input :math:`\frac14\log(\sigma/\alpha)` in place of the time.

    python benchmarks/elbo.py                        # MLP, 4000 steps each, 150 test digits
    python benchmarks/elbo.py --full --device cuda   # UNet, 20000 steps each, all 297 test digits
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import sdekit
from sdekit.data import load_digits
from sdekit.elbo import (
    HybridLoss,
    LearnedVariance,
    SecondMomentSampler,
    continuous_bound,
    ddpm_bound,
)
from sdekit.likelihood import log_likelihood
from sdekit.networks import MLP, UNet

sys.path.insert(0, str(Path(__file__).parent))
from devices import sync  # noqa: E402

LEVELS = 17


class NoiseLevelInput(nn.Module):
    r"""A network fed EDM's noise input :math:`\frac14\log(\sigma/\alpha)` instead of the time,
    which resolves the low-noise levels that carry most of the bound (raw times of 1e-3 and
    1e-2 look alike to Fourier features of t)."""

    def __init__(self, net, sde):
        super().__init__()
        self.net, self.sde = net, sde

    def forward(self, x, t):
        return self.net(x, -self.sde.log_snr(t) / 8)


class FlatMLP(nn.Module):
    """An MLP on flattened images that answers in image shape (its output channels: eps, v)."""

    def __init__(self, shape, hidden, depth, out_channels):
        super().__init__()
        self.shape, self.out_channels = shape, out_channels
        d = math.prod(shape)
        self.mlp = MLP(d, hidden, depth, out_dim=out_channels * d // shape[0])

    def forward(self, x, t):
        out = self.mlp(x.flatten(1), t)
        return out.view(x.shape[0], self.out_channels, *self.shape[1:])


class Dequantized:
    """A loss on data dequantized afresh within the decoder's bins: :math:`x + U(-1, 1)/(L-1)`."""

    def __init__(self, loss, levels: int):
        self.loss, self.levels = loss, levels

    def __call__(self, model, x0, *, generator=None, **kwargs):
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.loss(model, x0 + (2 * u - 1) / (self.levels - 1), generator=generator, **kwargs)


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def evaluate(ema, sde, schedule, pixels, warm, terms, rtol, device):
    """``[(estimator, bpd per digit, network calls, seconds)]`` for one trained model."""
    rows = []
    D = pixels[0].numel()
    with torch.no_grad():
        for variance in ("beta", "beta_tilde", "learned"):
            b, s = timed(
                device,
                lambda v=variance: ddpm_bound(
                    ema,
                    sde,
                    pixels,
                    schedule,
                    variance=v,
                    levels=LEVELS,
                    generator=torch.Generator(device).manual_seed(1),
                ),
            )
            rows.append((f"DDPM bound, {variance}, exact sum", b.bpd, b.nfe, s))
        # the same chain from the first level whose noise reaches the bins' half-width 1/16, its
        # first step merging the levels below (at those the optimal denoiser snaps each pixel to
        # the grid); the learned v belongs to the full chain, so fixed variances only
        ab = schedule.alpha_bars
        k = int((torch.sqrt(1 - ab) < 1 / (LEVELS - 1)).sum())
        cut = sdekit.DDPMSchedule(torch.cat([1 - ab[k : k + 1], schedule.betas[k + 1 :]]))
        for variance in ("beta", "beta_tilde"):
            b, s = timed(
                device,
                lambda v=variance: ddpm_bound(
                    ema,
                    sde,
                    pixels,
                    cut,
                    variance=v,
                    levels=LEVELS,
                    generator=torch.Generator(device).manual_seed(1),
                ),
            )
            name = f"DDPM bound, {variance}, exact sum, chain from sigma = 1/16 ({len(cut)} levels)"
            rows.append((name, b.bpd, b.nfe, s))
        sampler = SecondMomentSampler(len(schedule), device=device)
        ddpm_bound(
            ema,
            sde,
            warm,
            schedule,
            variance="learned",
            levels=LEVELS,
            samples=40,
            sampler=sampler,
            generator=torch.Generator(device).manual_seed(2),
        )
        b, s = timed(
            device,
            lambda: ddpm_bound(
                ema,
                sde,
                pixels,
                schedule,
                variance="learned",
                levels=LEVELS,
                samples=terms,
                sampler=sampler,
                generator=torch.Generator(device).manual_seed(3),
            ),
        )
        rows.append((f"DDPM bound, learned, {terms} importance-sampled terms", b.bpd, b.nfe, s))
        c, s = timed(
            device,
            lambda: continuous_bound(
                ema,
                sde,
                pixels,
                levels=LEVELS,
                samples=terms,
                generator=torch.Generator(device).manual_seed(4),
            ),
        )
        rows.append((f"continuous-time bound, {terms} draws of t", c.bpd, c.nfe, s))
    g = torch.Generator(device).manual_seed(5)
    u = torch.rand(pixels.shape, generator=g, device=device)
    x_deq = 2 * (pixels + u - 0.5) / (LEVELS - 1) - 1
    (log_p, info), s = timed(
        device,
        lambda: log_likelihood(
            ema,
            sde,
            x_deq,
            prediction="eps",
            divergence="hutchinson",
            rtol=rtol,
            atol=rtol,
            generator=g,
        ),
    )
    bpd = -log_p / (D * math.log(2)) + math.log2((LEVELS - 1) / 2)
    rows.append((f"probability-flow ODE (dopri5, rtol {rtol:g}, Hutchinson)", bpd, info.nfe, s))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="UNet, 20000 steps, all test digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--net", choices=("mlp", "unet"), default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps of each model")
    parser.add_argument("--test", type=int, default=None, help="test digits evaluated")
    parser.add_argument("--terms", type=int, default=None, help="Monte-Carlo terms per image")
    parser.add_argument("--rtol", type=float, default=1e-5, help="ODE tolerance (rtol = atol)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    net_kind = args.net or ("unet" if args.full else "mlp")
    steps = args.steps or (20_000 if args.full else 4000)
    n_test = args.test or (297 if args.full else 150)
    terms = args.terms or (100 if args.full else 50)

    x, _ = load_digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    train, test = x[perm[:1500]], x[perm[1500:]][:n_test]
    pixels = ((test + 1) * (LEVELS - 1) / 2).round().to(device)  # integer levels 0..16
    warm = ((train[:500] + 1) * (LEVELS - 1) / 2).round().to(device)
    sde = sdekit.VPSDE()
    schedule = sdekit.DDPMSchedule.from_sde(sde, 1000)
    results = {}
    for data in ("discrete", "dequantized"):
        torch.manual_seed(args.seed)
        if net_kind == "mlp":
            net = FlatMLP((1, 8, 8), 512, 4, out_channels=2)
        else:
            net = UNet(1, 8, 64, (1, 2), 2, (4,), dropout=0.1, out_channels=2)
        model = LearnedVariance(NoiseLevelInput(net, sde), schedule, sde)
        run_dir = tempfile.TemporaryDirectory(prefix="elbo_bench_")  # checkpoint and grid
        config = sdekit.TrainConfig(
            data="digits",
            steps=steps,
            batch_size=128,
            lr=1e-3 if net_kind == "mlp" else 2e-4,
            warmup_steps=100,
            ema_decay=0.999,
            seed=args.seed,
            device=args.device,
            sample_every=0,
            checkpoint_every=0,
            out=run_dir.name,
        )
        if data == "discrete":
            loss_fn = HybridLoss(sde, schedule, levels=LEVELS)
        else:
            loss_fn = Dequantized(HybridLoss(sde, schedule), LEVELS)
        trainer = sdekit.Trainer(config, model=model, loss_fn=loss_fn, data=(train, None))
        losses, seconds = timed(device, trainer.train)
        last = losses[-100:]
        print(
            f"{net_kind} ({sum(p.numel() for p in model.parameters())} parameters) on {data} "
            f"digits: {steps} steps of the hybrid loss in {seconds:.0f} s (mean of the last 100 "
            f"losses {sum(last) / len(last):.4f})",
            flush=True,
        )
        ema = trainer.ema.module.eval()
        run_dir.cleanup()
        results[data] = evaluate(ema, sde, schedule, pixels, warm, terms, args.rtol, device)

    D = pixels[0].numel()
    train_pixels = ((train + 1) * (LEVELS - 1) / 2).round()
    counts = torch.stack([(train_pixels == k).flatten(1).sum(0) for k in range(LEVELS)]) + 1.0
    probs = counts / counts.sum(0)  # add-one smoothed, (levels, D)
    independent = -torch.log2(probs[pixels.cpu().flatten(1).long(), torch.arange(D)]).mean(1)
    print(f"\n{n_test} test digits, device {device}; bits/dim ± standard error over the digits\n")
    print(
        "| estimator | trained on discrete digits | trained on dequantized digits "
        "| network calls | seconds (discrete / dequantized) |"
    )
    print("|---|---|---|---|---|")
    for (name, a, nfe, s1), (_, b, nfe2, s2) in zip(
        results["discrete"], results["dequantized"], strict=True
    ):
        se_a, se_b = (float(v.std()) / math.sqrt(len(v)) for v in (a, b))
        calls = str(nfe) if nfe == nfe2 else f"{nfe} / {nfe2}"
        print(
            f"| {name} | {float(a.mean()):.3f} ± {se_a:.3f} | {float(b.mean()):.3f} ± {se_b:.3f} "
            f"| {calls} | {s1:.1f} / {s2:.1f} |"
        )
    se = float(independent.std()) / math.sqrt(len(independent))
    print(
        f"| independent pixels (training histograms) | {independent.mean():.3f} ± {se:.3f} | "
        "(same) | 0 | |"
    )
    print(f"| uniform over {LEVELS} levels | {math.log2(LEVELS):.3f} | (same) | 0 | |")


if __name__ == "__main__":
    main()
