"""Exact log-likelihood on a 2D Gaussian-mixture oracle: sdekit against a numpy round-trip solver.

Both integrate the same probability-flow ODE with the same exact divergence (autograd, one backward
pass per dimension) from t = 0 to T under the VP SDE, with the exact p_T as prior, so the only error
is the ODE solver's and it is measured against the closed-form log-density:

- ``sdekit``: :func:`sdekit.likelihood.log_likelihood`, torchdiffeq dopri5 on the tensor;
- ``scipy``: score_sde_pytorch's ``likelihood.py`` approach: the state is flattened to numpy and
  ``scipy.integrate.solve_ivp(method="RK45")`` calls back into torch at every evaluation.

Both sweep the same rtol = atol; the table gives the worst and mean error over the batch, the NFE
and the wall time (median of ``--repeats``), and the last lines the loosest tolerance of the sweep
at which each reaches the target error. The two solvers measure their error differently (sdekit per
sample, the worst sample deciding; scipy the RMS over the whole flattened batch), which is why the
comparison is made at equal achieved error, not only at equal tolerance.

    python benchmarks/likelihood.py            # quick: batch 1000, 4 tolerances, 3 repeats
    python benchmarks/likelihood.py --full     # batch 4000, 8 tolerances, 5 repeats
    python benchmarks/likelihood.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

import sdekit
from sdekit.likelihood import exact_divergence, log_likelihood

MIXTURE = sdekit.GaussianMixture(
    [0.2, 0.3, 0.5],
    [[-2.0, 1.0], [1.5, -0.5], [0.5, 2.0]],
    [[0.5, 0.8], [0.7, 0.3], [0.3, 0.3]],
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sdekit_run(sde, x, tol):
    log_p, info = log_likelihood(
        MIXTURE.score_fn(sde),
        sde,
        x,
        t_min=0.0,
        rtol=tol,
        atol=tol,
        prior_log_prob=lambda z: MIXTURE.log_prob(z, sde.T, sde),
    )
    return log_p, info.nfe


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


def measure(run, sde, x, tol, exact, repeats):
    times = []
    for _ in range(repeats):
        sync(x.device)
        start = time.perf_counter()
        log_p, nfe = run(sde, x, tol)
        sync(x.device)
        times.append(time.perf_counter() - start)
    err = (log_p - exact).abs()
    return float(err.max()), float(err.mean()), nfe, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="bigger batch, finer sweep")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--target", type=float, default=1e-3, help="error to reach, in nats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (4000 if args.full else 1000)
    repeats = args.repeats or (5 if args.full else 3)
    if args.full:
        tols = [1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7]
    else:
        tols = [1e-4, 1e-5, 3e-6, 1e-6]

    sde = sdekit.VPSDE()
    x = MIXTURE.sample(batch, generator=torch.Generator().manual_seed(args.seed)).to(device)
    exact = MIXTURE.log_prob(x)
    sdekit_run(sde, x[:8], 1e-3)  # warm-up

    print(f"VP SDE, 2D 3-component mixture, batch {batch}, float64, device {device}, exact div.\n")
    print(
        "| rtol=atol | sdekit max err | scipy max err | sdekit mean err | scipy mean err "
        "| sdekit NFE | scipy NFE | sdekit s | scipy s | time ratio scipy/sdekit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    reached = {}
    for tol in tols:
        ours = measure(sdekit_run, sde, x, tol, exact, repeats)
        peer = measure(scipy_run, sde, x, tol, exact, repeats)
        print(
            f"| {tol:.0e} | {ours[0]:.2e} | {peer[0]:.2e} | {ours[1]:.2e} | {peer[1]:.2e} "
            f"| {ours[2]} | {peer[2]} | {ours[3]:.3f} | {peer[3]:.3f} | {peer[3] / ours[3]:.2f} |"
        )
        for name, result in (("sdekit", ours), ("scipy", peer)):
            if result[0] < args.target and name not in reached:
                reached[name] = (tol, result)
    print(f"\nFirst tolerance of the sweep whose worst-sample error is < {args.target:g} nats:\n")
    print("| solver | rtol=atol | max err | NFE | seconds |")
    print("|---|---|---|---|---|")
    for name in ("sdekit", "scipy"):
        if name in reached:
            tol, (err, _, nfe, seconds) = reached[name]
            print(f"| {name} | {tol:.0e} | {err:.2e} | {nfe} | {seconds:.3f} |")
        else:
            print(f"| {name} | not reached | | | |")
    if len(reached) == 2:
        ratio = reached["scipy"][1][3] / reached["sdekit"][1][3]
        print(f"\ntime ratio scipy/sdekit at {args.target:g} nats: {ratio:.2f}")


if __name__ == "__main__":
    main()
