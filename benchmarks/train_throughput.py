r"""Training throughput: sdekit's UNet against diffusers' ``UNet2DModel`` at a matched size.

Both networks are the same DDPM++ design (ResNet blocks with GroupNorm and a time-embedding FiLM,
stride-2 convolution down, nearest-neighbour + convolution up, self-attention at the same
resolutions and in the middle, 64-channel heads), built from the same widths, so the parameter
counts agree to within a few percent (printed). Each training step is identical for both: the
:math:`\varepsilon`-MSE of :class:`~sdekit.losses.DenoisingScoreMatching` on a VP SDE (uniform
:math:`t`, diffusers is fed the timestep :math:`1000\,t`), backward, AdamW. The two models alternate
round by round, so a busy machine slows both alike; the reported time is the fastest step (the one
least disturbed by other jobs), in process CPU time on a CPU (other jobs on a shared machine do not
count in it) and wall time on a GPU. A second table times the AdamW update alone over each
network's parameters: the default implementation against the fused one.

Configurations: ``digits`` (the UNet of ``examples/train_digits.py``: 8x8x1, 32 channels, batch
128), ``4M`` (32x32x3, 64 channels, mults 1-2-2), ``38M`` (32x32x3, 128 channels, mults 1-2-2-2, two
blocks per level: the DDPM++ CIFAR-10 size). Variants, each applied to both networks alike:

- ``eager``: contiguous tensors, ``torch.optim.AdamW`` with its default implementation;
- ``channels_last``: the network and the batch in channels_last memory format;
- ``fused``: ``AdamW(fused=True)`` (one kernel for the whole parameter set; torch supports it on
  CPU and CUDA);
- ``fast``: both;
- ``compile`` (with ``--compile``): ``fast`` plus ``torch.compile`` of the network;
- ``bf16`` (with ``--bf16``): ``fast`` under bfloat16 autocast.

``--variants`` picks any of them (default ``eager fast``, plus ``compile`` and ``bf16`` with their
flags).

    python benchmarks/train_throughput.py                 # digits and 4M, CPU (and CUDA if present)
    python benchmarks/train_throughput.py --full          # 38M too, more steps
    python benchmarks/train_throughput.py --device cuda --full --bf16 --compile
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

from sdekit.linear import VPSDE
from sdekit.losses import DenoisingScoreMatching
from sdekit.networks import UNet

sys.path.insert(0, str(Path(__file__).parent))
from devices import devices  # noqa: E402

# name -> (UNet kwargs, CPU batch, GPU batch)
CONFIGS = {
    "digits": (
        dict(
            in_channels=1,
            image_size=8,
            base_channels=32,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
        ),
        128,
        128,
    ),
    "4M": (
        dict(
            in_channels=3,
            image_size=32,
            base_channels=64,
            channel_mults=(1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(16,),
        ),
        32,
        128,
    ),
}
FULL_CONFIGS = {
    # batch 8 on a CPU: a step of batch 32 takes tens of seconds on one core
    "38M": (
        dict(
            in_channels=3,
            image_size=32,
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
        ),
        8,
        128,
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


VARIANTS = ("eager", "channels_last", "fused", "fast", "compile", "bf16")


def make_step(model, batch: int, cfg: dict, device: torch.device, variant: str):
    channels_last = variant not in ("eager", "fused")
    fused = variant not in ("eager", "channels_last")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    net = torch.compile(model) if variant == "compile" else model
    loss_fn = DenoisingScoreMatching(VPSDE(), "eps")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if fused else None)
    shape = (batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    x0 = torch.randn(shape, device=device).to(memory_format=fmt)
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16"):
            loss = loss_fn(net, x0, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_steps(step, n: int, device: torch.device) -> list[float]:
    """Seconds per step: process CPU time on a CPU, wall time (synchronised) on a GPU."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(clock() - start)
    return times


def run(name: str, cfg: dict, batch: int, device: torch.device, variant: str, args) -> dict:
    """Median seconds per step of both networks under ``variant``, alternating round by round."""
    torch.manual_seed(0)
    models = {"sdekit": UNet(**cfg, dropout=0.1)}
    if args.diffusers:
        models["diffusers"] = DiffusersEps(diffusers_unet(cfg))
    counts = {key: n_params(model) for key, model in models.items()}
    steps = {key: make_step(m, batch, cfg, device, variant) for key, m in models.items()}
    warmup = args.warmup + (2 if variant == "compile" else 0)  # compile on the first calls
    for step in steps.values():
        time_steps(step, warmup, device)
    times = {key: [] for key in models}
    order = list(models)
    for _ in range(args.rounds):  # alternate so that load on a shared machine hits both alike
        for key in order:
            times[key] += time_steps(steps[key], args.steps, device)
        order.reverse()  # and neither always runs right after the other
    return {key: (min(times[key]), counts[key]) for key in models}


def optimizer_times(cfg: dict, device: torch.device, repeats: int) -> dict:
    """``{implementation: fastest AdamW step (s)}`` over sdekit's UNet's parameters, alone."""
    params = [p.detach().to(device).requires_grad_() for p in UNet(**cfg).parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, options in (
        ("default", {}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        opt = torch.optim.AdamW(params, lr=1e-4, **options)
        opt.step()  # the state is created at the first step
        out[name] = min(time_steps(opt.step, repeats, device))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", default="auto", help="auto (CPU, and CUDA if present), cpu, cuda"
    )
    parser.add_argument("--full", action="store_true", help="the 38M configuration, more steps")
    parser.add_argument("--configs", nargs="+", help="only these configurations")
    parser.add_argument("--bf16", action="store_true", help="add the bfloat16-autocast variant")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="the variants to run")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.warmup, args.rounds, args.steps = (2, 4, 3) if args.full else (2, 4, 2)
    configs = {**CONFIGS, **FULL_CONFIGS} if args.full else dict(CONFIGS)
    if args.configs:
        configs = {name: configs[name] for name in args.configs}
    variants = (
        args.variants or ["eager", "fast"] + ["compile"] * args.compile + ["bf16"] * args.bf16
    )
    targets = devices(args.device)
    args.diffusers = importlib.util.find_spec("diffusers") is not None
    if not args.diffusers:
        print("diffusers is not installed: its columns are left empty\n")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); eps-MSE + AdamW, "
        "fastest step (CPU: process time; GPU: wall)\n"
    )
    print(
        "| device | config | batch | params sdekit | params diffusers | variant | sdekit steps/s "
        "| diffusers steps/s | sdekit/diffusers | sdekit vs its eager |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for device in targets:
        for name, (cfg, cpu_batch, gpu_batch) in configs.items():
            batch = gpu_batch if device.type == "cuda" else cpu_batch
            eager = None
            for variant in variants:
                result = run(name, cfg, batch, device, variant, args)
                ours, n_ours = result["sdekit"]
                eager = ours if variant == "eager" else eager
                peer = ["", "", ""]
                if "diffusers" in result:
                    theirs, n_theirs = result["diffusers"]
                    peer = [f"{n_theirs / 1e6:.2f}M", f"{1 / theirs:.2f}", f"{theirs / ours:.2f}x"]
                print(
                    f"| {device.type} | {name} | {batch} | {n_ours / 1e6:.2f}M | {peer[0]} "
                    f"| {variant} | {1 / ours:.2f} | {peer[1]} | {peer[2]} "
                    f"| {f'{eager / ours:.2f}x' if eager else ''} |",
                    flush=True,
                )
    print("\nAdamW update alone over sdekit's UNet's parameters (ms, fastest of 10):\n")
    print("| device | config | params | default | foreach | fused | default/fused |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for device in targets:
        for name, (cfg, _, _) in configs.items():
            ms = {k: v * 1e3 for k, v in optimizer_times(cfg, device, 10).items()}
            size = sum(p.numel() for p in UNet(**cfg).parameters()) / 1e6
            print(
                f"| {device.type} | {name} | {size:.2f}M | {ms['default']:.2f} | {ms['foreach']:.2f} "
                f"| {ms['fused']:.2f} | {ms['default'] / ms['fused']:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
