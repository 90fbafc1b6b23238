r"""Sampling throughput: samples/s and the per-step overhead beyond the network, vs k-diffusion.

A small MLP (2 -> 256 -> 256 -> 2 with a time embedding, :class:`sdekit.networks.MLP`, random
weights: speed does not depend on training) predicts :math:`\varepsilon` for the VP SDE. Each
sampler runs on the same batch; the *network time* per call is that of the same model calls on the
same inputs alone, so

.. math:: \text{overhead per evaluation} = \frac{t_{\text{sampler}}
          - \text{NFE}\cdot t_{\text{network call}}}{\text{NFE}}

is what the sampler's own arithmetic (schedule, update, parameterization, step control) costs per
model evaluation (per step for the one-evaluation methods). On a CPU the times are the process's
CPU time, which the other jobs of a shared machine do not inflate the way they inflate the wall
clock; on a GPU the wall clock with a synchronisation around each run. Peers, on the same model behind the
usual VP-to-sigma wrapper (``peers.k_denoiser``):

- ``euler`` (Karras et al. 2022, Alg. 1 without churn, the probability-flow ODE's Euler step) and
  ``dpmpp_2m`` against k-diffusion's ``sample_euler`` and ``sample_dpmpp_2m`` on ``steps + 1``
  Karras sigmas without the final 0: the same ``steps`` model calls;
- ``euler_maruyama`` (the reverse SDE) against ``sample_euler_ancestral``, k-diffusion's one-call
  stochastic step;
- ``ode`` (the adaptive probability-flow ODE, torchdiffeq's dopri5 at ``--tol``) against
  ``sample_dpm_adaptive`` at the same tolerance: different algorithms with different NFE, so the
  overhead per evaluation is the comparable figure.

    python benchmarks/throughput.py                   # CPU (and CUDA beside it when present)
    python benchmarks/throughput.py --full            # more repeats, batch 16384 too
    python benchmarks/throughput.py --device cuda     # the GPU only; adds sample(compile=True)
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
from devices import devices, sync  # noqa: E402

#: sdekit method -> the k-diffusion sampler it is compared with
PEER_OF = {
    "euler": "euler",
    "euler_maruyama": "euler_ancestral",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m compile": "dpmpp_2m",
    "ode": "dpm_adaptive",
}


class Counted(torch.nn.Module):
    """The model with a call counter, so every row's NFE is counted the same way."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x, t)


def clock(device: torch.device):
    """The process's CPU time on a CPU (a shared machine's other jobs do not count in it), the wall
    clock on a GPU (whose work is not the process's CPU time)."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def best_times(fns: dict, model: Counted, device: torch.device, repeats: int) -> dict:
    """``{key: (fastest of repeats s, model calls)}``, after a warm-up.

    The functions take turns within each round, so a burst of load elsewhere on the machine hits
    them alike; the minimum is the run least disturbed by it.
    """
    now = clock(device)
    calls = {}
    for key, fn in fns.items():
        model.calls = 0
        fn()
        calls[key] = model.calls
    times = {key: float("inf") for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            sync(device)
            start = now()
            fn()
            sync(device)
            times[key] = min(times[key], now() - start)
    return {key: (times[key], calls[key]) for key in fns}


def runners(model, sde, k, x_T: torch.Tensor, args, device: torch.device) -> dict:
    """``{(library, method): run()}``, plus ``("network", "alone")``: the same model calls alone."""
    batch, steps = x_T.shape[0], args.steps
    ts = torch.linspace(sde.T, sde.t_min, steps, device=device)

    def network():
        for i in range(steps):
            model(x_T, ts[i].expand(batch))

    def sdekit_run(method, compile=False, **options):
        return lambda: sample(
            model,
            sde,
            x_T,
            method=method,
            steps=steps,
            prediction="eps",
            denoise_final=False,
            compile=compile,
            **options,
        )

    runs = {("network", "alone"): network}
    for method in ("euler", "euler_maruyama", "dpmpp_2m"):
        runs["sdekit", method] = sdekit_run(method)
    if device.type == "cuda":
        runs["sdekit", "dpmpp_2m compile"] = sdekit_run("dpmpp_2m", compile=True)
    runs["sdekit", "ode"] = sdekit_run("ode", rtol=args.tol, atol=args.tol)
    if k is not None:
        lo, hi = peer_lib.k_sigma_range(sde)
        denoiser = peer_lib.k_denoiser(score_fn(model, sde, "eps"), sde)
        # `steps` + 1 sigmas without the final 0 that get_sigmas_karras appends: the same `steps`
        # model calls as sdekit.
        sigmas = k.get_sigmas_karras(steps + 1, lo, hi, device=device)[:-1]
        x_k = x_T * (1 + hi**2) ** 0.5
        for name in ("euler", "euler_ancestral", "dpmpp_2m"):
            fn = getattr(k, f"sample_{name}")
            runs["k-diffusion", name] = lambda fn=fn: fn(denoiser, x_k, sigmas, disable=True)
        runs["k-diffusion", "dpm_adaptive"] = lambda: k.sample_dpm_adaptive(
            denoiser, x_k, lo, hi, rtol=args.tol, atol=args.tol, disable=True
        )
    return runs


def bench(device: torch.device, args, k) -> list[tuple]:
    torch.manual_seed(0)
    model = Counted(MLP(dim=2, hidden=256, depth=2).to(device).eval())
    sde = sdekit.VPSDE()
    rows = []
    with torch.inference_mode():
        for batch in args.batch:
            x_T = torch.randn(batch, 2, device=device)
            times = best_times(
                runners(model, sde, k, x_T, args, device), model, device, args.repeats
            )
            t_net, net_calls = times.pop(("network", "alone"))
            per_call = t_net / net_calls
            for (library, method), (elapsed, nfe) in times.items():
                overhead = (elapsed - nfe * per_call) / nfe
                rows.append((device.type, batch, library, method, elapsed, nfe, overhead))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more repeats, batch 16384 too")
    parser.add_argument(
        "--device", default="auto", help="auto (CPU, and CUDA if present), cpu, cuda"
    )
    parser.add_argument("--steps", type=int, default=20, help="fixed-grid steps (default 20)")
    parser.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of the adaptive ODEs")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 1 64 1024)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.batch = args.batch or ([1, 64, 1024, 16384] if args.full else [1, 64, 1024])
    args.repeats = 50 if args.full else 20
    k = peer_lib.load_k_diffusion_sampling()
    if k is None:
        print("k-diffusion is not installed: its rows are left out")
    rows = [row for device in devices(args.device) for row in bench(device, args, k)]

    print(
        f"MLP 2-256-256-2 (eps), VP SDE; fixed-grid methods {args.steps} steps, adaptive ODEs "
        f"rtol = atol = {args.tol:g}; {torch.get_num_threads()} CPU thread(s), best of "
        f"{args.repeats} runs (process CPU time on the CPU, wall time on a GPU); overhead = "
        "(time - NFE x network call) / NFE\n"
    )
    print(
        "| device | batch | library | method | NFE | samples/s | overhead/eval (ms) "
        "| time vs k-diffusion | overhead vs k-diffusion |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    peer = {(d, b, m): (e, o) for d, b, lib, m, e, _, o in rows if lib == "k-diffusion"}
    for device, batch, library, method, elapsed, nfe, overhead in rows:
        ref = peer.get((device, batch, PEER_OF.get(method))) if library == "sdekit" else None
        same_work = ref is not None and method != "ode"  # the adaptive ODEs differ in NFE
        time_ratio = f"{elapsed / ref[0]:.2f}" if same_work else ""
        overhead_ratio = f"{overhead / ref[1]:.2f}" if ref is not None and ref[1] > 0 else ""
        print(
            f"| {device} | {batch} | {library} | {method} | {nfe} | {batch / elapsed:,.0f} "
            f"| {overhead * 1e3:.3f} | {time_ratio} | {overhead_ratio} |"
        )


if __name__ == "__main__":
    main()
