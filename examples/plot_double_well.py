r"""
A custom SDE: the double well
=============================

Any SDE is a subclass of :class:`sdekit.sde.SDE` with a ``drift`` and a ``diffusion``. Here the
overdamped Langevin dynamics in the potential :math:`U(x) = x^4/4 - x^2/2`,

.. math:: \mathrm{d}x = (x - x^3)\,\mathrm{d}t + G(x)\,\mathrm{d}w,

with two wells at :math:`x = \pm 1`, in two variants: a constant :math:`G = 0.8`, and a
state-dependent :math:`G(x) = 0.5 + 0.3\,(1 + \tanh 2x)`, noisier in the right well. With
state-dependent noise the Itô dynamics leave the noisy well more often, so mass collects in the
quiet one, although the potential is symmetric.

Euler–Maruyama samples (:func:`sdekit.simulate`) are checked against the density of the
Fokker–Planck equation :math:`\partial_t p = -\partial_x\bigl((x - x^3)p\bigr) + \tfrac12
\partial_x^2\bigl(G^2 p\bigr)` from :func:`sdekit.fokker_planck.solve_fokker_planck`; the script
prints the :math:`W_1` distance between the two at each snapshot time.
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import sdekit
from sdekit.metrics import w1_to_cdf

parser = argparse.ArgumentParser(description="A custom SDE: the double well")
parser.add_argument("--full", action="store_true", help="more samples, smaller steps")
parser.add_argument("--device", default="cpu", help="torch device for the sampling, e.g. cuda")
args = parser.parse_args()

n, em_dt, fp_dt = (200_000, 1e-3, 2.5e-4) if args.full else (20_000, 1e-2, 2e-3)
device = torch.device(args.device)


class DoubleWell(sdekit.SDE):
    """:math:`\\mathrm{d}x = (x - x^3)\\,\\mathrm{d}t + 0.8\\,\\mathrm{d}w`."""

    def drift(self, x, t):
        return x - x**3

    def diffusion(self, x, t):
        return 0.8 * torch.ones_like(t)


class NoisyRightWell(DoubleWell):
    """The same drift with :math:`G(x) = 0.5 + 0.3(1 + \\tanh 2x)`, shaped like ``x``."""

    def diffusion(self, x, t):
        return 0.5 + 0.3 * (1 + torch.tanh(2 * x))


T = 4.0
times = [0.5, 1.5, T]
x = np.linspace(-3.0, 3.0, 601)
p0 = np.exp(-0.5 * (x / 0.25) ** 2) / (0.25 * np.sqrt(2 * np.pi))

# %%
# Simulate both variants from the same start, :math:`x_0 \sim \mathcal N(0, 0.25^2)`, and solve
# the Fokker–Planck equation for the same initial density.

results = {}
for sde in (DoubleWell(T=T), NoisyRightWell(T=T)):
    generator = torch.Generator(device).manual_seed(0)
    x0 = 0.25 * torch.randn(n, 1, generator=generator, device=device)
    states, x_now, t_now = [], x0, 0.0
    for t in times:
        ts = torch.linspace(t_now, t, round((t - t_now) / em_dt) + 1)
        x_now = sdekit.simulate(sde, x_now, ts, generator=generator, return_path=False)
        states.append(x_now.cpu().numpy()[:, 0])
        t_now = t
    paths = sdekit.simulate(
        sde, x0[:12], torch.linspace(0, T, round(T / em_dt) + 1), generator=generator
    )
    density = sdekit.solve_fokker_planck(sde, p0, x, times, dt=fp_dt)
    results[type(sde).__name__] = states, paths.cpu().numpy()[..., 0], density

h = x[1] - x[0]


def grid_cdf(p: np.ndarray):
    """The CDF of a cell-centred density on ``x``, interpolated between the cell faces."""
    faces, values = x + h / 2, np.cumsum(p) * h
    return lambda g: torch.as_tensor(np.interp(g.numpy(), faces, values, left=0.0, right=1.0))


print(f"Euler-Maruyama ({n} samples, step {em_dt}) vs Fokker-Planck (step {fp_dt}):")
for name, (states, _, density) in results.items():
    for t, samples, p in zip(times, states, density, strict=True):
        w1 = w1_to_cdf(torch.as_tensor(samples), grid_cdf(p), -3.5, 3.5)
        left_em, left_fp = float((samples < 0).mean()), float(grid_cdf(p)(torch.zeros(1)))
        print(
            f"  {name:15s} t = {t:3g}   W1 {w1:.4f}   "
            f"mass in the left well: EM {left_em:.3f}, FP {left_fp:.3f}"
        )

# %%
# Sample paths, then histograms against the Fokker–Planck density at each snapshot time.

fig, axes = plt.subplots(2, len(times) + 1, figsize=(13, 6), sharey="col")
path_ts = np.linspace(0, T, round(T / em_dt) + 1)
for row, (name, (states, paths, density)) in enumerate(results.items()):
    axes[row, 0].plot(path_ts, paths, lw=0.6)
    axes[row, 0].set(xlabel="t", ylabel=f"{name}\nx", ylim=(-2.2, 2.2))
    for col, (t, samples, p) in enumerate(zip(times, states, density, strict=True), start=1):
        ax = axes[row, col]
        ax.hist(
            samples,
            bins=90,
            range=(-2.25, 2.25),
            density=True,
            color=f"C{row}",
            alpha=0.6,
            label="Euler–Maruyama",
        )
        ax.plot(x, p, "k", lw=1.2, label="Fokker–Planck")
        ax.set(xlim=(-2.25, 2.25), title=f"t = {t:g}")
axes[0, 1].legend(fontsize=8)
axes[0, 0].set_title("sample paths")
fig.tight_layout()
out = Path("outputs")  # under the working directory: the repo root in README's commands
out.mkdir(exist_ok=True)
fig.savefig(out / "plot_double_well.png", dpi=110)
