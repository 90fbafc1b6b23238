r"""
The terms of DDPM's variational bound
=====================================

DDPM's negative ELBO is a sum over the chain's levels (Ho et al. 2020, eq. 5): a prior term, one KL
divergence :math:`L_i = \mathrm{KL}(q(x_{i-1} \mid x_i, x_0)\,\Vert\,p_\theta(x_{i-1} \mid x_i))`
per level and a decoder term :math:`L_0 = -\log p_\theta(x_0 \mid x_1)`.
:func:`sdekit.elbo.ddpm_bound` returns each of them. This example computes them on 2D Gaussian
data, where the optimal denoiser is known exactly, for

- the exact denoiser with the two fixed reverse variances :math:`\beta_i` and
  :math:`\tilde\beta_i` and with the exact reverse variance
  :math:`\operatorname{Var}(x_{i-1} \mid x_i)` (which makes the reverse kernels exact: the bound is
  then the data's log-likelihood up to the prior's mismatch);
- a small :class:`~sdekit.networks.MLP` with a learned-variance output
  (:class:`~sdekit.elbo.LearnedVariance`), trained for a few seconds with the hybrid loss of
  improved DDPM (:class:`~sdekit.elbo.HybridLoss`, Nichol & Dhariwal 2021).

The left panel shows the terms against the level; the early, low-noise levels carry most of the
bound, and there a fixed :math:`\tilde\beta_i` pays dearly for data that are not a point mass. The
right panel shows the learned interpolation :math:`v` of
:math:`\Sigma_\theta = \exp(v\log\beta_i + (1 - v)\log\tilde\beta_i)` against the exact one: both lie
between 0 and 1, since for data narrower than :math:`\mathcal N(0, I)` the exact reverse variance
lies between :math:`\tilde\beta_i` and :math:`\beta_i`.

The default trains for about ten seconds on a CPU; ``--full`` trains longer on the 1000-level chain.
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import sdekit
from sdekit.elbo import HybridLoss, LearnedVariance, ddpm_bound, level_times
from sdekit.networks import MLP

parser = argparse.ArgumentParser(description="The terms of DDPM's variational bound")
parser.add_argument("--full", action="store_true", help="1000 levels, train longer")
parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
args = parser.parse_args()
device = torch.device(args.device)
N, steps = (1000, 6000) if args.full else (100, 700)
torch.manual_seed(0)

sde = sdekit.VPSDE()
schedule = sdekit.DDPMSchedule.from_sde(sde, N)
mu = torch.tensor([0.5, -0.3], dtype=torch.float64)
s = torch.tensor([0.3, 0.6], dtype=torch.float64)
data = sdekit.GaussianMixture([1.0], mu[None], s[None])

# %%
# The exact denoiser and the exact reverse variance
# -------------------------------------------------
# For Gaussian data the noise prediction is linear in :math:`x_t`,
# :math:`\hat\varepsilon = -\sigma\nabla\log p_t`, and the reverse kernel
# :math:`q(x_{i-1} \mid x_i)` is Gaussian with variance :math:`\beta_i v_{i-1}/v_i`, where
# :math:`v_i = \bar\alpha_i s^2 + 1 - \bar\alpha_i` is the marginal variance of level :math:`i`
# (:math:`v_{-1} = s^2`). Its :math:`v` in eq. 15 of Nichol & Dhariwal is the oracle's.


def exact_eps(x, t):
    return -sde.sigma(t)[:, None] * data.score(x, t, sde)


ab = schedule.alpha_bars
betas = schedule.betas
marginal = ab[:, None] * s**2 + (1 - ab[:, None])
exact_var = betas[:, None] * torch.cat([s[None] ** 2, marginal[:-1]]) / marginal
bt = betas * torch.cat([torch.zeros(1, dtype=torch.float64), 1 - ab[:-1]]) / (1 - ab)
log_bt = torch.log(torch.cat([bt[1:2], bt[1:]]))[:, None]  # beta_tilde_0 = 0: level 1's at 0
v_exact = (torch.log(exact_var) - log_bt) / (torch.log(betas)[:, None] - log_bt)
times = level_times(schedule, sde)


class ExactWithVariance(torch.nn.Module):
    """The exact noise prediction next to the exact v of each level."""

    def forward(self, x, t):
        level = (t[:, None] - times[None]).abs().argmin(1)
        return torch.cat([exact_eps(x, t), v_exact[level]], 1)


oracle = LearnedVariance(ExactWithVariance(), schedule, sde)

# %%
# A briefly trained model with a learned variance
# -----------------------------------------------
# The MLP outputs four numbers, :math:`\hat\varepsilon` and :math:`v`, and is trained by
# :math:`L_\text{simple} + \lambda L_\text{vlb}` with :math:`\lambda = 0.001`; the bound's term
# reaches only :math:`v` (the stop-gradient on the mean).

net = LearnedVariance(MLP(2, 128, 3, out_dim=4), schedule, sde).to(device)
loss_fn = HybridLoss(sde, schedule)
opt = torch.optim.Adam(net.parameters(), lr=2e-3)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
g = torch.Generator().manual_seed(1)
for _ in range(steps):
    x0 = data.sample(512, generator=g, dtype=torch.float32).to(device)
    loss = loss_fn(net, x0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
net.eval()

# %%
# The bound, term by term
# -----------------------
# Exact sums over all levels on the same 2000 data points. Without ``levels`` the data are
# continuous and the decoder is a Gaussian density, so these are bounds on :math:`-\log p(x_0)`
# in nats (pass ``levels=256`` with integer pixels for the discretized decoder of 8-bit images).

x = data.sample(2000, generator=torch.Generator().manual_seed(2))
entropy = float(-data.log_prob(x).mean())
rows = {
    "exact denoiser, beta": (exact_eps, "beta", x),
    "exact denoiser, beta_tilde": (exact_eps, "beta_tilde", x),
    "exact denoiser, exact variance": (oracle, "learned", x),
    "trained MLP, beta_tilde": (net, "beta_tilde", x.float().to(device)),
    "trained MLP, learned variance": (net, "learned", x.float().to(device)),
}
bounds = {}
with torch.no_grad():
    for name, (model, variance, points) in rows.items():
        g = torch.Generator(points.device).manual_seed(3)
        b = ddpm_bound(model, sde, points, schedule, variance=variance, generator=g)
        bounds[name] = b
        print(
            f"{name:32s} -ELBO {float(b.total.mean()):7.3f} nats  (prior {float(b.prior.mean()):.1e})"
        )
    # the learned v of every level, averaged over draws of x_i from the same points
    t_all = times.float().to(device).repeat_interleave(len(x))
    noise = torch.randn(N * len(x), 2, generator=torch.Generator().manual_seed(4)).to(device)
    x_t = sde.perturb(x.float().to(device).repeat(N, 1), t_all, noise)
    _, v_net = net.with_variance(x_t, t_all)
print(f"{'data entropy -E log q(x0)':32s}       {entropy:7.3f} nats")
v_net = v_net.view(N, len(x), 2).mean(1).cpu()

# %%
# The left panel shows the KL terms against the time :math:`t_i` of their level (the decoder's
# :math:`L_0` and the prior term are in the printed totals). The right panel shows the reverse
# variance relative to :math:`\beta_i`: the exact one and the learned one lie between
# :math:`\tilde\beta_i/\beta_i` and 1; where the two bounds meet (high noise) the variance no
# longer matters to the bound, and nothing trains it there.

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
t = times[1:]
for name, b in bounds.items():
    style = "--" if name.startswith("trained") else "-"
    label = f"{name} ({float(b.total.mean()):.2f})"
    ax0.loglog(t, b.kl.mean(0).cpu(), style, label=label)
ax0.set_xlabel("time t of the level")
ax0.set_ylabel("mean KL term L_i (nats)")
ax0.set_title("terms of the bound (total -ELBO in brackets)")
ax0.legend(fontsize=7)
log_b = torch.log(betas)[1:, None]
learned = torch.exp(v_net[1:] * log_b + (1 - v_net[1:]) * log_bt[1:]) / betas[1:, None]
for d, color in ((0, "C0"), (1, "C1")):
    ax1.semilogx(
        t, exact_var[1:, d] / betas[1:], color=color, label=f"exact, dim {d} (s = {float(s[d])})"
    )
    ax1.semilogx(t, learned[:, d], "--", color=color, label=f"learned, dim {d}")
ax1.semilogx(t, bt[1:] / betas[1:], color="0.5", lw=0.8, label="beta_tilde / beta")
ax1.axhline(1, color="0.5", lw=0.8)
ax1.set_xlabel("time t of the level")
ax1.set_ylabel("reverse variance / beta")
ax1.set_title("the variance of eq. 15, between beta_tilde and beta")
ax1.legend(fontsize=7)
Path("outputs").mkdir(exist_ok=True)
fig.savefig("outputs/plot_elbo_terms.png", dpi=100)
