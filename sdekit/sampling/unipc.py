r"""UniPC: a unified predictor-corrector for the probability-flow ODE, in data prediction.

Zhao, Bai, Rao, Zhou and Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models" (arXiv:2302.04867). With :math:`\lambda = \log(\alpha/\sigma)` and the data
prediction :math:`D` (Tweedie) as in :mod:`~sdekit.sampling.dpm_solver`, a step from
:math:`\lambda_i` to :math:`\lambda_{i+1} = \lambda_i + h` is exactly

.. math:: x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i
          + \alpha_{i+1}\int_0^h e^{-(h-u)} D(\lambda_i + u)\,\mathrm{d}u, \qquad
          \int_0^h e^{-(h-u)} D\,\mathrm{d}u = \sum_{m\ge 0} \psi_m(h)\, h^m D^{(m)}(\lambda_i),

with :math:`\psi_m(h) = h^{-m}\!\int_0^h e^{-(h-u)}u^m/m!\,\mathrm{d}u = h\,\varphi_{m+1}(-h)`
(:math:`\psi_0 = 1 - e^{-h}`, :math:`\psi_m = 1/m! - \psi_{m-1}/h`). Given data predictions at
nodes :math:`\lambda_i + r_k h` (:math:`r_k < 0` for earlier grid points, :math:`r = 1` for the end
of the step) and their divided differences :math:`\Delta_k = (D_k - D_i)/r_k`, both updates have the
form (paper, eqs. 7-8, data prediction, B(h) form)

.. math:: x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i + \alpha_{i+1}\Bigl[\psi_0 D_i
          + B(h)\sum_k \rho_k \Delta_k\Bigr], \qquad
          \sum_k \rho_k r_k^{m-1} = \frac{m!\,\psi_m(h)}{B(h)}, \quad m = 1, 2, \dots

- **UniP-p** (predictor) uses the :math:`p - 1` previous grid points: local error
  :math:`O(h^{p+1})`.
- **UniC-p** (corrector) adds the node :math:`r = 1`, the data prediction at the *predicted*
  :math:`\tilde x_{i+1}`; its local error is :math:`O(h^{p+2})` (Theorem 3.1: UniC raises the
  order by one). That model evaluation is the one the next step needs anyway (the next step's
  :math:`D_{i+1}`), so the corrector costs no evaluation: :math:`N` steps cost :math:`N` calls.
  The last step has no corrector (its evaluation would serve nothing else); the reference code and
  diffusers' ``UniPCMultistepScheduler`` do the same.

A square system is solved exactly and :math:`B(h)` cancels. Where there is one coefficient too few
(UniP-2 and UniC-1) the paper sets :math:`\rho = 1/2`, and then the choice of :math:`B(h)` matters:
``"bh1"`` is :math:`B(h) = h`, ``"bh2"`` is :math:`B(h) = 1 - e^{-h}` (the paper's
:math:`e^{h} - 1` with its data-prediction sign; with it UniP-2 is DPM-Solver++(2M)).

Orders warm up from 1 on the first steps. ``final`` ends the run as in
:mod:`~sdekit.sampling.dpm_solver`: ``"auto"`` (default) lowers long last steps and keeps short
ones (weight :math:`1/(1 + (h/0.4)^4)` of the full order), ``"lower_order"`` (the reference
code's and diffusers' choice) lowers the orders on the last steps on every grid,
``"full_order"`` keeps them (the convergence tests use it: the last step is then UniP-p, local
error :math:`O(h^{p+1})`), ``"zero"`` adds the second-order step to :math:`\sigma = 0` (one more
evaluation, which then also corrects the last step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from ..checks import check_choice
from ..linear import LinearSDE
from ..parameterization import to_x0
from ..sde import ScoreFn
from .dpm_solver import Final, _check_grid, _step_orders, final_step_to_zero, final_weight
from .noise import NoiseSource
from .registry import register, run_callback

Variant = Literal["bh1", "bh2"]


def psi(m: int, h: torch.Tensor) -> torch.Tensor:
    r""":math:`\psi_m(h) = h\,\varphi_{m+1}(-h)`, the weight of :math:`h^m D^{(m)}` (module doc).

    A Taylor series for :math:`h < 1` (the recursion loses :math:`m` digits to cancellation there),
    the recursion :math:`\psi_m = 1/m! - \psi_{m-1}/h` above.
    """
    series = torch.zeros_like(h)
    term = h / math.factorial(m + 1)
    for n in range(20):  # h < 1: 20 terms reach float64 round-off
        series = series + term
        term = term * (-h) / (m + n + 2)
    big = torch.where(h >= 1, h, torch.ones_like(h))
    rec = -torch.expm1(-big)
    for k in range(1, m + 1):
        rec = 1 / math.factorial(k) - rec / big
    return torch.where(h >= 1, rec, series)


def _solve(r: list[torch.Tensor], h: torch.Tensor, B: torch.Tensor, simplified: bool):
    r"""The coefficients :math:`a_k = B(h)\rho_k` of the divided differences :math:`\Delta_k`.

    ``r``: the node ratios (broadcastable tensors); solves
    :math:`\sum_k a_k r_k^{m-1} = m!\,\psi_m(h)`, or :math:`a = B(h)/2` for a single node when
    ``simplified`` (UniP-2 and UniC-1).
    """
    if not r:
        return []
    if simplified:
        return [0.5 * B]
    r = torch.broadcast_tensors(*r, h)[:-1]
    R = torch.stack(
        [torch.stack([rk ** (m - 1) for rk in r], -1) for m in range(1, len(r) + 1)], -2
    )
    g = torch.stack([math.factorial(m) * psi(m, h) for m in range(1, len(r) + 1)], -1)
    return list(torch.linalg.solve(R, g).unbind(-1))


def unipc_weights(
    h: torch.Tensor, r: list[torch.Tensor], variant: Variant = "bh1"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weights of one UniPC-p step (``p = len(r) + 1``), before the factor :math:`\alpha_{i+1}`.

    ``h`` is the step in :math:`\lambda`, ``r`` the ratios :math:`r_k = (\lambda_{i-k} -
    \lambda_i)/h < 0` of the ``p - 1`` previous nodes (broadcastable tensors). Returns ``pred``
    ``(..., 3)``, the weights of :math:`D_i, D_{i-1}, D_{i-2}` in UniP-p, and ``corr`` ``(..., 4)``,
    those of :math:`D_i, D_{i-1}, D_{i-2}, D_{i+1}` in UniC-p.
    """
    p = len(r) + 1
    B = h if variant == "bh1" else -torch.expm1(-h)
    psi0 = -torch.expm1(-h)
    tables = []
    for nodes, cols, simplified, width in (
        (r, list(range(1, p)), p == 2, 3),
        (r + [torch.ones_like(h)], list(range(1, p)) + [3], p == 1, 4),
    ):
        weights = [psi0] + [torch.zeros_like(h)] * (width - 1)
        for a, rk, col in zip(_solve(nodes, h, B, simplified), nodes, cols, strict=True):
            # a_k (D_k - D_i) / r_k
            weights[col] = weights[col] + a / rk
            weights[0] = weights[0] - a / rk
        tables.append(torch.stack(torch.broadcast_tensors(*weights), -1))
    return tables[0], tables[1]


def unipc_coefficients(
    sde: LinearSDE, ts: torch.Tensor, orders: list[int], variant: Variant = "bh1"
) -> dict[str, torch.Tensor]:
    r"""Float64 tables of the UniPC steps over ``ts`` with predictor orders ``orders``.

    Returns ``keep`` ``(n,)`` (:math:`\sigma_{i+1}/\sigma_i`), ``pred`` ``(n, 3)`` and ``corr``
    ``(n, 4)`` (:func:`unipc_weights` times :math:`\alpha_{i+1}`), ``alpha`` and ``sigma`` on the
    grid. Step ``i`` uses the nodes ``i - 1, ..., i - orders[i] + 1``.
    """
    ts = ts.to(torch.float64).cpu()
    log_alpha, sigma = sde.log_alpha(ts), sde.sigma(ts)
    if not bool((sigma > 0).all()):
        raise ValueError("ts must end at a time with sigma > 0 (UniPC steps in log-SNR)")
    lam = 0.5 * sde.log_snr(ts)
    h = lam[1:] - lam[:-1]
    pred = torch.zeros(len(orders), 3, dtype=torch.float64)
    corr = torch.zeros(len(orders), 4, dtype=torch.float64)
    order = torch.tensor(orders)
    for p in set(orders):  # the steps of one order at once
        i = torch.nonzero(order == p)[:, 0]
        r = [(lam[i - k] - lam[i]) / h[i] for k in range(1, p)]
        pred[i], corr[i] = unipc_weights(h[i], r, variant)
    alpha = torch.exp(log_alpha)
    return {
        "keep": torch.exp(log_alpha[1:] - log_alpha[:-1] - h),
        "pred": alpha[1:, None] * pred,
        "corr": alpha[1:, None] * corr,
        "alpha": alpha,
        "sigma": sigma,
    }


def unipc_multistep(
    score: ScoreFn,
    sde: LinearSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    order: int = 3,
    variant: Variant = "bh1",
    final: Final = "auto",
    noise: NoiseSource | None = None,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    r"""UniPC-``order`` (UniP-p with UniC-p, ``variant`` B(h)) over ``ts``: one score call a step.

    Integrates the probability-flow ODE from ``ts[0]`` to ``ts[-1]`` (see the module); with
    ``final="zero"`` it returns the estimate of :math:`x_0` after one more evaluation.
    ``callback(i, x)`` sees the corrected state at ``ts[i + 1]``; a tensor it returns replaces the
    state (the model evaluation that the next step uses is the predictor's, made before the
    callback).
    """
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"sde must be a LinearSDE (UniPC needs alpha, sigma), got {type(sde)}")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    check_choice("variant", variant, ("bh1", "bh2"))
    _check_grid(ts)
    steps = ts.shape[0] - 1
    orders, lowered = _step_orders(steps, order, final)
    c = unipc_coefficients(sde, ts, orders, variant)
    low = unipc_coefficients(sde, ts, lowered, variant)
    weight = final_weight(ts, sde, final)[:, None]
    for key in ("pred", "corr"):
        c[key] = weight * c[key] + (1 - weight) * low[key]
    c = {k: v.to(device=x.device, dtype=x.dtype) for k, v in c.items()}
    keep, pred, corr, alpha, sigma = c["keep"], c["pred"], c["corr"], c["alpha"], c["sigma"]
    t_batch = ts.to(device=x.device, dtype=x.dtype)

    def data_prediction(x: torch.Tensor, i: int) -> torch.Tensor:
        return to_x0(score(x, t_batch[i].expand(x.shape[0])), "score", x, alpha[i], sigma[i])

    history = [data_prediction(x, 0)]  # D_i, D_{i-1}, D_{i-2}
    for i in range(steps):
        base = keep[i] * x
        x_pred = base
        for j in range(orders[i]):
            x_pred = x_pred + pred[i, j] * history[j]
        if i == steps - 1 and final != "zero":
            x = x_pred
        else:
            d_new = data_prediction(x_pred, i + 1)
            x = base + corr[i, 3] * d_new
            for j in range(orders[i]):
                x = x + corr[i, j] * history[j]
            history.insert(0, d_new)
            del history[3:]
        x = run_callback(callback, i, x)
    if final == "zero":
        # the corrector of the last step used D at the predicted end point, the step to zero
        # extrapolates from the data predictions at the last two grid points
        x = final_step_to_zero(x, history[0], history[1], sde, ts)
    return x


_PAPER = "Zhao et al. 2023, UniPC (arXiv:2302.04867)"
_FAMILY = {
    "stochastic": False,
    "needs_marginal": True,
    "evals_per_step": 1,
    "default_grid": "logsnr",
}
# UniC-p makes UniPC-p of order p + 1 (Theorem 3.2): measured 3.8 for UniPC-3 (128-1024 steps)
# and 2.9-3.2 for UniPC-2 on the exact flow map of a Gaussian. (The warm-up's UniC-1 first step is
# third order locally, so on very fine grids the slope would fall to 3; its error constant, D''
# at T, is tiny.)
register("unipc", aliases=("UniPC",), order=4, paper=_PAPER + ", UniPC-3 (bh2)",
         fixed={"order": 3, "variant": "bh2"}, **_FAMILY)(unipc_multistep)  # fmt: skip
register("unipc_bh1", aliases=("UniPC bh1",), order=4, paper=_PAPER + ", UniPC-3 (bh1)",
         fixed={"order": 3, "variant": "bh1"}, **_FAMILY)(unipc_multistep)  # fmt: skip
register("unipc_2", aliases=("UniPC-2",), order=3, paper=_PAPER + ", UniPC-2 (bh2)",
         fixed={"order": 2, "variant": "bh2"}, **_FAMILY)(unipc_multistep)  # fmt: skip
