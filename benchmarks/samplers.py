r"""Sampler accuracy against peers: error vs NFE on narrow-mode Gaussian mixtures, exact score.

Every sampler integrates the VP SDE (linear beta, T = 1, t_min = 1e-3) from the same :math:`x_T`
with the exact float64 score of an analytic :class:`~sdekit.GaussianMixture`, so the error is the
sampler's alone (no network). Error against the data law :math:`p_0`: in 1D the :math:`W_1` to the
exact CDF; in 2D the sliced :math:`W_1` over fixed directions against exact projected CDFs. The
Monte-Carlo floor is the same distance for exact samples of :math:`p_0` of the same size, averaged
over seeds. NFE is the exact number of score calls (``info.nfe`` for sdekit); each sampler runs with
the most steps whose NFE fits the budget.

Peers (see ``peers.py``): diffusers' schedulers on the 1000-step DDPM betas of the same SDE,
k-diffusion's samplers in the scaled sigma parameterization over the same sigma range, and, with
``--reference DIR``, the authors' own DPM-Solver(++) and UniPC code imported from ``DIR`` (not
shipped with sdekit). Rows ``[fitted]`` run on a grid from :func:`sdekit.sampling.fit_grid`,
fitted on other draws of :math:`x_T` than those measured (its one-off cost is tabulated).

With ``--qmc`` the measured :math:`x_T` are a scrambled Sobol sequence through the normal quantile
function (randomised quasi-Monte Carlo, one scrambling per seed) instead of pseudo-random draws. A
deterministic sampler maps them to points that fill its law evenly, so the distance to :math:`p_0`
carries far less sampling noise than :math:`N^{-1/2}` and budgets whose errors sit at the
Monte-Carlo floor can be ranked (in 1D, where the flow map is monotone, the noise is
:math:`O(1/N)`). The floor is then that of exact samples drawn the same way: :math:`F^{-1}(\Phi(x_T))`
of the same :math:`x_T` in 1D, a Sobol sequence of one more dimension (the component, then the
Gaussian) in more dimensions. Injected noise stays pseudo-random.

Where the samplers start. The prior :math:`N(0, I)` is not the SDE's marginal :math:`p_T` (at
:math:`T = 1` the data mean survives with weight :math:`\alpha(1) = e^{-5.05}`), and even the exact
flow from it misses :math:`p_0`: in 1D by :math:`W_1 = 0.0064`, more than the samplers' own error
from about 12 NFE on, so there a sampler can look better than exact by cancelling that bias. The
"exact flow" column is that floor: the distance of a 500-step DPM-Solver++(3M) solve (pathwise
within :math:`10^{-6}` of exact) from the same :math:`x_T`. ``--start marginal`` draws :math:`x_T`
from :math:`p_T` itself (exactly, as the exact samples above), so the exact flow ends at
:math:`p_{t_{\min}}` (1D: :math:`W_1 = 0.0009` to :math:`p_0`) and the table ranks the solvers.

    python benchmarks/samplers.py            # quick: small N, NFE 5, 10, 20
    python benchmarks/samplers.py --full     # N = 200,000 (1D) / 100,000 (2D) / 50,000 (16D)
    python benchmarks/samplers.py --full --reference /tmp/ref --device cuda
    python benchmarks/samplers.py --full --qmc --start marginal --targets 1D   # rank near the floor
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from pathlib import Path

import torch
from torch.quasirandom import SobolEngine

import sdekit
from sdekit.metrics import sliced_w1, w1_to_mixture
from sdekit.sampling import SAMPLERS, fit_grid, sample

sys.path.insert(0, str(Path(__file__).parent))
import peers as peer_lib  # noqa: E402

OUT = Path("outputs")
# The names of an adaptive method's (relative, absolute) tolerance options.
ADAPTIVE_TOLERANCES = {"adaptive_sde": ("eps_rel", "eps_abs"), "ode": ("rtol", "atol")}


def targets() -> dict[str, sdekit.GaussianMixture]:
    """Hard targets: narrow, unequal modes in 1D; a 5 x 5 grid of narrow modes and a ring of thin
    modes in 2D; 12 modes of unequal weights and widths in 16D."""
    one_d = sdekit.GaussianMixture(
        [0.4, 0.25, 0.15, 0.12, 0.08],
        [-2.0, -0.8, 0.0, 0.9, 2.2],
        [0.3, 0.02, 0.1, 0.05, 0.02],
    )
    axis = torch.arange(-2.0, 3.0, dtype=torch.float64)
    means = torch.cartesian_prod(axis, axis)
    weights = torch.linspace(1.0, 3.0, 25, dtype=torch.float64)
    grid = sdekit.GaussianMixture(weights / weights.sum(), means, 0.05)
    # eight modes on a circle of radius 2, each 0.15 wide along x and 0.01 along y: thin in one
    # direction, so a sampler must resolve two noise scales 15x apart; weights 1:8
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    ring_w = torch.arange(1.0, 9.0, dtype=torch.float64)
    ring = sdekit.GaussianMixture(
        ring_w / ring_w.sum(),
        2 * torch.stack([angle.cos(), angle.sin()], 1),
        torch.tensor([[0.15, 0.01]], dtype=torch.float64).expand(8, 2),
    )
    gen = torch.Generator().manual_seed(16)
    w16 = torch.rand(12, generator=gen, dtype=torch.float64) ** 2 + 0.02
    high = sdekit.GaussianMixture(
        w16 / w16.sum(),
        2 * torch.rand(12, 16, generator=gen, dtype=torch.float64) - 1,
        0.03 + 0.2 * torch.rand(12, 16, generator=gen, dtype=torch.float64),
    )
    return {
        "1D, 5 narrow modes": one_d,
        "2D, 5x5 grid (std 0.05)": grid,
        "2D, ring of 8 thin modes (std 0.15 x 0.01)": ring,
        "16D, 12 unequal modes (std 0.03-0.23)": high,
    }


def distance(samples: torch.Tensor, gm: sdekit.GaussianMixture, directions: int) -> float:
    """:math:`W_1` (1D) or sliced :math:`W_1` over fixed directions (2D, 16D) to the data law."""
    samples = samples.detach().to(torch.float64)
    if not bool(torch.isfinite(samples).all()):
        return math.nan
    if gm.dim == 1:
        return w1_to_mixture(samples, gm)
    directions_gen = torch.Generator().manual_seed(1234)
    return sliced_w1(samples, gm, directions, generator=directions_gen)


def draw_x_T(n: int, dim: int, seed: int, qmc: bool) -> torch.Tensor:
    r"""``n`` draws of :math:`x_T \sim N(0, I)`: pseudo-random, or the scrambled Sobol points
    ``seed`` through the normal quantile function (``qmc``)."""
    if not qmc:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(n, dim, generator=gen, dtype=torch.float64)
    u = SobolEngine(dim, scramble=True, seed=seed).draw(n, dtype=torch.float64)
    return torch.special.ndtri(u)


def quantile(gm: sdekit.GaussianMixture, u: torch.Tensor, iterations: int = 80) -> torch.Tensor:
    """The 1D mixture's quantile function :math:`F^{-1}(u)`, by bisection (to 2^-80 of the
    bracket: float64 round-off)."""
    lo = torch.full_like(u, float((gm.means - 40 * gm.stds).min()))
    hi = torch.full_like(u, float((gm.means + 40 * gm.stds).max()))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = gm.cdf(mid) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def exact_draw(gm: sdekit.GaussianMixture, n: int, seed: int, qmc: bool) -> torch.Tensor:
    """``n`` exact samples of :math:`p_0`, drawn as ``draw_x_T`` draws :math:`x_T`."""
    if not qmc:
        return gm.sample(n, generator=torch.Generator().manual_seed(seed))
    if gm.dim == 1:
        return quantile(gm, torch.special.ndtr(draw_x_T(n, 1, seed, qmc=True))[:, 0])[:, None]
    u = SobolEngine(gm.dim + 1, scramble=True, seed=seed).draw(n, dtype=torch.float64)
    # the first coordinate picks the component (index clamped against cumsum's round-off at 1)
    k = torch.searchsorted(gm.weights.cumsum(0), u[:, :1].contiguous())[:, 0]
    k = k.clamp_max(len(gm.weights) - 1)
    return gm.means[k] + gm.stds[k] * torch.special.ndtri(u[:, 1:])


def start_points(gm: sdekit.GaussianMixture, sde, n: int, seed: int, args) -> torch.Tensor:
    """The samplers' common :math:`x_T`: draws of the prior :math:`N(0, I)` (``--start prior``) or
    exact draws of the marginal :math:`p_T` (``--start marginal``)."""
    if args.start == "marginal":
        return exact_draw(gm.at(float(sde.T), sde), n, seed, args.qmc)
    return draw_x_T(n, gm.dim, seed, args.qmc)


FLOW_STEPS = 500


def exact_flow(gm, sde, x_T: torch.Tensor, directions: int) -> float:
    """The distance to :math:`p_0` of the exact probability flow from ``x_T`` (500 steps of
    DPM-Solver++(3M) with the exact score: a floor for every deterministic sampler)."""
    x, _ = sample(gm.score_fn(sde), sde, x_T, method="dpmpp_3m", steps=FLOW_STEPS)
    return distance(x, gm, directions)


def floor(gm: sdekit.GaussianMixture, n: int, directions: int, seeds: int, qmc: bool) -> float:
    """Mean distance of ``n`` exact samples of :math:`p_0` over ``seeds`` seeds."""
    draws = [distance(exact_draw(gm, n, 1000 + s, qmc), gm, directions) for s in range(seeds)]
    return sum(draws) / seeds


def sdekit_runners(sde) -> list[peer_lib.Peer]:
    """Every registered sdekit method that needs only the score, at the most steps whose
    ``info.nfe`` fits the budget."""

    def make(name, spec):
        def nfe_of(x_T, steps):
            # A two-sample probe with a zero model: a fixed-step method's NFE depends on steps only.
            zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
            _, info = sample(zero, sde, x_T[:2], method=name, steps=steps)
            return info.nfe

        def run(score, x_T, nfe, generator):
            steps = max(1, nfe // spec.evals_per_step)
            while steps >= 1 and nfe_of(x_T, steps) > nfe:
                steps -= 1
            if steps < 1:
                return None
            x, info = sample(score, sde, x_T, method=name, steps=steps, generator=generator)
            return x, info.nfe

        def run_adaptive(score, x_T, tol, generator):
            rel, abs_ = ADAPTIVE_TOLERANCES.get(name, ("rtol", "atol"))
            options = {rel: tol, abs_: tol}
            x, info = sample(score, sde, x_T, method=name, generator=generator, **options)
            return x, info.nfe

        if spec.evals_per_step is None:
            return peer_lib.Peer(f"sdekit:{name}", run_adaptive, adaptive=True)
        return peer_lib.Peer(f"sdekit:{name}", run)

    # methods with a required option (the learned-variance samplers' v) need more than a score
    return [
        make(name, spec)
        for name, spec in sorted(SAMPLERS.items())
        if inspect.Parameter.empty not in spec.options.values()
    ]


FIT_COSTS: list[tuple[str, str, int, int, float]] = []  # (target, method, budget, fit NFE, seconds)


def fitted_runners(sde, methods, n_fit: int, candidates: int) -> list[peer_lib.Peer]:
    """``method[fitted]``: the method on a grid fitted (:func:`fit_grid`) to the target's score from
    ``n_fit`` draws of x_T other than the measured ones, one grid per budget (steps = NFE)."""
    cache: dict = {}

    def make(method):
        def run(score, x_T, nfe, generator):
            key = (method, id(score.gm), nfe, x_T.shape[0], x_T.device)
            if key not in cache:
                gen = torch.Generator().manual_seed(10_000 + nfe)
                x_fit = torch.randn(n_fit, *x_T.shape[1:], generator=gen, dtype=x_T.dtype)
                exact = lambda x, t: score.gm.score(x, t, score.sde)  # noqa: E731 (not counted)
                fit = fit_grid(
                    exact, sde, x_fit.to(x_T.device), nfe, method=method, candidates=candidates
                )
                cache[key] = fit.ts
                FIT_COSTS.append((score.gm, method, nfe, fit.nfe, fit.seconds))
            x, info = sample(score, sde, x_T, method=method, grid=cache[key], generator=generator)
            return x, info.nfe

        return run

    return [peer_lib.Peer(f"sdekit:{m}[fitted]", make(m)) for m in methods]


class CountingScore:
    """The exact score, counting calls (a check on every sampler's reported NFE)."""

    def __init__(self, gm: sdekit.GaussianMixture, sde):
        self.gm, self.sde, self.calls = gm, sde, 0  # fitted runners fit on gm's score directly

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.gm.score(x, t, self.sde)


def run_target(gm, sde, runners, args, device, seed) -> dict[str, dict[int, tuple[float, int]]]:
    """``{runner name: {nfe budget: (error, nfe used)}}`` for one target and one seed of x_T/noise."""
    x_T = start_points(gm, sde, args.n, seed, args).to(device)
    results: dict[str, dict[int, tuple[float, int]]] = {}
    results["exact flow"] = {0: (exact_flow(gm, sde, x_T, args.directions), FLOW_STEPS)}
    for runner in runners:
        start = time.perf_counter()
        row: dict[int, tuple[float, int]] = {}
        if runner.adaptive:
            # Run a tolerance sweep once, loose to tight, until a run exceeds the largest budget;
            # each budget takes the best run that fits it.
            points = []
            for tol in args.tolerances:
                score = CountingScore(gm, sde)
                x, used = runner.run(
                    score, x_T, tol, torch.Generator(device).manual_seed(1000 + seed)
                )
                points.append((used, distance(x, gm, args.directions)))
                if used > max(args.nfe):
                    break
            for budget in args.nfe:
                fits = [(err, used) for used, err in points if used <= budget]
                if fits:
                    row[budget] = min(fits)
        else:
            for budget in args.nfe:
                score = CountingScore(gm, sde)
                try:
                    out = runner.run(
                        score, x_T, budget, torch.Generator(device).manual_seed(1000 + seed)
                    )
                except Exception as err:  # a peer's own bug must not end the comparison
                    print(f"  {runner.name} at NFE {budget} failed: {err!r}", file=sys.stderr)
                    continue
                if out is None:
                    continue
                x, used = out
                if used != score.calls or used > budget:
                    raise RuntimeError(
                        f"{runner.name}: reported {used} NFE, made {score.calls}, budget {budget}"
                    )
                row[budget] = (distance(x, gm, args.directions), used)
        results[runner.name] = row
        print(f"  {runner.name:32s} {time.perf_counter() - start:6.1f} s", file=sys.stderr)
    return results


def average(runs: list[dict[str, dict[int, tuple[float, int]]]]):
    """Mean error over seeds of each runner at each budget that every seed reached.

    Near the Monte-Carlo floor a single draw of x_T (and of the noise) decides which sampler looks
    best; the mean over independent draws compares the samplers instead.
    """
    out = {}
    for name in runs[0]:
        budgets = set.intersection(*(set(run[name]) for run in runs))
        out[name] = {
            b: (
                sum(run[name][b][0] for run in runs) / len(runs),
                max(run[name][b][1] for run in runs),
            )
            for b in sorted(budgets)
        }
    return out


def best(results, budget: int, side: str) -> tuple[float, str]:
    """The smallest error at ``budget`` among sdekit's methods (``side="sdekit"``), the peer
    libraries (``"peer"``: diffusers, k-diffusion and the reference code) or the reference code
    alone (``"ref"``)."""

    def on_side(name: str) -> bool:
        if side == "sdekit":
            return name.startswith("sdekit:")
        if side == "ref":
            return name.startswith("ref:")
        return not name.startswith("sdekit:")

    candidates = [
        (row[budget][0], name)
        for name, row in results.items()
        if on_side(name) and budget in row and not math.isnan(row[budget][0])
    ]
    return min(candidates) if candidates else (math.nan, "-")


# The outside run's reference DPM-Solver++(3M) numbers (issue 14; N = 200,000 in 1D), by target.
ISSUE_REFERENCE = {
    "1D, 5 narrow modes": {10: 0.0323},
    "2D, 5x5 grid (std 0.05)": {5: 0.0524, 20: 0.0061},
}


def markdown(
    title: str, results, floor_value: float, flow: float, nfes, every: bool, outside: dict
) -> str:
    """One target's table; ``outside`` is the outside run's numbers by budget, which count as the
    best peer where better than this run's."""
    lines = [
        f"### {title}",
        "",
        "| NFE | MC floor | exact flow | best sdekit | best peer | sdekit / peer | target "
        "| best reference code | sdekit / reference |",
        "|---:|---:|---:|---|---|---:|---:|---|---:|",
    ]
    for budget in nfes:
        s_err, s_name = best(results, budget, "sdekit")
        p_err, p_name = best(results, budget, "peer")
        r_err, r_name = best(results, budget, "ref")
        issue = outside.get(budget)
        if issue is not None and not issue > p_err:  # the outside run's number is the best peer
            p_err, p_name = issue, "reference 3M, issue 14's run"
        goal = 0.5 if budget == 10 else 0.7
        met = "met" if s_err <= goal * p_err else "missed"
        ref = f"{r_err:.4g} ({r_name.removeprefix('ref:')})" if r_name != "-" else "-"
        lines.append(
            f"| {budget} | {floor_value:.4g} | {flow:.4g} "
            f"| {s_err:.4g} ({s_name.removeprefix('sdekit:')}) "
            f"| {p_err:.4g} ({p_name}) | {s_err / p_err:.2f} | <= {goal} {met} | {ref} "
            f"| {s_err / r_err:.2f} |"
        )
    if every:
        names = list(results)
        lines += ["", "| method | " + " | ".join(str(b) for b in nfes) + " |"]
        lines.append("|---|" + "---:|" * len(nfes))
        for name in names:
            cells = [f"{results[name][b][0]:.4g}" if b in results[name] else "" for b in nfes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fit_cost_table(gms: dict) -> str:
    names = {id(gm): title for title, gm in gms.items()}
    lines = ["### One-off cost of the fitted grids", ""]
    lines += ["| target | method | NFE | fit cost (NFE on the fit batch) | seconds |"]
    lines += ["|---|---|---:|---:|---:|"]
    for gm, method, nfe, cost, seconds in FIT_COSTS:
        lines.append(f"| {names[id(gm)]} | {method} | {nfe} | {cost} | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def plot(all_results, floors, nfes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4.2))
    axes = [axes] if len(all_results) == 1 else axes
    for ax, (title, results) in zip(axes, all_results.items(), strict=True):
        for row in results.values():
            xs = sorted(row)
            ax.plot(xs, [row[b][0] for b in xs], color="0.8", lw=0.8, zorder=1)
        for side, color, label in (("sdekit", "C0", "best sdekit"), ("peer", "C3", "best peer")):
            errs = [best(results, b, side)[0] for b in nfes]
            ax.plot(nfes, errs, "o-", color=color, label=label, zorder=3)
        ax.axhline(floors[title], color="k", ls="--", lw=1, label="Monte-Carlo floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE (score evaluations)", title=title)
        ax.set_ylabel("W1 to the data" if "1D" in title else "sliced W1 to the data")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", action="store_true", help="N = 200,000 in 1D, NFE 5..20, all grids"
    )
    parser.add_argument("--n", type=int, help="samples per run, every target (default: by target)")
    parser.add_argument("--nfe", type=int, nargs="+", help="NFE budgets")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--methods", nargs="+", help="only runners whose name has one")
    parser.add_argument("--targets", nargs="+", help="only targets whose title has one")
    parser.add_argument("--every", action="store_true", help="also print every method's errors")
    parser.add_argument("--qmc", action="store_true", help="x_T from scrambled Sobol points")
    parser.add_argument(
        "--start",
        choices=("prior", "marginal"),
        default="prior",
        help="x_T from the prior N(0, I) or exactly from the SDE's marginal p_T",
    )
    parser.add_argument(
        "--seeds", type=int, help="independent draws of x_T and noise to average (quick 1, full 3)"
    )
    parser.add_argument(
        "--reference", help="directory with the authors' dpm_solver_pytorch.py, uni_pc.py"
    )
    parser.add_argument(
        "--fitted",
        nargs="*",
        default=None,
        help="methods to run on fitted grids too (default: unipc_2, and with --full also "
        "unipc dpmpp_3m; none with --fitted and no names)",
    )
    parser.add_argument(
        "--fit-n", type=int, default=None, help="x_T draws to fit on (quick 256, full 2048)"
    )
    args = parser.parse_args()
    sizes = {1: 200_000, 2: 100_000, 16: 50_000} if args.full else {1: 2_000, 2: 2_000, 16: 2_000}
    args.nfe = args.nfe or ([5, 6, 8, 10, 12, 15, 20] if args.full else [5, 10, 20])
    args.directions = 128 if args.full else 32
    args.tolerances = [0.2, 0.1, 0.05, 0.02, 0.01, 3e-3, 1e-3, 1e-4] if args.full else [0.05]
    seeds = 5 if args.full else 3
    args.seeds = args.seeds or (3 if args.full else 1)
    fit_n = args.fit_n or (2048 if args.full else 256)
    fitted = (
        (["unipc_2", "unipc", "dpmpp_3m"] if args.full else ["unipc_2"])
        if args.fitted is None
        else args.fitted
    )
    device = torch.device(args.device)

    sde = sdekit.VPSDE(beta_min=0.1, beta_max=20.0, T=1.0, t_min=1e-3)
    runners = sdekit_runners(sde) + fitted_runners(sde, fitted, fit_n, 64 if args.full else 32)
    runners += peer_lib.peers(
        sde,
        k_grids=("karras", "vp") if args.full else ("karras",),
        spacings=("linspace", "leading", "trailing") if args.full else ("trailing",),
    )
    if args.reference:
        runners += peer_lib.reference_peers(sde, args.reference)
    if args.methods:
        runners = [r for r in runners if any(m in r.name for m in args.methods)]

    start = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    all_results, floors, text, used = {}, {}, [], {}
    n_given = args.n
    for title, gm in targets().items():
        if args.targets and not any(t in title for t in args.targets):
            continue
        args.n = n = n_given or sizes[gm.dim]
        used[title] = gm
        print(f"{title}: {len(runners)} samplers, N = {n}", file=sys.stderr)
        floors[title] = floor(gm, n, args.directions, seeds, args.qmc)
        runs = [run_target(gm, sde, runners, args, device, seed) for seed in range(args.seeds)]
        all_results[title] = average(runs)
        flow = all_results[title].pop("exact flow")[0][0]
        text.append(
            f"N = {n}.\n\n"
            # the outside run drew x_T pseudo-randomly: its numbers carry that sampling noise
            + markdown(
                title,
                all_results[title],
                floors[title],
                flow,
                args.nfe,
                args.every,
                {} if args.qmc else ISSUE_REFERENCE.get(title, {}),
            )
        )
        print(text[-1], file=sys.stderr, flush=True)  # each target's table as soon as it is done
    header = (
        f"VP SDE (linear beta 0.1..20, T = 1, t_min = 1e-3), exact float64 score, "
        f"errors = mean over {args.seeds} draws of x_T and noise (seeds 0..{args.seeds - 1}), "
        f"x_T {'scrambled Sobol (QMC)' if args.qmc else 'pseudo-random'} draws of "
        f"{'N(0, I)' if args.start == 'prior' else 'p_T'}, "
        f"MC floor = mean over {seeds} seeds of N exact samples drawn the same way, "
        f"{args.directions} directions for "
        f"the sliced W1; fitted grids fitted on {fit_n} other draws of x_T; target: sdekit <= 0.7 x "
        f"the best peer (0.5 x at 10 NFE); {time.perf_counter() - start:.0f} s on {args.device}.\n"
    )
    report = header + "\n" + "\n".join(text)
    if FIT_COSTS:
        report += "\n" + fit_cost_table(used)
    print(report)
    (OUT / "samplers_benchmark.md").write_text(report)
    plot(all_results, floors, args.nfe, OUT / "samplers_benchmark.png")
    print(f"wrote {OUT / 'samplers_benchmark.md'} and {OUT / 'samplers_benchmark.png'}")


if __name__ == "__main__":
    main()
