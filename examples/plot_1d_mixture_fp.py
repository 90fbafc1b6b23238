r"""
A 1D mixture through the Fokker–Planck equation
===============================================

A two-component Gaussian mixture is diffused by the VP SDE
:math:`\mathrm{d}x = -\tfrac12\beta(t)x\,\mathrm{d}t + \sqrt{\beta(t)}\,\mathrm{d}w`. Its density
obeys the Fokker–Planck equation

.. math:: \partial_t p = \tfrac12\beta(t)\,\partial_x (x p) + \tfrac12\beta(t)\,\partial_x^2 p,

solved here on a grid by :func:`sdekit.fokker_planck.solve_fokker_planck` and drawn as a heatmap in
:math:`(t, x)`. Below it, histograms of Euler–Maruyama samples at a few times: forward from the
data, and backward from the prior by the reverse-time SDE with the exact score. Both must match the
same density, since the reverse SDE has the forward marginals (Song et al. 2021, eq. 6). The dashed
line is the closed-form marginal :math:`p_t`, a mixture of
:math:`\mathcal N(\alpha_t\mu_k, \alpha_t^2 s_k^2 + \sigma_t^2)`.

The script prints the largest gap between the grid solution and the closed form, and the
:math:`W_1` distance of each histogram's samples to the exact :math:`p_t`.
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import sdekit
from sdekit.metrics import w1_to_cdf

parser = argparse.ArgumentParser(description="A 1D mixture through the Fokker-Planck equation")
parser.add_argument("--full", action="store_true", help="more samples, steps and a finer grid")
parser.add_argument("--device", default="cpu", help="torch device for the sampling, e.g. cuda")
args = parser.parse_args()

n, steps_per_unit, cells, dt = (
    (200_000, 4000, 1601, 5e-4) if args.full else (20_000, 500, 601, 2e-3)
)
device = torch.device(args.device)
generator = torch.Generator(device).manual_seed(0)

sde = sdekit.VPSDE(beta_min=0.1, beta_max=20.0)
target = sdekit.GaussianMixture([0.35, 0.65], [-1.5, 1.0], [0.25, 0.4])
score = target.score_fn(sde)
# t_min, not 0: the reverse SDE stops there
times = [sde.t_min, 0.08, 0.25, sde.T]

# %%
# The Fokker–Planck density on a grid wide enough that no mass reaches its reflecting ends.

x = np.linspace(-4.0, 4.0, cells)
p0 = target.log_prob(torch.as_tensor(x)[:, None]).exp().numpy()
heat_times = np.linspace(0.0, sde.T, 201)
heat = sdekit.solve_fokker_planck(sde, p0, x, heat_times, dt=dt)
density = dict(zip(times, sdekit.solve_fokker_planck(sde, p0, x, times, dt=dt), strict=True))


def exact_density(t: float) -> np.ndarray:
    return target.log_prob(torch.as_tensor(x)[:, None], t, sde).exp().numpy()


gap = max(np.abs(density[t] - exact_density(t)).max() for t in times)
print(f"Fokker-Planck grid ({cells} cells, dt={dt}) vs closed form: max |p - p_exact| = {gap:.2e}")

# %%
# Euler–Maruyama samples, forward from the data and backward from the prior, stopping at the
# snapshot times.


def run(sde_, x_start, checkpoints):
    """Simulate through ``checkpoints`` (monotone times), returning the state at each of them."""
    states, x_now = [], x_start
    for t_a, t_b in zip(checkpoints[:-1], checkpoints[1:], strict=True):
        k = max(1, round(abs(t_b - t_a) * steps_per_unit))
        ts = torch.linspace(t_a, t_b, k + 1)
        x_now = sdekit.simulate(sde_, x_now, ts, generator=generator, return_path=False)
        states.append(x_now)
    return states


x0 = target.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(device)
forward = dict(zip(times, run(sde, x0, [0.0, *times]), strict=True))
x_T = sde.prior_sample((n, 1), generator=generator, device=device)
backward = dict(zip(times[-2::-1], run(sde.reverse(score), x_T, times[::-1]), strict=True))
backward[sde.T] = x_T

print(f"W1 to the exact p_t, {n} samples, {steps_per_unit} steps per unit time:")
for t in times:
    cdf = lambda g, t=t: target.cdf(g, t, sde)  # noqa: E731
    w_fwd = w1_to_cdf(forward[t], cdf, -6.0, 6.0)
    w_bwd = w1_to_cdf(backward[t], cdf, -6.0, 6.0)
    print(f"  t = {t:5.3f}   forward {w_fwd:.4f}   reverse {w_bwd:.4f}")

# %%
# The figure: the density in (t, x) on top, histograms against it below.

fig = plt.figure(figsize=(12, 7.5))
grid = fig.add_gridspec(3, len(times), height_ratios=[1.3, 1, 1])
ax = fig.add_subplot(grid[0, :])
mesh = ax.pcolormesh(heat_times, x, heat.T, shading="nearest", cmap="magma", vmax=1.0)
for t in times:
    ax.axvline(t, color="w", lw=0.8, ls=":")
ax.set(xlabel="t", ylabel="x", title="Fokker–Planck density $p_t(x)$ of the VP SDE")
fig.colorbar(mesh, ax=ax, pad=0.01)
for row, (samples, label) in enumerate([(forward, "forward"), (backward, "reverse")], start=1):
    for col, t in enumerate(times):
        ax = fig.add_subplot(grid[row, col])
        ax.hist(
            samples[t].cpu().numpy()[:, 0],
            bins=80,
            range=(-4, 4),
            density=True,
            color=f"C{row - 1}",
            alpha=0.6,
            label=f"{label} EM",
        )
        ax.plot(x, density[t], "k", lw=1.2, label="Fokker–Planck")
        ax.plot(x, exact_density(t), "r:", lw=1.2, label="closed form")
        ax.set_title(f"{label}, t = {t:.3g}", fontsize=9)
        ax.set_yticks([])
        if row == 1 and col == 0:
            ax.legend(fontsize=7, loc="upper left")
fig.tight_layout()
out = Path("outputs")  # under the working directory: the repo root in README's commands
out.mkdir(exist_ok=True)
fig.savefig(out / "plot_1d_mixture_fp.png", dpi=110)
