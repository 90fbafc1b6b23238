r"""
A diffusers model in sdekit, step for step
==========================================

A diffusers ``UNet2DModel`` is trained on the timesteps :math:`\tau = 0..N-1` of its scheduler's
``alphas_cumprod`` :math:`\bar\alpha_\tau`. :class:`~sdekit.discrete.DiscreteVPSDE` is the VP SDE
whose marginal at :math:`t = (\tau+1)/N` is exactly that one, and
:class:`~sdekit.interop.DiffusersModel` calls the UNet at :math:`\tau = Nt - 1`; the continuous
:class:`~sdekit.VPSDE` is *not* that schedule (left: its :math:`\alpha(t)^2` drifts from DDPM's
:math:`\bar\alpha_\tau` by up to 7% at the noisy end).

Right: sdekit's ``ddim`` and ``dpmpp_2m`` against diffusers' own ``DDIMScheduler`` and
``DPMSolverMultistepScheduler`` loops on the same (randomly initialised, small) UNet from the same
noise, with the settings of :func:`~sdekit.interop.options_matching_scheduler`: at every step the
two states differ by float32 rounding (diffusers keeps its schedule, and DPM-Solver its state, in
float32), many orders of magnitude below the size of a step.
"""

import argparse
import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import sdekit
from sdekit.discrete import DiscreteVPSDE
from sdekit.interop import DiffusersModel, options_matching_scheduler

parser = argparse.ArgumentParser(description="A diffusers model in sdekit, step for step")
parser.add_argument("--full", action="store_true", help="more steps and a larger batch")
args = parser.parse_args()
steps, batch = (50, 16) if args.full else (10, 4)

# %%
# The schedule: DDPM's 1000 linear betas as diffusers computes them, and the continuous VP SDE.
tau = torch.arange(1000)
ddpm = DiscreteVPSDE.linear()
t = ddpm.time(tau)
vp = sdekit.VPSDE()
print(
    f"alpha_bar at timestep 999: discrete {float(ddpm.alpha(t[-1:]) ** 2):.4e}, "
    f"continuous VP {float(vp.alpha(t[-1:]) ** 2):.4e}"
)
fig, (ax_schedule, ax_steps) = plt.subplots(1, 2, figsize=(10, 3.8))
ax_schedule.plot(tau, (vp.alpha(t) ** 2 / ddpm.alphas_cumprod - 1).abs(), label="continuous VPSDE")
ax_schedule.plot(
    tau,
    (ddpm.alpha(t) ** 2 / ddpm.alphas_cumprod - 1).abs().clamp(min=1e-17),
    label="DiscreteVPSDE",
)
ax_schedule.set(
    yscale="log",
    xlabel="timestep",
    ylabel=r"$|\alpha(t_\tau)^2 / \bar\alpha_\tau - 1|$",
    title="the marginal at the timesteps",
)
ax_schedule.legend()

# %%
# The samplers, if diffusers is installed (``pip install sdekit[interop]``).
if importlib.util.find_spec("diffusers") is None:
    print("diffusers is not installed: the sampler comparison is left out")
else:
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()
    unet.double()
    x_T = torch.randn(
        batch, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    schedulers = {
        "DDIM": diffusers.DDIMScheduler(clip_sample=False),
        "DPM-Solver++(2M)": diffusers.DPMSolverMultistepScheduler(),
    }
    for name, scheduler in schedulers.items():
        scheduler.set_timesteps(steps)
        theirs, x = [], x_T
        with torch.no_grad():
            for timestep in scheduler.timesteps:
                x = scheduler.step(unet(x, timestep).sample, timestep, x).prev_sample
                theirs.append(x)
        model = DiffusersModel.from_scheduler(unet, scheduler)
        options = options_matching_scheduler(scheduler)
        with torch.no_grad():
            out, info = sdekit.sample(
                model,
                model.sde,
                x_T,
                prediction=model.prediction,
                return_trajectory=True,
                **options,
            )
        # sdekit's states at its grid times, then its final denoising step to x0
        ours = [*info.trajectory[1:], out]
        scale = theirs[-1].abs().max()
        gap = [float((a - b).abs().max() / scale) for a, b in zip(ours, theirs, strict=True)]
        move = [
            float((b - a).abs().max() / scale)
            for a, b in zip([x_T, *theirs[:-1]], theirs, strict=True)
        ]
        print(f"{name}: {info.nfe} model calls, max relative difference {max(gap):.1e}")
        (line,) = ax_steps.plot(range(1, steps + 1), gap, "o-", label=f"{name}: sdekit - diffusers")
        ax_steps.plot(
            range(1, steps + 1), move, ":", color=line.get_color(), label=f"{name}: a step"
        )
    ax_steps.set(
        yscale="log",
        xlabel="step",
        ylabel="max |difference| / max |x|",
        title="sdekit against diffusers, same UNet and noise",
    )
    ax_steps.legend(fontsize=7)
fig.tight_layout()
Path("outputs").mkdir(exist_ok=True)
fig.savefig("outputs/plot_diffusers_interop.png", dpi=90)
