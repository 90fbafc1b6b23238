r"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension.

Along a solution of an ODE :math:`\dot x = \tilde f(x, t)` the density of the transported law obeys
the instantaneous change of variables (Chen et al. 2018, Theorem 1)

.. math:: \frac{\mathrm{d}}{\mathrm{d}t}\log p_t(x_t) = -\nabla\cdot\tilde f(x_t, t).

Applied to the probability-flow ODE :math:`\tilde f = f - \tfrac12 GG^\top s_\theta
- \tfrac12\nabla\cdot GG^\top` (Song et al. 2021, eq. 13), integrated from :math:`t_0` to :math:`T`
(Song et al. 2021, App. D.2, eq. 39–40):

.. math:: \log p_{t_0}(x) = \log p_T(x_T) + \int_{t_0}^{T} \nabla\cdot\tilde f(x_t, t)\,\mathrm{d}t.

The divergence is computed exactly (one backward pass per data dimension) or estimated by the
Hutchinson–Skilling trace estimator :math:`\nabla\cdot\tilde f \approx \varepsilon^\top
(\partial\tilde f/\partial x)\,\varepsilon` with :math:`\mathbb E[\varepsilon\varepsilon^\top] = I`
(Hutchinson 1989; Skilling 1989; Grathwohl et al. 2019, FFJORD). The probe is drawn once per sample
and held fixed for the whole solve, so the integrand is a smooth function of time and the adaptive
solver sees one ODE; the estimate of the integral is then unbiased.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torchdiffeq import odeint

from .checks import NONFINITE_HINT, check_choice, check_float_input, check_output, check_positive
from .conditioning import Cond, call_model, check_cond
from .linear import LinearSDE
from .ode_solvers import StepSizeCollapse, dopri5, rms_norm
from .parameterization import Prediction, check_prediction, score_fn
from .sampling.ode import ADAPTIVE as ADAPTIVE_METHODS
from .sampling.ode import ADAPTIVE_ORDER, initial_step
from .sde import SDE

FixedGridMethod = Literal["euler", "midpoint", "heun2", "heun3", "rk4"]
Divergence = Literal["exact", "hutchinson"]
Probe = Literal["rademacher", "gaussian"]
FIXED_GRID_METHODS = get_args(FixedGridMethod)
#: sdekit's own Dormand-Prince 5(4) (:func:`sdekit.ode_solvers.dopri5`): a step size per sample
PER_SAMPLE = "dopri5_per_sample"
DIVERGENCES = get_args(Divergence)
PROBES = get_args(Probe)

Drift = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LikelihoodInfo:
    """What :func:`log_likelihood` integrated, per sample.

    Attributes:
        nfe: evaluations of the probability-flow drift (score-model calls) over the whole solve.
        prior_log_prob: :math:`\\log p_T(x_T)`, shape ``(batch,)``.
        divergence_integral: :math:`\\int_{t_0}^T \\nabla\\cdot\\tilde f\\,\\mathrm{d}t`,
            shape ``(batch,)``.
        x_T: the end point of the probability-flow ODE, shaped like ``x``.
        steps: accepted steps of each sample, ``(batch,)``, with ``method="dopri5_per_sample"``;
            ``None`` for torchdiffeq's methods, which step the whole batch together.
    """

    nfe: int
    prior_log_prob: torch.Tensor
    divergence_integral: torch.Tensor
    x_T: torch.Tensor
    steps: torch.Tensor | None = None


def exact_divergence(drift: Drift, x: torch.Tensor, t: torch.Tensor):
    r"""``(f, div f)``: the drift and its exact divergence :math:`\sum_i \partial f_i/\partial x_i`.

    One forward pass and one backward pass per data dimension :math:`D` (the diagonal of the
    Jacobian read off row by row), so it suits low dimensions. The drift must treat batch elements
    independently (no batch statistics), as any score model at evaluation does.
    """
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        f = drift(x_, t)
        rows = f.flatten(1)
        div = torch.zeros(x.shape[0], dtype=f.dtype, device=f.device)
        for i in range(rows.shape[1]):
            (grad,) = torch.autograd.grad(rows[:, i].sum(), x_, retain_graph=True)
            div = div + grad.flatten(1)[:, i]
    return f.detach(), div.detach()


def hutchinson_divergence(drift: Drift, x: torch.Tensor, t: torch.Tensor, probes: torch.Tensor):
    r"""``(f, estimate of div f)``: :math:`\frac1K\sum_k \varepsilon_k^\top J_f\,\varepsilon_k`.

    ``probes`` has shape ``(K, *x.shape)`` with :math:`\mathbb E[\varepsilon\varepsilon^\top] = I`
    (Hutchinson 1989); one forward pass and ``K`` vector-Jacobian products.
    """
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        f = drift(x_, t)
        div = torch.zeros(x.shape[0], dtype=f.dtype, device=f.device)
        for eps in probes:
            (vjp,) = torch.autograd.grad((f * eps).sum(), x_, retain_graph=True)
            div = div + (vjp * eps).flatten(1).sum(1)
    return f.detach(), div.detach() / probes.shape[0]


def draw_probes(
    x: torch.Tensor, probes: int, kind: Probe, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``probes`` Rademacher (:math:`\\pm1`) or standard normal tensors shaped like ``x``."""
    shape = (probes, *x.shape)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    signs = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return (2 * signs - 1).to(x.dtype)


def _per_sample_norm(state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The worst sample's error: each sample's RMS over its data and its log-density term."""
    x, logp = state
    per_sample = torch.maximum(x.flatten(1).pow(2).mean(1).sqrt(), logp.abs())
    return per_sample.max()


def _check_options(method, steps, divergence, probes, probe, t_min, T, check_every):
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe", probe, PROBES)
    if not (isinstance(probes, int) and probes >= 1):
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    if divergence == "exact" and probes != 1:
        raise ValueError(f"probes applies to divergence='hutchinson' only, got probes={probes}")
    check_choice("method", method, (PER_SAMPLE, *ADAPTIVE_METHODS, *FIXED_GRID_METHODS))
    if not (isinstance(check_every, int) and check_every >= 1):
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    if check_every != 1 and method != PER_SAMPLE:
        raise ValueError(
            f"check_every applies to method={PER_SAMPLE!r} only, got check_every={check_every} "
            f"with method={method!r}"
        )
    if steps is None:
        if method not in (PER_SAMPLE, *ADAPTIVE_METHODS):
            raise ValueError(
                f"method={method!r} steps on a fixed grid: give steps (an integer >= 1), or use "
                f"an adaptive method, one of {(PER_SAMPLE, *ADAPTIVE_METHODS)}"
            )
    else:
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if method not in FIXED_GRID_METHODS:
            raise ValueError(
                f"steps={steps} needs a fixed-grid method, one of {FIXED_GRID_METHODS}; "
                f"got method={method!r}"
            )
    if not 0 <= t_min < T:
        raise ValueError(f"t_min must lie in [0, T) = [0, {T}), got {t_min}")


def _check_model(model, sde: SDE, prediction: Prediction) -> None:
    if isinstance(model, torch.nn.Module) and any(m.training for m in model.modules()):
        raise ValueError(
            "model is in training mode: dropout and batch statistics would make the ODE's drift "
            "random (a different likelihood at every call) and couple the samples; call "
            "model.eval() first (and model.train() to resume training)"
        )
    if prediction != "score" and not isinstance(sde, LinearSDE):
        raise ValueError(
            f"prediction={prediction!r} needs a LinearSDE's alpha and sigma to convert the model's "
            f"output to a score, got {type(sde).__name__}; on a general SDE pass a score model "
            "(prediction='score')"
        )


def _check_result(log_p, integral, x_T) -> None:
    """Once, at the end: say which samples failed and which term made them fail."""
    bad = ~torch.isfinite(log_p)
    if not bool(bad.any()):
        return
    rows = bad.nonzero().flatten()
    shown = rows[:8].tolist()
    flow = ~torch.isfinite(x_T.flatten(1)).all(1) | ~torch.isfinite(integral)
    if bool(flow[rows].any()):
        why = (
            "the ODE's end point x_T or the divergence integral is NaN or inf: the model returned "
            f"NaN or inf along the flow, or the solve diverged; {NONFINITE_HINT}"
        )
    else:
        why = (
            "the ODE solve is finite but the prior log-density of its end point x_T is not: check "
            "prior_log_prob, and that x_T lies in the prior's support"
        )
    raise FloatingPointError(
        f"log_likelihood is non-finite for {len(rows)} of {log_p.shape[0]} samples "
        f"(indices {shown}{', ...' if len(rows) > 8 else ''}): {why}"
    )


def log_likelihood(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x: torch.Tensor,
    *,
    prediction: Prediction = "score",
    method: str = PER_SAMPLE,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    divergence: Divergence = "exact",
    probes: int = 1,
    probe: Probe = "rademacher",
    generator: torch.Generator | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    t_min: float | None = None,
    cond: Cond = None,
    check_every: int = 1,
) -> tuple[torch.Tensor, LikelihoodInfo]:
    r""":math:`\log p_{t_0}(x)` of the model's probability-flow ODE, shape ``(batch,)``, in nats.

    Solves the probability-flow ODE jointly with the divergence integral from :math:`t_0` to
    :math:`T` (Song et al. 2021, App. D.2, eq. 39–40; Chen et al. 2018, Theorem 1):

    .. math:: \log p_{t_0}(x) = \log p_T(x_T)
              + \int_{t_0}^{T}\nabla\cdot\tilde f(x_t, t)\,\mathrm{d}t, \qquad
              \tilde f = f - \tfrac12 GG^\top s_\theta - \tfrac12\nabla\cdot GG^\top,

    on ``x``'s device and dtype. The result is evaluation only (no gradient to the model's
    parameters). The error of a step is measured per sample (RMS over the data dimensions, together
    with the log-density term), so the tolerance means the same for every sample whatever the
    batch. With ``method="dopri5_per_sample"`` (:func:`sdekit.ode_solvers.dopri5`) each sample is
    its own ODE with its own step sizes and acceptance, on device tensors, with no host decision
    per step; with torchdiffeq's methods (:func:`torchdiffeq.odeint`) the whole batch is one ODE
    system, takes the same steps, and the worst sample decides each of them.

    Args:
        model: ``model(x, t)`` predicting ``prediction``, returning a tensor shaped like ``x``;
            for ``"score"`` any score function, e.g. :meth:`sdekit.GaussianMixture.score_fn`. A
            network (``nn.Module``) must be in eval mode, else ``ValueError``: the ODE and the
            divergence need a deterministic drift that treats samples independently, so dropout
            and batch norm must be off (``model.eval()``). The check sees an ``nn.Module`` only,
            not a plain function that calls one.
        sde: the forward SDE (a :class:`~sdekit.LinearSDE` unless ``prediction="score"``); with
            a state-dependent diffusion the divergence includes the second derivatives
            :math:`-\tfrac12\sum_i\partial_{x_i}^2 G_i^2` of :math:`\nabla\cdot\tilde f`.
        x: data, ``(batch, *data_shape)`` with batch >= 1, float32 or float64, finite.
        prediction: one of :data:`sdekit.parameterization.PREDICTIONS`.
        method: ``"dopri5_per_sample"`` (the default: sdekit's Dormand-Prince 5(4) with a step
            size per sample, as few or fewer evaluations than torchdiffeq's ``"dopri5"`` at the
            same worst-sample error and no host decision per step; see the likelihood guide and
            ``benchmarks/likelihood.py``), an adaptive torchdiffeq method (``"dopri5"``, ...)
            or, with ``steps``, a fixed-grid one (``"euler"``, ``"midpoint"``, ``"heun2"``,
            ``"heun3"``, ``"rk4"``).
        rtol, atol: tolerances of an adaptive method.
        steps: a uniform grid of ``steps`` steps from :math:`t_0` to :math:`T`, so that the number
            of evaluations is known in advance (``steps`` times the stages: 1, 2, 2, 3, 4)
            and every rank of a distributed run does the same work.
        divergence: ``"exact"`` (one backward pass per data dimension and evaluation) or
            ``"hutchinson"`` (``probes`` vector-Jacobian products per evaluation; unbiased).
        probes: Hutchinson probes per sample, averaged.
        probe: ``"rademacher"`` or ``"gaussian"``; drawn once per sample before the solve.
        generator: for the probes, on ``x``'s device.
        prior_log_prob: :math:`\log p_T` as a function of ``x_T`` returning ``(batch,)``; defaults
            to ``sde.prior_log_prob``. Pass the exact :math:`p_T` to remove the prior mismatch.
        t_min: the start time :math:`t_0` in :math:`[0, T)`; defaults to ``sde.t_min``. The result
            is the log-density of the model's :math:`p_{t_0}`.
        cond: the condition of a conditional model (see :mod:`sdekit.conditioning`), passed as
            ``model(x, t, cond)``: the result is then :math:`\log p_{t_0}(x \mid \text{cond})`.
        check_every: with ``method="dopri5_per_sample"``, the solver's iterations between two
            reads of "have all samples arrived?" by the host, its only synchronisation; samples
            that arrive meanwhile take zero-length steps (see :func:`sdekit.ode_solvers.dopri5`).

    Returns:
        ``(log_p, info)``: ``log_p`` of shape ``(batch,)`` and a :class:`LikelihoodInfo`.

    Raises:
        FloatingPointError: when the result is not finite (checked once, at the end), naming the
            samples and whether the flow or the prior failed; or when an adaptive solver's step
            size collapses (a NaN or inf drift).

    The model is called at times in :math:`[t_0, T]` only: an adaptive solver's first step is
    chosen by :func:`sdekit.sampling.ode.initial_step` (two extra drift evaluations, counted in
    ``info.nfe``) instead of torchdiffeq's probe, which can leave the interval, and :math:`T` is
    a step boundary, so no accepted step crosses it. ``"dopri5_per_sample"`` makes
    :math:`2 + 6\,n` drift evaluations for :math:`n` iterations (the hardest sample's accepted
    and rejected steps, rounded up to ``check_every``).
    """
    check_prediction(prediction)
    t0 = sde.t_min if t_min is None else float(t_min)
    T = sde.T
    _check_options(method, steps, divergence, probes, probe, t0, T, check_every)
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"x must be a tensor of shape (batch, *data_shape) with batch >= 1, got {shape}"
        )
    if x.dtype not in (torch.float32, torch.float64):
        # the ODE state carries the schedule arithmetic and the log-density: never half precision
        raise ValueError(
            f"x must be a float32 or float64 tensor, got {x.dtype}; convert it with x.float() or "
            "x.double()"
        )
    check_float_input("x", x, fix="the likelihood of a NaN or inf point is undefined")
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    _check_model(model, sde, prediction)
    prior = sde.prior_log_prob if prior_log_prob is None else prior_log_prob

    check_cond(cond, x.shape[0])

    def checked_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return check_output("model", call_model(model, x_t, t, cond), x_t)

    ode = sde.probability_flow(score_fn(checked_model, sde, prediction))

    if divergence == "exact":
        drift_and_div = exact_divergence
    else:
        eps = draw_probes(x, probes, probe, generator)

        def drift_and_div(drift, x_t, t):
            return hutchinson_divergence(drift, x_t, t, eps)

    def func(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        x_t = state[0]
        # the clamp only absorbs round-off in t: no step leaves [t0, T] (see the docstring)
        t_batch = t.clamp(t0, T).to(x_t.dtype).expand(x_t.shape[0])
        return drift_and_div(ode.drift, x_t, t_batch)

    if method == PER_SAMPLE:
        log_p, info = _solve_per_sample(
            drift_and_div, ode, x, t0, T, rtol, atol, check_every, prior
        )
        _check_result(log_p, info.divergence_integral, info.x_T)
        return log_p, info

    ts = torch.tensor([t0, T], dtype=x.dtype, device=x.device)
    if steps is None:
        with torch.no_grad():
            first = initial_step(
                ode,
                x.detach(),
                ts[0],
                ts[1],
                order=ADAPTIVE_ORDER[method] - 1,
                rtol=rtol,
                atol=atol,
            )
        options = {"step_t": ts[1:], "norm": _per_sample_norm, "first_step": first}
    else:
        grid = torch.linspace(t0, T, steps + 1, dtype=x.dtype, device=x.device)
        options = {"grid_constructor": lambda *_: grid}
    state0 = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    with torch.no_grad():
        try:
            xs, integrals = odeint(
                func, state0, ts, method=method, rtol=rtol, atol=atol, options=options
            )
        except AssertionError as error:
            if "underflow in dt" not in str(error):
                raise
            raise FloatingPointError(
                f"log_likelihood: the ODE solver {method!r} could not take a step (its step size "
                f"fell to {error}); the drift or its divergence is likely NaN or inf: "
                f"{NONFINITE_HINT}"
            ) from None
    x_T, integral = xs[-1], integrals[-1]
    prior_term = prior(x_T)
    log_p = prior_term + integral
    _check_result(log_p, integral, x_T)
    return log_p, LikelihoodInfo(ode.nfe, prior_term, integral, x_T)


def _solve_per_sample(drift_and_div, ode, x, t0, T, rtol, atol, check_every, prior):
    """The joint ODE of ``(x_t, divergence integral)`` as one ``(batch, D + 1)`` state per sample,
    solved by :func:`sdekit.ode_solvers.dopri5` with the per-sample norm of the torchdiffeq path:
    the larger of the RMS over the data and the log-density term."""
    D = x[0].numel()

    def func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f, div = drift_and_div(ode.drift, y[:, :D].reshape(x.shape), t)
        return torch.cat([f.flatten(1), div[:, None]], 1)

    def norm(v: torch.Tensor) -> torch.Tensor:
        return torch.maximum(rms_norm(v[:, :D]), v[:, D].abs())

    y0 = torch.cat([x.detach().flatten(1), x.new_zeros(x.shape[0], 1)], 1)
    with torch.no_grad():
        try:
            y, stats = dopri5(
                func, y0, t0, T, rtol=rtol, atol=atol, norm=norm, check_every=check_every
            )
        except StepSizeCollapse as error:
            rows, batch = error.rows, x.shape[0]
            raise FloatingPointError(
                f"log_likelihood: the ODE solver {PER_SAMPLE!r} could not take a step for "
                f"{len(rows)} of {batch} samples (indices {rows[:8]}"
                f"{', ...' if len(rows) > 8 else ''}): its step size collapsed; the drift or its "
                f"divergence is likely NaN or inf there: {NONFINITE_HINT}"
            ) from None
    x_T, integral = y[:, :D].reshape(x.shape), y[:, D]
    prior_term = prior(x_T)
    info = LikelihoodInfo(ode.nfe, prior_term, integral, x_T, steps=stats.accepted)
    return prior_term + integral, info


def bits_per_dim(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    pixels: torch.Tensor,
    *,
    dequantize: str | None = "uniform",
    levels: int = 256,
    generator: torch.Generator | None = None,
    **likelihood_kwargs,
) -> tuple[torch.Tensor, LikelihoodInfo]:
    r"""Bits per dimension of quantized images under a model of data scaled to :math:`[-1, 1]`.

    For 8-bit images (``levels`` :math:`L = 256`) the pixels :math:`v \in \{0, \dots, 255\}^D` are
    dequantized to :math:`y = v + u`, :math:`u \sim \mathcal U[0, 1)^D` (``dequantize="uniform"``;
    Theis et al. 2016), and mapped to the model's space by :math:`x = 2y/L - 1`, whose Jacobian is
    :math:`(2/L)^D`. The density of :math:`y` in pixel units is then

    .. math:: \log p_y(y) = \log p_x(x) + D\log\tfrac{2}{L},

    and since :math:`P(v) = \int_{[0,1)^D} p_y(v + u)\,\mathrm{d}u \ge
    \exp\mathbb E_u\log p_y(v + u)` (Jensen), the bits per dimension of one draw of :math:`u`,
    averaged over :math:`u`, are an upper bound of :math:`-\log_2 P(v)/D`:

    .. math:: \mathrm{bpd} = -\frac{\log p_y(y)}{D\ln 2}
              = -\frac{\log p_x(x)}{D\ln 2} + \log_2\frac{L}{2}
              \overset{L = 256}{=} -\frac{\log p_x(x)}{D\ln 2} + 7.

    (The often-quoted offset 8 belongs to data scaled to :math:`[0, 1]`, log-det
    :math:`D\log\frac1{256}`.) With ``dequantize=None`` the pixels are taken as already continuous
    values in :math:`[0, L)` and the result is :math:`-\log_2 p_y(y)/D` at those points, without
    the bound's meaning. The model should have been trained on data mapped the same way, e.g.
    dequantized :math:`2(v + u)/L - 1`.

    Args:
        model, sde: as in :func:`log_likelihood`.
        pixels: ``(batch, *data_shape)``; integer values in :math:`[0, L - 1]` (``uint8`` or any
            dtype) with ``dequantize="uniform"``; values in :math:`[0, L)` with ``dequantize=None``.
        dequantize: ``"uniform"`` or ``None``.
        levels: the number :math:`L \ge 2` of pixel values: 256 for 8 bits, 17 for scikit-learn's
            digits (0..16).
        generator: draws the dequantization noise and then the Hutchinson probes, on the pixels'
            device.
        **likelihood_kwargs: passed to :func:`log_likelihood`. The model space is float64 if
            ``pixels`` is, else float32.

    Returns:
        ``(bpd, info)``: ``bpd`` of shape ``(batch,)`` and :func:`log_likelihood`'s info (in
        model space).
    """
    check_choice("dequantize", dequantize, ("uniform", None))
    if not (isinstance(levels, int) and levels >= 2):
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    dtype = pixels.dtype if pixels.dtype == torch.float64 else torch.float32
    y = pixels.to(dtype)
    if dequantize == "uniform":
        if not bool(((y >= 0) & (y <= levels - 1) & (y == y.round())).all()):
            raise ValueError(
                f"pixels must be integers in [0, {levels - 1}] for dequantize='uniform'"
            )
        y = y + torch.rand(y.shape, generator=generator, device=y.device, dtype=dtype)
    elif not bool(((y >= 0) & (y < levels)).all()):
        raise ValueError(f"pixels must lie in [0, {levels}) for dequantize=None")
    D = y[0].numel()
    x = 2 * y / levels - 1
    log_p, info = log_likelihood(model, sde, x, generator=generator, **likelihood_kwargs)
    log_p_pixels = log_p + D * math.log(2 / levels)
    return -log_p_pixels / (D * math.log(2)), info
