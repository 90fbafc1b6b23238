r"""Sampling throughput: samples/s and the per-step overhead beyond the network, vs k-diffusion.

A small MLP (2 -> 256 -> 256 -> 2 with a time embedding, :class:`sdekit.networks.MLP`, random
weights: speed does not depend on training) predicts :math:`\varepsilon` for the VP SDE. Each
sampler
runs the same number of steps on the same batch; the *network time* is the same number of model
calls on the same inputs alone, so

.. math:: \text{overhead per step} = \frac{t_{\text{sampler}} - t_{\text{network}}}{\text{steps}}

is what the sampler's own arithmetic (schedule, update, parameterization) costs. k-diffusion's
``sample_euler`` and ``sample_dpmpp_2m`` run on the same model behind the usual VP-to-sigma wrapper
(``peers.k_denoiser``); its Euler is the probability-flow ODE's Euler step, so sdekit's ``euler``
(Karras et al. 2022, Alg. 1 without churn) is its like-for-like row and ``euler_maruyama`` (the
reverse SDE) is shown beside it.

    python benchmarks/throughput.py                   # CPU, quick
    python benchmarks/throughput.py --full            # more batch sizes and repeats
    python benchmarks/throughput.py --device cuda     # adds sample(compile=True)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import sdekit
from sdekit.networks import MLP
from sdekit.parameterization import score_fn
from sdekit.sampling import sample

sys.path.insert(0, str(Path(__file__).parent))
import peers as peer_lib  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_times(fns: dict, device: torch.device, repeats: int) -> dict:
    """The fastest of ``repeats`` runs of each function, after a warm-up.

    The functions take turns within each round, so a burst of load elsewhere on the machine hits
    them alike; the minimum is the run least disturbed by it.
    """
    for fn in fns.values():
        fn()
    times = {key: float("inf") for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key] = min(times[key], time.perf_counter() - start)
    return times


def runners(model, sde, k, x_T: torch.Tensor, steps: int, device: torch.device) -> dict:
    """``{(library, method): run()}``, plus ``("network", "alone")``: the same model calls alone."""
    batch = x_T.shape[0]
    ts = torch.linspace(sde.T, sde.t_min, steps, device=device)

    def network():
        for i in range(steps):
            model(x_T, ts[i].expand(batch))

    def sdekit_run(method, compile=False):
        return lambda: sample(
            model,
            sde,
            x_T,
            method=method,
            steps=steps,
            prediction="eps",
            denoise_final=False,
            compile=compile,
        )

    runs = {("network", "alone"): network}
    for method in ("euler", "euler_maruyama", "dpmpp_2m"):
        runs["sdekit", method] = sdekit_run(method)
    if device.type == "cuda":
        runs["sdekit", "dpmpp_2m compile"] = sdekit_run("dpmpp_2m", compile=True)
    if k is not None:
        lo, hi = peer_lib.k_sigma_range(sde)
        denoiser = peer_lib.k_denoiser(score_fn(model, sde, "eps"), sde)
        # `steps` + 1 sigmas without the final 0 that get_sigmas_karras appends: the same `steps`
        # model calls as sdekit.
        sigmas = k.get_sigmas_karras(steps + 1, lo, hi, device=device)[:-1]
        x_k = x_T * (1 + hi**2) ** 0.5
        for method, fn in (("euler", k.sample_euler), ("dpmpp_2m", k.sample_dpmpp_2m)):
            runs["k-diffusion", method] = lambda fn=fn: fn(denoiser, x_k, sigmas, disable=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more batch sizes and repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    batches = args.batch or ([256, 4096, 65536] if args.full else [1024])
    repeats = 50 if args.full else 30

    torch.manual_seed(0)
    model = MLP(dim=2, hidden=256, depth=2).to(device).eval()
    sde = sdekit.VPSDE()
    k = peer_lib.load_k_diffusion_sampling()
    if k is None:
        print("k-diffusion is not installed: its rows are left out")

    rows = []
    with torch.inference_mode():
        for batch in batches:
            x_T = torch.randn(batch, 2, device=device)
            times = best_times(runners(model, sde, k, x_T, args.steps, device), device, repeats)
            t_net = times.pop(("network", "alone"))
            rows += [
                (batch, lib, method, elapsed, t_net) for (lib, method), elapsed in times.items()
            ]

    print(
        f"{args.steps} steps, MLP 2-256-256-2 (eps), {args.device}, "
        f"{torch.get_num_threads()} thread(s), best of {repeats} runs; "
        f"network alone = {args.steps} model calls on the same inputs\n"
    )
    print("| batch | library | method | samples/s | overhead/step (ms) | time vs k-diffusion |")
    print("|---:|---|---|---:|---:|---:|")
    reference = {(b, m): e for b, lib, m, e, _ in rows if lib == "k-diffusion"}
    for batch, library, method, elapsed, t_net in rows:
        overhead = (elapsed - t_net) / args.steps * 1e3
        base = method.split()[0].replace("euler_maruyama", "euler")
        ratio = elapsed / reference[batch, base] if (batch, base) in reference else float("nan")
        print(
            f"| {batch} | {library} | {method} | {batch / elapsed:,.0f} | {overhead:.3f} "
            f"| {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
