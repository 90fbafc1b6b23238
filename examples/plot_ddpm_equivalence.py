r"""
DDPM is the discretized VP SDE
==============================

The VP SDE :math:`\mathrm{d}x = -\tfrac12\beta(t)x\,\mathrm{d}t + \sqrt{\beta(t)}\,\mathrm{d}w` is
the continuous limit of DDPM's chain :math:`x_i = \sqrt{1-\beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z`
(Song et al. 2021, App. B). Top: :math:`\beta(t)` against :math:`N\beta_i` for the linear schedule
(Ho et al. 2020) and the cosine schedule (Nichol & Dhariwal 2021); bottom: the signal level
:math:`\bar\alpha(t) = e^{-B(t)}` against :math:`\bar\alpha_i = \prod_{j\le i}(1-\beta_j)`. With
:math:`N = 1000` the two coincide. With :math:`N = 20` the linear chain's :math:`\bar\alpha_i` falls
below the SDE's by :math:`O(1/N)`; the cosine betas are defined from :math:`\bar\alpha`, so there
:math:`\bar\alpha_i` matches at every step and it is :math:`N\beta_i = N(1 - e^{-\int\beta})`
that falls below :math:`\beta(t)` where the steps are large.

Then a numeric check: the ancestral sampler of the discretized reverse SDE (Song et al. 2021,
eq. 47) and DDPM's update (Ho et al. 2020, Alg. 2), fed the same noise and the same exact score of
a Gaussian mixture (as a noise prediction,
:math:`\varepsilon = -\sqrt{1-\bar\alpha_i}\,\nabla\log q_i`), produce the same trajectory up to
rounding, and its end samples the data.
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import sdekit
from sdekit.metrics import w1_to_mixture

parser = argparse.ArgumentParser(description="DDPM is the discretized VP SDE")
parser.add_argument("--full", action="store_true", help="more samples in the sampling check")
parser.add_argument("--device", default="cpu", help="torch device for the sampling, e.g. cuda")
args = parser.parse_args()

n = 100_000 if args.full else 10_000
device = torch.device(args.device)
schedules = {"linear": sdekit.VPSDE(), "cosine": sdekit.VPSDE.cosine()}

# %%
# Continuous against discrete schedules. The linear schedule's level :math:`i` (0-based) sits at
# :math:`t_i = iT/(N-1)`; improved DDPM's cosine level :math:`i` at :math:`t_i = (i+1)/N`.


def level_times(name: str, N: int, T: float) -> torch.Tensor:
    if name == "linear":
        return torch.linspace(0, T, N, dtype=torch.float64)
    return torch.arange(1, N + 1, dtype=torch.float64) / N


fig, axes = plt.subplots(2, 2, figsize=(10, 7))
for col, (name, sde) in enumerate(schedules.items()):
    t = torch.linspace(0, sde.T, 500, dtype=torch.float64)
    axes[0, col].plot(t, sde.schedule.beta(t), "k", lw=1.5, label=r"$\beta(t)$")
    axes[1, col].plot(
        t, torch.exp(-sde.schedule.integral(t)), "k", lw=1.5, label=r"$\bar\alpha(t)$"
    )
    for N, style in [(1000, "C0-"), (20, "C1o")]:
        betas = sdekit.DDPMSchedule.from_sde(sde, N)
        t_i = level_times(name, N, sde.T)
        axes[0, col].plot(t_i, N * betas.betas, style, ms=4, lw=1, label=rf"$N\beta_i$, N={N}")
        axes[1, col].plot(t_i, betas.alpha_bars, style, ms=4, lw=1, label=rf"$\bar\alpha_i$, N={N}")
        inside = t_i <= sde.T
        gap = (betas.alpha_bars[inside] - torch.exp(-sde.schedule.integral(t_i[inside]))).abs()
        print(f"{name:6s} N={N:4d}: max |alpha_bar_i - alpha_bar(t_i)| = {float(gap.max()):.2e}")
    axes[0, col].set(title=f"{name} schedule", ylabel=r"$\beta$", xlabel="t")
    axes[0, col].set_yscale("log")
    axes[1, col].set(ylabel=r"$\bar\alpha$", xlabel="t")
    axes[0, col].legend(fontsize=8)
    axes[1, col].legend(fontsize=8)
fig.tight_layout()
out = Path("outputs")  # under the working directory: the repo root in README's commands
out.mkdir(exist_ok=True)
fig.savefig(out / "plot_ddpm_equivalence.png", dpi=110)

# %%
# The two sampling updates on a 1D mixture, in float64. Level :math:`i`'s marginal is
# :math:`q_i = \mathcal N(\sqrt{\bar\alpha_i}\,x_0, 1 - \bar\alpha_i)`, which is the VP marginal at
# the time :math:`t` with :math:`\alpha(t)^2 = \bar\alpha_i`, found through the inverse log-SNR. The
# discrete chain ends slightly noisier than :math:`B(1)`, so the oracle's horizon is a bit longer.

target = sdekit.GaussianMixture([0.4, 0.6], [-1.0, 1.5], [0.3, 0.2])
N = 1000
schedule = sdekit.DDPMSchedule.from_sde(schedules["linear"], N)
oracle = sdekit.VPSDE(T=1.1)
alpha_bars = schedule.alpha_bars.to(device)
level_t = oracle.log_snr_inverse(torch.log(alpha_bars) - torch.log1p(-alpha_bars))

generator = torch.Generator(device).manual_seed(0)
x_a = torch.randn(n, 1, generator=generator, device=device, dtype=torch.float64)
x_b = x_a.clone()
gap = torch.zeros((), dtype=torch.float64, device=device)
for i in reversed(range(N)):
    level = torch.full((n,), i, device=device)
    z = torch.randn(n, 1, generator=generator, device=device, dtype=torch.float64)
    score_a = target.score(x_a, level_t[level], oracle)
    eps_b = -torch.sqrt(1 - alpha_bars[i]) * target.score(x_b, level_t[level], oracle)
    x_a = sdekit.ddpm_ancestral_step(schedule, x_a, score_a, level, z)
    x_b = sdekit.ddpm_step(schedule, x_b, eps_b, level, z)
    gap = torch.maximum(gap, (x_a - x_b).abs().max())
print(f"ancestral step vs DDPM update over {N} steps: max |x_a - x_b| = {float(gap):.2e}")

# the Monte-Carlo floor wobbles from seed to seed: average it
floor = (
    sum(
        w1_to_mixture(target.sample(n, generator=torch.Generator().manual_seed(seed)), target)
        for seed in range(1, 4)
    )
    / 3
)
print(f"W1 of DDPM samples to the data: {w1_to_mixture(x_a, target):.4f} (floor {floor:.4f})")
