r"""Time grids fitted to the model: the grid of ``steps`` steps that makes a sampler closest to a
fine solve of the same model from the same :math:`x_T`.

The criterion, for a deterministic sampler :math:`\Phi_{\mathbf t}` on the grid
:math:`\mathbf t = (T = t_0 > t_1 > \dots > t_N = t_{\min})` and the probability-flow solution
:math:`x^\star` of the *same model* (a fine solve, the "teacher"), is the mean distance over a batch
of starting points,

.. math:: E(\mathbf t) = \frac1B\sum_{b=1}^B \bigl\|\Phi_{\mathbf t}(x_T^{(b)})
          - x^\star_{t_{\min}}(x_T^{(b)})\bigr\|_2,

which bounds the :math:`W_1` distance between the sampler's law and the teacher's (the pairs form a
coupling). Only model evaluations enter, never data. It is minimised in two stages (Chen et al.
2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling" (GITS), §4, for the first):

1. **Dynamic programming** over a candidate grid uniform in :math:`\lambda` (``candidates + 1``
   times): the teacher is run once along the candidates, storing its states :math:`x^\star_k` and
   data predictions :math:`D^\star_k`. The local error of a step :math:`k \to l` started on the
   teacher, with the teacher's data predictions as history, needs no further model evaluation for
   the exponential multistep family (DDIM, DPM-Solver++, UniPC), so the sum of local errors over a
   path is minimised exactly by dynamic programming over the pairs (previous node, current node).
   Second-order members stand in for third-order methods (pairs, not triples, of nodes), and UniPC's
   corrector uses the teacher's :math:`D^\star_l` in place of the prediction at the predicted point.
2. **Coordinate refinement** of the actual sampler's :math:`E(\mathbf t)`: each interior time
   moves along the teacher's fine grid (``teacher_substeps`` points between candidates) by
   :math:`\pm s` points while :math:`E` decreases, with :math:`s` halving down to one point. This
   stage runs the sampler itself (``steps`` evaluations a trial), so it also fits methods outside
   the family above, started from their default grid.

The grid is a float64 tensor: ``torch.save(fit.ts, path)``, then
``sample(..., grid=torch.load(path))``. Its cost is one-off and reported: the teacher's
``candidates * teacher_substeps`` evaluations plus ``steps`` per refinement trial, each on the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..conditioning import Cond, call_model, check_cond
from ..linear import LinearSDE
from ..parameterization import check_prediction, score_fn, to_x0
from .dpm_solver import dpmpp_multistep, step_weights
from .grids import check_t_min, time_grid
from .noise import NoiseSource
from .registry import get_sampler
from .unipc import unipc_weights

# The dynamic programme's cost model per registered method: (second-order member, variant).
_FAMILY = {
    "ddim": ("ddim", None),
    "dpmpp_2m": ("dpm", None),
    "dpmpp_3m": ("dpm", None),
    "unipc": ("unipc", "bh2"),
    "unipc_2": ("unipc", "bh2"),
    "unipc_bh1": ("unipc", "bh1"),
}


@dataclass
class FittedGrid:
    """A grid fitted by :func:`fit_grid`.

    Attributes:
        ts: the ``steps + 1`` decreasing float64 times, ``ts[0] = T``, ``ts[-1] = t_min``.
        criterion: :math:`E` (module doc) of the fitted grid on the fitting batch.
        criterion_default: :math:`E` of the method's default grid, for comparison.
        nfe: model evaluations the fit cost, each on the whole batch.
        seconds: its wall-clock time.
        method: the sampler it was fitted for.
    """

    ts: torch.Tensor
    criterion: float
    criterion_default: float
    nfe: int
    seconds: float
    method: str


class _Counted:
    def __init__(self, model: Callable, sde: LinearSDE, prediction: str, cond: Cond):
        self.nfe = 0
        self._score = score_fn(lambda x, t: self._call(model, x, t, cond), sde, prediction)

    def _call(self, model, x, t, cond):
        self.nfe += 1
        return call_model(model, x, t, cond).to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._score(x, t)


def _distance(x: torch.Tensor, y: torch.Tensor, data_dims: int) -> torch.Tensor:
    """The per-sample 2-norm of ``x - y`` over the last ``data_dims`` dims, averaged over the batch
    (the dim before them)."""
    return (x - y).flatten(-data_dims).norm(dim=-1).mean(-1)


def _teacher(score, sde: LinearSDE, x: torch.Tensor, lattice: torch.Tensor, substeps: int):
    """States and data predictions of the fine solve on ``lattice`` at every ``substeps``-th time
    (``(len(lattice) - 1) * substeps + 1`` model evaluations)."""
    ts = lattice[::substeps]
    states, preds = [x], []
    alpha, sigma = sde.alpha(ts).to(x.dtype), sde.sigma(ts).to(x.dtype)
    for k in range(ts.shape[0] - 1):
        fine = lattice[k * substeps : (k + 1) * substeps + 1]
        first: list[torch.Tensor] = []

        def recording(y, t, first=first):
            out = score(y, t)
            if not first:
                first.append(out)
            return out

        x = dpmpp_multistep(recording, sde, x, fine, order=3, final="full_order")
        preds.append(to_x0(first[0], "score", states[-1], alpha[k], sigma[k]))
        states.append(x)
    t = ts[-1:].to(x.dtype).expand(x.shape[0])
    preds.append(to_x0(score(x, t), "score", x, alpha[-1], sigma[-1]))
    return torch.stack(states), torch.stack(preds)


def _dynamic_programme(
    sde: LinearSDE, ts: torch.Tensor, X: torch.Tensor, D: torch.Tensor, steps: int, family, final
) -> list[int]:
    """The candidate indices ``0 = k_0 < ... < k_N = M`` minimising the summed local errors."""
    kind, variant = family
    M = ts.shape[0] - 1
    lam = 0.5 * sde.log_snr(ts)
    alpha, sigma = sde.alpha(ts), sde.sigma(ts)
    dt = X.dtype
    inf = torch.tensor(float("inf"), dtype=torch.float64)

    data_dims = X.ndim - 2
    ones = (1,) * data_dims

    def step(k: int, ls: torch.Tensor, js: torch.Tensor | None, corrector: bool) -> torch.Tensor:
        """Local errors ``(len(js) or 1, len(ls))`` of the steps k -> ls with history js."""
        if len(ls) > 1:  # bound the memory: (history, targets, batch, *data) at a time
            chunk = max(1, 2**24 // (X[0].numel() * (1 if js is None else len(js))))
            if chunk < len(ls):
                parts = [step(k, part, js, corrector) for part in ls.split(chunk)]
                return torch.cat(parts, 1)
        h = lam[ls] - lam[k]  # (L,)
        if js is None:
            hs, r = h[None], None
        else:
            hs = h[None].expand(len(js), -1)
            r = (lam[js][:, None] - lam[k]) / hs  # < 0
        if kind == "unipc":
            pred, corr = unipc_weights(hs, [] if r is None else [r], variant)
            w = corr if corrector else pred
        else:
            order = 1 if (r is None or kind == "ddim") else 2
            r0 = torch.ones_like(hs) if r is None else -r
            w = step_weights(hs, r0, r0, torch.tensor(order), 0.0)
        w = (alpha[ls] * w.movedim(-1, 0)).to(dt)  # (columns, J, L)
        keep = (sigma[ls] / sigma[k]).to(dt).view(1, -1, 1, *ones)
        out = keep * X[k] + w[0].view(*w[0].shape, 1, *ones) * D[k]
        if r is not None:
            out = out + w[1].view(*w[1].shape, 1, *ones) * D[js].unsqueeze(1)
        if corrector and kind == "unipc":
            out = out + w[3].view(*w[3].shape, 1, *ones) * D[ls].unsqueeze(0)
        return _distance(out, X[ls].unsqueeze(0), data_dims).to(torch.float64)

    uni = kind == "unipc"
    last_order = 2 if final in ("full_order", "zero") else 1
    # cost1[k, l]: first-order step (the warm-up from T, or the lowered last step)
    first = torch.full((M + 1, M + 1), float("inf"), dtype=torch.float64)
    first[0, 1:] = step(0, torch.arange(1, M + 1), None, uni)[0]
    # pair[j, k, l]: second-order step k -> l after j; last[j, k]: the last step k -> M
    pair = torch.full((M + 1, M + 1, M + 1), float("inf"), dtype=torch.float64)
    last = torch.full((M + 1, M + 1), float("inf"), dtype=torch.float64)
    for k in range(1, M):
        js, ls = torch.arange(k), torch.arange(k + 1, M + 1)
        pair[:k, k, k + 1 :] = step(k, ls, js, uni)
        if last_order == 1:
            last[:k, k] = step(k, torch.tensor([M]), None, False)[0, 0]
        else:
            last[:k, k] = step(k, torch.tensor([M]), js, False)[:, 0]
    if steps == 1:
        return [0, M]
    if steps == 2:
        total = first[0, 1:M] + last[0, 1:M]
        return [0, int(total.argmin()) + 1, M]
    # best[j, k]: least cost of the steps so far, ending with nodes j -> k
    best = torch.full((M + 1, M + 1), float("inf"), dtype=torch.float64)
    best[0, 1:] = first[0, 1:]
    back = []
    for _ in range(steps - 2):
        total = best[:, :, None] + pair  # (j, k, l)
        best, arg = total.min(0)  # best[k, l]
        back.append(arg)
    total = best + last  # (j, k) with the last step k -> M
    total = torch.where(torch.isfinite(total), total, inf)
    j, k = divmod(int(total.argmin()), M + 1)
    path = [M, k, j]
    for arg in reversed(back[1:]):
        path.append(int(arg[path[-1], path[-2]]))
    path.append(0)
    return path[::-1]


def fit_grid(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: LinearSDE,
    x_T: torch.Tensor,
    steps: int,
    *,
    method: str = "unipc",
    prediction: str = "score",
    t_min: float | None = None,
    candidates: int = 64,
    teacher_substeps: int = 8,
    refine: bool = True,
    cond: Cond = None,
    **options,
) -> FittedGrid:
    r"""The grid of ``steps`` steps minimising :math:`E` (module doc) for ``method`` on ``model``.

    Args:
        model: ``model(x, t)`` predicting ``prediction``, as for :func:`~sdekit.sample`.
        sde: a :class:`~sdekit.LinearSDE`.
        x_T: ``(batch, *data_shape)`` starting points to fit on (drawn from the prior); measure the
            result on others.
        steps: the grid's number of steps, >= 1.
        method: a deterministic fixed-step sampler of the registry.
        t_min: the last time (default ``sde.t_min``).
        candidates: candidate intervals of the dynamic programme, uniform in log-SNR (>= steps).
        teacher_substeps: DPM-Solver++(3M) steps of the teacher per candidate interval (>= 1).
        refine: run the coordinate refinement on the sampler itself.
        cond: the condition of a conditional model, as for :func:`~sdekit.sample`.
        **options: the sampler's options (``final``, ...), used in the refinement.
    """
    start = time.perf_counter()
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"sde must be a LinearSDE (the fit works in log-SNR), got {type(sde)}")
    spec = get_sampler(method)
    if spec.stochastic or spec.evals_per_step is None:
        raise ValueError(
            f"method must be a deterministic fixed-step sampler, got {spec.name!r} "
            f"(stochastic={spec.stochastic}, evals_per_step={spec.evals_per_step})"
        )
    check_prediction(prediction)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(candidates, int) or candidates < steps:
        raise ValueError(f"candidates must be an integer >= steps = {steps}, got {candidates!r}")
    if not isinstance(teacher_substeps, int) or teacher_substeps < 1:
        raise ValueError(f"teacher_substeps must be an integer >= 1, got {teacher_substeps!r}")
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2:
        raise ValueError("x_T must be a (batch, *data_shape) tensor of starting points")
    check_cond(cond, x_T.shape[0])
    t_min = check_t_min(sde, t_min)
    score = _Counted(model, sde, prediction, cond)

    # the teacher's fine grid, uniform in log-SNR; every teacher_substeps-th time is a candidate
    lattice = time_grid(sde, candidates * teacher_substeps, "logsnr", t_min=t_min)
    lattice = lattice.to(x_T.device)
    X, D = _teacher(score, sde, x_T, lattice, teacher_substeps)
    target = X[-1]
    data_dims = x_T.ndim - 1
    final = options.get("final", "auto")
    family = _FAMILY.get(spec.name)
    noise = NoiseSource()

    def criterion(ts: torch.Tensor) -> float:
        out = spec(score, sde, x_T, ts, noise=noise, **options)
        return float(_distance(out, target, data_dims))

    default = time_grid(sde, steps, spec.default_grid, t_min=t_min, device=x_T.device)
    criterion_default = criterion(default)
    if family is not None:
        path = _dynamic_programme(sde, lattice[::teacher_substeps], X, D, steps, family, final)
        index = [k * teacher_substeps for k in path]
    else:  # start from the log-SNR grid
        index = [round(i * (len(lattice) - 1) / steps) for i in range(steps + 1)]
    best = criterion(lattice[index])
    if refine:
        stride = teacher_substeps
        while stride >= 1:
            improved = False
            for pos in range(1, steps):
                for move in (-stride, stride):
                    trial = index.copy()
                    trial[pos] += move
                    if not trial[pos - 1] < trial[pos] < trial[pos + 1]:
                        continue
                    value = criterion(lattice[trial])
                    if value < best:
                        best, index, improved = value, trial, True
            if not improved:
                stride //= 2
    ts = lattice[index].clone()
    return FittedGrid(
        ts=ts,
        criterion=best,
        criterion_default=criterion_default,
        nfe=score.nfe,
        seconds=time.perf_counter() - start,
        method=spec.name,
    )
