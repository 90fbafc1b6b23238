"""Exact log-likelihood on a 2D Gaussian-mixture oracle: sdekit's solvers against a scipy round trip.

All integrate the same probability-flow ODE with the same exact divergence (autograd, one backward
pass per dimension) from t = 0 to T under the VP SDE, with the exact p_T as prior, so the only error
is the ODE solver's and it is measured against the closed-form log-density:

- ``per-sample``: ``log_likelihood(method="dopri5_per_sample")``, sdekit's own Dormand-Prince 5(4)
  with a step size per sample on device tensors (:func:`sdekit.ode_solvers.dopri5`);
- ``torchdiffeq``: ``log_likelihood(method="dopri5")``, torchdiffeq's dopri5 on the tensor, one step
  size for the batch (the worst sample's error decides);
- ``scipy``: score_sde_pytorch's ``likelihood.py`` approach: the state is flattened to numpy and
  ``scipy.integrate.solve_ivp(method="RK45")`` calls back into torch at every evaluation.

All sweep the same rtol = atol; the table gives the worst and mean error over the batch, the NFE,
the wall time and the process CPU time (each the best of ``--repeats``; the solvers take turns in
each round, so load elsewhere on a shared machine hits them alike, and CPU time does not count the
time the process waits for a core). The last table gives, per solver, the loosest tolerance of the
sweep at which the worst sample's error is below the target, and the time ratio to scipy there (CPU
time on a CPU, wall time on a GPU). The
solvers measure their error differently (sdekit per sample, scipy the RMS over the whole flattened
batch), which is why the comparison is made at equal achieved error, not at equal tolerance.

    python benchmarks/likelihood.py                 # quick: batch 1000, 8 tolerances, 3 repeats
    python benchmarks/likelihood.py --full          # batch 4000, 12 tolerances, 5 repeats
    python benchmarks/likelihood.py --device cuda   # the GPU only (default: CPU, and CUDA if present)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

import sdekit
from sdekit.likelihood import exact_divergence, log_likelihood

sys.path.insert(0, str(Path(__file__).parent))
from devices import devices, sync  # noqa: E402

MIXTURE = sdekit.GaussianMixture(
    [0.2, 0.3, 0.5],
    [[-2.0, 1.0], [1.5, -0.5], [0.5, 2.0]],
    [[0.5, 0.8], [0.7, 0.3], [0.3, 0.3]],
)
SOLVERS = ("per-sample", "torchdiffeq", "scipy")


def sdekit_run(method):
    def run(sde, x, tol):
        log_p, info = log_likelihood(
            MIXTURE.score_fn(sde),
            sde,
            x,
            t_min=0.0,
            method=method,
            rtol=tol,
            atol=tol,
            prior_log_prob=lambda z: MIXTURE.log_prob(z, sde.T, sde),
        )
        return log_p, info.nfe

    return run


def scipy_run(sde, x, tol):
    """score_sde_pytorch's scheme: numpy state, a torch call per evaluation, RK45 from scipy."""
    ode = sde.probability_flow(MIXTURE.score_fn(sde))
    batch, shape = x.shape[0], x.shape

    def ode_func(t, y):
        x_t = torch.from_numpy(y[:-batch]).reshape(shape).to(x.device)
        t_batch = torch.full((batch,), t, dtype=x.dtype, device=x.device)
        drift, div = exact_divergence(ode.drift, x_t, t_batch)
        return np.concatenate([drift.cpu().numpy().ravel(), div.cpu().numpy()])

    y0 = np.concatenate([x.cpu().numpy().ravel(), np.zeros(batch)])
    sol = solve_ivp(ode_func, (0.0, sde.T), y0, rtol=tol, atol=tol, method="RK45")
    end = torch.from_numpy(sol.y[:, -1]).to(x.device)
    x_T, integral = end[:-batch].reshape(shape), end[-batch:]
    return MIXTURE.log_prob(x_T, sde.T, sde) + integral, sol.nfev


RUNS = {
    "per-sample": sdekit_run("dopri5_per_sample"),
    "torchdiffeq": sdekit_run("dopri5"),
    "scipy": scipy_run,
}


def measure_all(sde, x, tol, exact, repeats) -> dict:
    """``{solver: (max err, mean err, nfe, best wall s, best CPU s)}``, the solvers taking turns."""
    wall = {name: float("inf") for name in SOLVERS}
    cpu = dict(wall)
    out = {}
    for _ in range(repeats):
        for name in SOLVERS:
            sync(x.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            log_p, nfe = RUNS[name](sde, x, tol)
            sync(x.device)
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
            err = (log_p - exact).abs()
            out[name] = (float(err.max()), float(err.mean()), nfe)
    return {name: (*out[name], wall[name], cpu[name]) for name in SOLVERS}


def at_target(points: list[tuple], target: float) -> tuple | None:
    """``(nfe, wall, cpu)`` where the worst-sample error crosses ``target``, interpolated.

    ``points`` are ``(tol, max err, nfe, wall, cpu)`` from loose to tight. Between the last point
    above the target and the first below it, NFE and the log-times are interpolated linearly in
    log(error), so that the comparison does not depend on where the sweep's tolerances fall.
    """
    for i, (_, err, *cost) in enumerate(points):
        if err < target:
            if i == 0:
                return None  # already below at the loosest tolerance: no bracket
            _, err0, *cost0 = points[i - 1]
            w = (math.log(target) - math.log(err0)) / (math.log(err) - math.log(err0))
            nfe = cost0[0] + w * (cost[0] - cost0[0])
            times = [
                math.exp(math.log(a) + w * (math.log(b) - math.log(a)))
                for a, b in zip(cost0[1:], cost[1:], strict=True)
            ]
            return (nfe, *times)
    return None


def bench(device: torch.device, args, tols) -> None:
    sde = sdekit.VPSDE()
    x = MIXTURE.sample(args.batch, generator=torch.Generator().manual_seed(args.seed)).to(device)
    exact = MIXTURE.log_prob(x)
    for run in RUNS.values():
        run(sde, x[:8], 1e-3)  # warm-up
    print(
        f"VP SDE, 2D 3-component mixture, batch {args.batch}, float64, device {device}, "
        f"exact divergence, {torch.get_num_threads()} thread(s), best of {args.repeats}\n"
    )
    print("| rtol=atol | solver | max err | mean err | NFE | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|")
    reached, sweep = {}, {name: [] for name in SOLVERS}
    for tol in tols:
        results = measure_all(sde, x, tol, exact, args.repeats)
        for name, (err_max, err_mean, nfe, wall, cpu) in results.items():
            print(
                f"| {tol:.0e} | {name} | {err_max:.2e} | {err_mean:.2e} | {nfe} | {wall:.3f} "
                f"| {cpu:.3f} |",
                flush=True,
            )
            sweep[name].append((tol, err_max, nfe, wall, cpu))
            if err_max < args.target and name not in reached:
                reached[name] = (tol, err_max, nfe, wall, cpu)
    print(f"\nLoosest tolerance of the sweep whose worst-sample error is < {args.target:g} nats:\n")
    # on a CPU the process's CPU time, which other jobs on a shared machine do not inflate; on a
    # GPU the wall clock
    column = 3 if device.type == "cuda" else 4
    kind = "wall" if device.type == "cuda" else "CPU"
    print(f"| device | solver | rtol=atol | max err | NFE | wall s | CPU s | {kind} scipy/this |")
    print("|---|---|---|---|---|---|---|---|")
    for name in SOLVERS:
        if name not in reached:
            print(f"| {device} | {name} | not reached | | | | | |")
            continue
        tol, err, nfe, wall, cpu = reached[name]
        ratio = (
            f"{reached['scipy'][column] / reached[name][column]:.2f}" if "scipy" in reached else ""
        )
        print(
            f"| {device} | {name} | {tol:.0e} | {err:.2e} | {nfe} | {wall:.3f} | {cpu:.3f} "
            f"| {ratio} |"
        )
    print(f"\nInterpolated to a worst-sample error of {args.target:g} nats:\n")
    print(f"| device | solver | NFE | wall s | CPU s | {kind} scipy/this |")
    print("|---|---|---|---|---|---|")
    crossing = {name: at_target(sweep[name], args.target) for name in SOLVERS}
    for name, cross in crossing.items():
        if cross is None:
            print(f"| {device} | {name} | not bracketed by the sweep | | | |")
            continue
        ratio = ""
        if crossing["scipy"] is not None:
            ratio = f"{crossing['scipy'][column - 2] / cross[column - 2]:.2f}"
        print(f"| {device} | {name} | {cross[0]:.0f} | {cross[1]:.3f} | {cross[2]:.3f} | {ratio} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="bigger batch, finer sweep")
    parser.add_argument(
        "--device", default="auto", help="auto (CPU, and CUDA if present), cpu, cuda"
    )
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--target", type=float, default=1e-3, help="error to reach, in nats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.batch = args.batch or (4000 if args.full else 1000)
    args.repeats = args.repeats or (5 if args.full else 3)
    if args.full:
        tols = [1e-3, 3e-4, 1e-4, 5e-5, 3e-5, 2e-5, 1e-5, 5e-6, 3e-6, 2e-6, 1e-6, 3e-7]
    else:
        tols = [1e-4, 5e-5, 3e-5, 2e-5, 1e-5, 3e-6, 2e-6, 1e-6]
    for device in devices(args.device):
        bench(device, args, tols)


if __name__ == "__main__":
    main()
