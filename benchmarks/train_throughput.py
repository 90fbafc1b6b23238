r"""Training throughput: sdekit's UNet against diffusers' ``UNet2DModel`` at a matched size.

Both networks are the same DDPM++ design (ResNet blocks with GroupNorm and a time-embedding FiLM,
stride-2 convolution down, nearest-neighbour + convolution up, self-attention at the same
resolutions and in the middle, 64-channel heads), built from the same widths, so the parameter
counts agree to within a few percent (printed). Each training step is identical for both: the
:math:`\varepsilon`-MSE of :class:`~sdekit.losses.DenoisingScoreMatching` on a VP SDE (uniform
:math:`t`, diffusers is fed the timestep :math:`1000\,t`), backward, AdamW. The two models alternate
round by round, so a busy machine slows both alike; the reported time is the median step.

    python benchmarks/train_throughput.py                      # quick, CPU
    python benchmarks/train_throughput.py --full               # more steps, a CIFAR-sized DDPM++
    python benchmarks/train_throughput.py --device cuda --bf16 --channels-last --full
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sdekit.linear import VPSDE
from sdekit.losses import DenoisingScoreMatching
from sdekit.networks import UNet

# name -> (UNet kwargs, batch)
CONFIGS = {
    "8x8x1": (
        dict(
            in_channels=1,
            image_size=8,
            base_channels=64,
            channel_mults=(1, 2),
            num_res_blocks=2,
            attn_resolutions=(4,),
        ),
        32,
    ),
    "32x32x3": (
        dict(
            in_channels=3,
            image_size=32,
            base_channels=64,
            channel_mults=(1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(16,),
        ),
        32,
    ),
}
FULL_CONFIGS = {
    "32x32x3-ddpm": (
        dict(
            in_channels=3,
            image_size=32,
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
        ),
        32,
    ),
}


def diffusers_unet(cfg: dict) -> torch.nn.Module:
    """diffusers' ``UNet2DModel`` with the widths, depth and attention placement of ``cfg``."""
    from diffusers import UNet2DModel

    res, down = cfg["image_size"], []
    for _ in cfg["channel_mults"]:
        down.append("AttnDownBlock2D" if res in cfg["attn_resolutions"] else "DownBlock2D")
        res //= 2
    up = [name.replace("Down", "Up") for name in reversed(down)]
    return UNet2DModel(
        sample_size=cfg["image_size"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["in_channels"],
        block_out_channels=tuple(cfg["base_channels"] * m for m in cfg["channel_mults"]),
        layers_per_block=cfg["num_res_blocks"],
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        attention_head_dim=64,
        resnet_time_scale_shift="scale_shift",
        dropout=0.1,
    )


class DiffusersEps(torch.nn.Module):
    """``model(x, t) = unet(x, 1000 t).sample``: the same call as sdekit's networks."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, 1000 * t).sample


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_step(model, batch: int, cfg: dict, args):
    device = torch.device(args.device)
    loss_fn = DenoisingScoreMatching(VPSDE(), "eps")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x0 = torch.randn(shape, device=device).to(memory_format=fmt)
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(model, x0, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_steps(step, n: int, device: str) -> list[tuple[float, float]]:
    """``(wall, process CPU)`` seconds per step; CPU time is robust to other jobs on a shared box."""
    times = []
    for _ in range(n):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return times


def run(name: str, cfg: dict, batch: int, args) -> str:
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {
        "sdekit": UNet(**cfg, dropout=0.1),
        "diffusers": DiffusersEps(diffusers_unet(cfg)),
    }
    steps, counts, times = {}, {}, {k: [] for k in models}
    for key, model in models.items():
        model.to(args.device, memory_format=fmt).train()
        counts[key] = n_params(model)
        steps[key] = make_step(model, batch, cfg, args)
        time_steps(steps[key], args.warmup, args.device)
    order = list(models)
    for _ in range(args.rounds):  # alternate so that load on a shared machine hits both alike
        for key in order:
            times[key] += time_steps(steps[key], args.steps, args.device)
        order.reverse()  # and neither always runs right after the other
    (ours, ours_cpu), (theirs, theirs_cpu) = (
        [statistics.median(column) for column in zip(*times[k], strict=True)]
        for k in ("sdekit", "diffusers")
    )
    return (
        f"| {name} | {batch} | {counts['sdekit'] / 1e6:.2f}M | {counts['diffusers'] / 1e6:.2f}M "
        f"| {1 / ours:.2f} | {1 / theirs:.2f} | {theirs / ours:.2f}x "
        f"| {theirs_cpu / ours_cpu:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--full", action="store_true", help="more steps and a CIFAR-sized DDPM++")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.warmup, args.rounds, args.steps = (3, 6, 4) if args.full else (2, 6, 1)
    configs = {**CONFIGS, **FULL_CONFIGS} if args.full else CONFIGS
    flags = " ".join(
        f for f, on in [("bf16", args.bf16), ("channels_last", args.channels_last)] if on
    )
    print(
        f"device {args.device} {flags}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; AdamW, eps-MSE, median step\n"
    )
    print(
        "| config | batch | params sdekit | params diffusers | sdekit steps/s "
        "| diffusers steps/s | speed-up | CPU-time speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (cfg, batch) in configs.items():
        print(run(name, cfg, batch, args), flush=True)


if __name__ == "__main__":
    main()
