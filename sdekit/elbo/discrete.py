r"""DDPM's variational bound, term by term (Ho et al. 2020, eq. 5 and 13; Nichol & Dhariwal 2021, §3).

The chain of a :class:`~sdekit.DDPMSchedule` has levels :math:`i = 0, \dots, N-1` (0-based: level
:math:`i` is the paper's :math:`t = i + 1`) with :math:`q(x_i \mid x_0) = \mathcal N(\sqrt{\bar\alpha_i}
x_0, (1 - \bar\alpha_i) I)`. Its negative evidence lower bound is

.. math:: -\log p_\theta(x_0) \le L_\text{prior} + \sum_{i=1}^{N-1} L_i + L_0, \qquad
          L_\text{prior} = \mathrm{KL}\bigl(q(x_{N-1} \mid x_0)\,\Vert\,\mathcal N(0, I)\bigr),

.. math:: L_i = \mathbb E_{q(x_i \mid x_0)}\,\mathrm{KL}\bigl(q(x_{i-1} \mid x_i, x_0)\,\Vert\,
          p_\theta(x_{i-1} \mid x_i)\bigr), \qquad
          L_0 = -\mathbb E_{q(x_0^{\text{lvl}} \mid x_0)}\log p_\theta(x_0 \mid x_0^{\text{lvl}}),

where :math:`x_0^{\text{lvl}}` is the chain's level 0. The posterior is
:math:`q(x_{i-1} \mid x_i, x_0) = \mathcal N(\tilde\mu_i, \tilde\beta_i I)` with
:math:`\tilde\beta_i = \beta_i(1 - \bar\alpha_{i-1})/(1 - \bar\alpha_i)` (Ho et al. eq. 6-7), and the
model :math:`p_\theta(x_{i-1} \mid x_i) = \mathcal N(\mu_\theta, \Sigma_\theta)` has the mean of
Ho et al. eq. 11 from the network's :math:`\hat\varepsilon`. Both means are the same function of the
noise, so with :math:`x_i = \sqrt{\bar\alpha_i}x_0 + \sqrt{1 - \bar\alpha_i}\,\varepsilon`

.. math:: \tilde\mu_i - \mu_\theta = \frac{\beta_i}{\sqrt{\alpha_i(1 - \bar\alpha_i)}}
          (\hat\varepsilon - \varepsilon), \qquad
          L_i = \tfrac12\sum_d\Bigl[\log\frac{\Sigma_\theta}{\tilde\beta_i}
          + \frac{\tilde\beta_i}{\Sigma_\theta} - 1
          + \frac{\beta_i^2(\varepsilon - \hat\varepsilon)^2}{\alpha_i(1 - \bar\alpha_i)\Sigma_\theta}\Bigr],

which is computed as written (no cancellation between two means). The decoder's mean is
:math:`\hat x_0 = x_0 + \sqrt{(1 - \bar\alpha_0)/\bar\alpha_0}\,(\varepsilon - \hat\varepsilon)`.

**Reverse variance** :math:`\Sigma_\theta` (``variance``): ``"beta"`` (:math:`\beta_i`), ``"beta_tilde"``
(:math:`\tilde\beta_i`), or ``"learned"``, the interpolation of Nichol & Dhariwal eq. 15,
:math:`\Sigma_\theta = \exp(v\log\beta_i + (1 - v)\log\tilde\beta_i)` with :math:`v` an output of the
network (:class:`~sdekit.elbo.LearnedVariance`). :math:`\tilde\beta_0 = 0`, so at level 0 (the
decoder) :math:`\tilde\beta_1` stands in for it in all three, as in the reference code of both papers
(which also uses :math:`\tilde\beta_1` as the ``"beta"`` decoder's variance).

**Decoder** (``levels``): for data of :math:`L` levels (:math:`L = 256` for 8 bits, 17 for the
scikit-learn digits), pixels :math:`k \in \{0, \dots, L-1\}` sit at :math:`x_0 = 2k/(L-1) - 1` (the
map of :mod:`sdekit.data`) and the decoder is the discretized Gaussian of Ho et al. eq. 13, the
probability of the bin :math:`[x_0 - \frac{1}{L-1}, x_0 + \frac{1}{L-1}]` with the edge bins extended to
:math:`\pm\infty`, so the bound is one on :math:`-\log P(k)`, a probability. With ``levels=None`` the
data are continuous, the decoder is the Gaussian density :math:`\mathcal N(x_0; \hat x_0,
\Sigma_\theta)` and the bound is one on :math:`-\log p(x_0)`, a density.

**How the network is asked.** sdekit's networks take a continuous time. Level :math:`i` is given to
the model at the time :math:`t_i` of the model's SDE that has the same log-SNR
:math:`\lambda_i = \log(\bar\alpha_i/(1 - \bar\alpha_i))`, with the input rescaled to that SDE's
marginal, :math:`x = (\sigma(t_i)/\sqrt{1 - \bar\alpha_i})\,x_i` (:func:`level_times`); so any model
trained under any linear SDE is evaluated on the exact marginals it was trained on, for any
:math:`N`. Levels noisier than the SDE's horizon :math:`T` are given to the model at :math:`T`, which
is allowed only where :math:`T` is already pure noise (:math:`\mathrm{SNR}(T) \le 10^{-3}`: the
signal is below 3% of the noise there, and an :math:`\hat\varepsilon` changes by :math:`O(\mathrm{SNR})`);
otherwise, and for levels less noisy than the SDE at :math:`t = 0`, the schedule does not match the
SDE and the functions raise.

**Estimates.** :func:`ddpm_bound` sums all :math:`N` terms (one draw of :math:`x_i` each, as the
reference code does; :math:`N` network calls per batch) or estimates the sum by Monte Carlo,
:math:`\sum_i L_i \approx L_j/p_j` with :math:`j \sim p`, uniform or importance-sampled by
:class:`~sdekit.elbo.SecondMomentSampler` (:math:`p_i \propto \sqrt{\mathbb E[L_i^2]}`, Nichol &
Dhariwal §3.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ..checks import check_choice
from ..conditioning import Cond, call_model, check_cond
from ..discretization import DDPMSchedule
from ..linear import LinearSDE
from ..parameterization import Prediction, check_prediction, to_eps
from ..sde import broadcast_to_data
from .gaussian import discretized_gaussian_log_likelihood, gaussian_kl, gaussian_log_likelihood
from .importance import SecondMomentSampler

#: the reverse variance :math:`\Sigma_\theta`
Variance = Literal["beta", "beta_tilde", "learned"]
VARIANCES: tuple[str, ...] = get_args(Variance)

#: levels noisier than the SDE's T may be evaluated at T only where SNR(T) is at most this
PURE_NOISE_SNR = 1e-3


def check_levels(levels: int | None) -> int | None:
    if levels is not None and (
        isinstance(levels, bool) or not isinstance(levels, int) or levels < 2
    ):
        raise ValueError(
            f"levels must be None (continuous data) or an integer >= 2, got {levels!r}"
        )
    return levels


def pixels_to_model(x: torch.Tensor, levels: int | None) -> torch.Tensor:
    r"""The data in model space, float64: :math:`2k/(L-1) - 1` for integer pixels :math:`k`
    (``levels=L``), or ``x`` itself for continuous data (``levels=None``); raises on bad values."""
    check_levels(levels)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (batch, *data_shape), got {tuple(x.shape)}")
    if levels is None:
        if not x.is_floating_point():
            raise ValueError(
                f"x must be a float tensor of continuous data for levels=None, got {x.dtype}; "
                "pass levels=L for integer pixels"
            )
        y = x.to(torch.float64)
        if not bool(torch.isfinite(y).all()):
            raise ValueError("x contains NaN or inf")
        return y
    y = x.to(torch.float64)
    ok = torch.isfinite(y) & (y >= 0) & (y <= levels - 1) & (y == y.round())
    if not bool(ok.all()):
        bad = y[~ok].flatten()[:4].tolist()
        raise ValueError(
            f"x must hold integer pixel values in [0, {levels - 1}] for levels={levels} "
            f"(the discretized decoder needs them), got e.g. {bad}"
        )
    return 2 * y / (levels - 1) - 1


@dataclass(frozen=True)
class Chain:
    """The float64 tables of a schedule matched to a model's SDE, indexed by level ``(N,)``.

    Attributes:
        betas, alpha_bar, one_minus_alpha_bar: :math:`\\beta_i`, :math:`\\bar\\alpha_i`,
            :math:`1 - \\bar\\alpha_i` (computed without cancellation).
        log_beta, log_beta_tilde: :math:`\\log\\beta_i` and :math:`\\log\\tilde\\beta_i`, the latter
            with :math:`\\tilde\\beta_1` at level 0; ``log_beta_decoder`` the ``"beta"`` choice there.
        mean_coef: :math:`\\beta_i/\\sqrt{\\alpha_i(1 - \\bar\\alpha_i)}` (level 0:
            :math:`\\sqrt{(1 - \\bar\\alpha_0)/\\bar\\alpha_0}`, the decoder mean's).
        times, scale: the model's time :math:`t_i` and input scale of each level.
    """

    betas: torch.Tensor
    alpha_bar: torch.Tensor
    one_minus_alpha_bar: torch.Tensor
    log_beta: torch.Tensor
    log_beta_tilde: torch.Tensor
    log_beta_decoder: torch.Tensor
    mean_coef: torch.Tensor
    times: torch.Tensor
    scale: torch.Tensor

    def __len__(self) -> int:
        return self.betas.shape[0]

    def to(self, device) -> Chain:
        return Chain(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _check_schedule(schedule: DDPMSchedule) -> torch.Tensor:
    if not isinstance(schedule, DDPMSchedule):
        raise ValueError(f"schedule must be a DDPMSchedule, got {type(schedule).__name__}")
    betas = schedule.betas.to(torch.float64).cpu()
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(
            f"schedule must have at least 2 levels, got betas of shape {tuple(betas.shape)}"
        )
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("schedule.betas must lie in (0, 1)")
    return betas


def chain(schedule: DDPMSchedule, sde: LinearSDE) -> Chain:
    """The :class:`Chain` of ``schedule`` evaluated by a model of ``sde`` (see the module notes)."""
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"sde must be a LinearSDE (the model's), got {type(sde).__name__}")
    betas = _check_schedule(schedule)
    log_ab = torch.cumsum(torch.log1p(-betas), 0)
    ab = torch.exp(log_ab)
    om = -torch.expm1(log_ab)
    lam = log_ab - torch.log(om)
    ends = torch.tensor([0.0, sde.T], dtype=torch.float64)
    lam_0, lam_T = (float(v) for v in sde.log_snr(ends))
    if float(lam[0]) > lam_0:
        raise ValueError(
            f"schedule does not match the SDE: its least noisy level has log-SNR {float(lam[0]):.4g}, "
            f"above the SDE's at t = 0 ({lam_0:.4g}); the model never saw so little noise"
        )
    beyond = lam < lam_T
    if bool(beyond.any()) and math.exp(lam_T) > PURE_NOISE_SNR:
        raise ValueError(
            f"schedule does not match the SDE: levels {beyond.nonzero().flatten()[:3].tolist()}... "
            f"have log-SNR down to {float(lam.min()):.4g}, noisier than the SDE at T "
            f"({lam_T:.4g}, SNR {math.exp(lam_T):.2g} > {PURE_NOISE_SNR:g}, not pure noise); use a "
            "schedule within the SDE's range (sdekit.elbo.marginal_schedule) or an SDE with a larger T"
        )
    inside = torch.where(beyond, torch.full_like(lam, lam_T), lam)
    times = sde.log_snr_inverse(inside).clamp(0.0, sde.T)
    times = torch.where(beyond, torch.full_like(times, sde.T), times)
    scale = sde.sigma(times) / torch.sqrt(om)
    # posterior variance: beta_tilde_0 = 0, level 1's stands in for it (the reference codes' clipping)
    om_prev = torch.cat([om.new_zeros(1), om[:-1]])
    beta_tilde = betas * om_prev / om
    log_bt = torch.log(torch.cat([beta_tilde[1:2], beta_tilde[1:]]))
    log_beta = torch.log(betas)
    log_beta_decoder = torch.cat([log_bt[:1], log_beta[1:]])
    alphas = 1 - betas
    coef = betas / torch.sqrt(alphas * om)
    coef[0] = math.sqrt(float(om[0] / ab[0]))
    return Chain(betas, ab, om, log_beta, log_bt, log_beta_decoder, coef, times, scale)


def level_times(schedule: DDPMSchedule, sde: LinearSDE) -> torch.Tensor:
    """The time :math:`t_i` (float64, ``(N,)``, increasing) at which a model of ``sde`` is asked for
    level :math:`i` of ``schedule``: the time of equal log-SNR (see the module notes)."""
    return chain(schedule, sde).times


def marginal_schedule(sde: LinearSDE, times: torch.Tensor) -> DDPMSchedule:
    r"""The DDPM chain whose levels have the log-SNRs of ``sde`` at the increasing ``times`` in
    :math:`(0, T]`: :math:`\bar\alpha_i = \operatorname{sigmoid}(\lambda(t_i))`,
    :math:`\beta_i = 1 - \bar\alpha_i/\bar\alpha_{i-1}` with :math:`\bar\alpha_{-1} = 1`.

    For a VP SDE the chain's marginals are the SDE's at those times; for any linear SDE a model of it
    is evaluated at exactly ``times`` (:func:`level_times`). E.g. ``torch.linspace(sde.t_min, sde.T,
    N)`` discretizes the SDE's whole range, the discrete counterpart of
    :func:`~sdekit.elbo.continuous_bound`.
    """
    t = torch.as_tensor(times, dtype=torch.float64).cpu()
    if t.ndim != 1 or t.shape[0] < 2:
        raise ValueError("times must be a 1D tensor of at least 2 times")
    if not (bool((t[1:] > t[:-1]).all()) and float(t[0]) > 0 and float(t[-1]) <= sde.T):
        raise ValueError(f"times must be strictly increasing in (0, T] = (0, {sde.T}]")
    log_ab = torch.nn.functional.logsigmoid(sde.log_snr(t))
    prev = torch.cat([log_ab.new_zeros(1), log_ab[:-1]])
    return DDPMSchedule(-torch.expm1(log_ab - prev))


def prior_kl(schedule: DDPMSchedule, x0: torch.Tensor) -> torch.Tensor:
    r""":math:`L_\text{prior} = \mathrm{KL}(q(x_{N-1} \mid x_0)\,\Vert\,\mathcal N(0, I))
    = \frac12\sum_d\bigl[\bar\alpha(x_0^2 - 1) - \log(1 - \bar\alpha)\bigr]`, ``(batch,)``, in nats;
    ``x0`` in model space."""
    log_ab = float(torch.log1p(-_check_schedule(schedule)).sum())
    ab, om = math.exp(log_ab), -math.expm1(log_ab)
    x = x0.to(torch.float64)
    return (0.5 * (ab * (x**2 - 1) - math.log(om))).flatten(1).sum(1)


def log_variance(c: Chain, i: torch.Tensor, like: torch.Tensor, variance: str, v=None):
    """:math:`\\log\\Sigma_\\theta` at levels ``i``, shaped like ``like`` (``v`` for ``"learned"``)."""

    def g(table):
        return broadcast_to_data(table[i].to(like.dtype), like)

    if variance == "beta":
        return g(c.log_beta_decoder)
    if variance == "beta_tilde":
        return g(c.log_beta_tilde)
    return v * g(c.log_beta) + (1 - v) * g(c.log_beta_tilde)


def terms_from_eps(
    c: Chain,
    i: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    eps_hat: torch.Tensor,
    log_var: torch.Tensor,
    levels: int | None,
) -> torch.Tensor:
    r"""Elementwise :math:`L_i` from the noise and its estimate: the KL for :math:`i \ge 1`, the
    decoder's negative log-likelihood for :math:`i = 0` (all in ``x0``'s dtype)."""

    def g(table):
        return broadcast_to_data(table[i].to(x0.dtype), x0)

    err = g(c.mean_coef) * (noise - eps_hat)  # mu_theta - mu_tilde; at level 0, x0_hat - x0
    kl = gaussian_kl(err, g(c.log_beta_tilde), 0.0, log_var)
    mean = x0 + err  # the decoder's x0_hat; err carries its own coefficient at level 0
    if levels is None:
        nll = -gaussian_log_likelihood(x0, mean, log_var)
    else:
        nll = -discretized_gaussian_log_likelihood(x0, mean, log_var, levels=levels)
    return torch.where(broadcast_to_data(i == 0, x0), nll, kl)


def model_eps(
    model: Callable[..., torch.Tensor],
    sde: LinearSDE,
    c: Chain,
    x0: torch.Tensor,
    i: torch.Tensor,
    noise: torch.Tensor,
    *,
    prediction: Prediction,
    cond: Cond,
    dtype: torch.dtype,
    compute: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps_hat, raw model input)``: the network's noise estimate for :math:`x_i` in ``compute``
    precision, the network called in ``dtype`` at the level's time."""

    def g(table):
        return broadcast_to_data(table[i].to(compute), x0)

    x_i = g(c.alpha_bar).sqrt() * x0 + g(c.one_minus_alpha_bar).sqrt() * noise
    x_in = (g(c.scale) * x_i).to(dtype)
    t = c.times[i]
    out = call_model(model, x_in, t.to(dtype), cond)
    alpha, sigma = (broadcast_to_data(v.to(compute), x0) for v in sde.marginal(t))
    return to_eps(out.to(compute), prediction, x_in.to(compute), alpha, sigma), out


def ddpm_term(
    model: Callable[..., torch.Tensor],
    sde: LinearSDE,
    x: torch.Tensor,
    schedule: DDPMSchedule,
    level: int | torch.Tensor,
    noise: torch.Tensor,
    *,
    variance: Variance = "beta_tilde",
    prediction: Prediction = "eps",
    levels: int | None = None,
    cond: Cond = None,
) -> torch.Tensor:
    r"""One term :math:`L_i` per sample, ``(batch,)`` float64 nats, for the draw
    :math:`x_i = \sqrt{\bar\alpha_i}x_0 + \sqrt{1 - \bar\alpha_i}\,\text{noise}`.

    Args:
        model: ``model(x, t)`` (or ``model(x, t, cond)``) predicting ``prediction``, a network of
            ``sde``; a :class:`~sdekit.elbo.LearnedVariance` for ``variance="learned"``.
        sde: the linear SDE the model was trained with.
        x: the data: integer pixels with ``levels``, continuous data in model space without.
        schedule: the DDPM chain whose bound is computed.
        level: an int or a ``(batch,)`` integer tensor of levels in :math:`[0, N-1]`
            (0: the decoder).
        noise: the standard normal draw, shaped like ``x``.
        variance: one of :data:`VARIANCES`.
        prediction: what the model outputs, one of :data:`sdekit.parameterization.PREDICTIONS`.
        levels: the number of pixel levels :math:`L`, or ``None`` for continuous data.
        cond: the model's condition (:mod:`sdekit.conditioning`).
    """
    c, x0 = _prepare(model, sde, x, schedule, variance, prediction, levels, cond)
    i = torch.as_tensor(level, device=x0.device)
    if i.is_floating_point() or i.is_complex() or i.ndim > 1:
        raise ValueError(f"level must be an int or a (batch,) integer tensor, got {level!r}")
    i = i.expand(x0.shape[0]) if i.ndim == 0 else i
    if i.shape != (x0.shape[0],) or not bool(((i >= 0) & (i < len(c))).all()):
        raise ValueError(
            f"level must be an int or a ({x0.shape[0]},) tensor of levels in [0, {len(c) - 1}]"
        )
    if noise.shape != x.shape:
        raise ValueError(f"noise must be shaped like x {tuple(x.shape)}, got {tuple(noise.shape)}")
    noise = noise.to(x0)
    with torch.no_grad():
        return _term(model, sde, c, x0, i, noise, variance, prediction, levels, cond, x.dtype)


def _prepare(model, sde, x, schedule, variance, prediction, levels, cond):
    from .learned import check_trained_chain

    check_choice("variance", variance, VARIANCES)
    check_prediction(prediction)
    x0 = pixels_to_model(x, levels)
    check_cond(cond, x.shape[0])
    c = chain(schedule, sde)
    if variance == "learned":
        check_trained_chain(model, c)
    return c.to(x.device), x0


def _term(model, sde, c, x0, i, noise, variance, prediction, levels, cond, data_dtype):
    from .learned import take_v

    dtype = torch.float64 if data_dtype == torch.float64 else torch.float32
    eps_hat, out = model_eps(
        model, sde, c, x0, i, noise, prediction=prediction, cond=cond, dtype=dtype,
        compute=torch.float64,
    )  # fmt: skip
    v = take_v(model, out).to(torch.float64) if variance == "learned" else None
    log_var = log_variance(c, i, x0, variance, v)
    return terms_from_eps(c, i, x0, noise, eps_hat, log_var, levels).flatten(1).sum(1)


@dataclass
class DiscreteBound:
    """What :func:`ddpm_bound` computed, per sample, in nats.

    Attributes:
        prior: :math:`L_\\text{prior}`, ``(batch,)``.
        terms: with the exact sum, ``(batch, N)``: column 0 the decoder's :math:`L_0`, column
            :math:`i` the KL :math:`L_i`; with a Monte-Carlo estimate, ``(batch, samples)``, the
            sampled terms :math:`L_j` (not yet divided by :math:`p_j`).
        levels: the sampled levels ``(batch, samples)``, or ``None`` for the exact sum.
        probs: their probabilities :math:`p_j`, or ``None``.
        total: the bound :math:`L_\\text{prior} + \\sum_i L_i` (its estimate), ``(batch,)``.
        bpd: ``total`` in bits per dimension, :math:`\\text{total}/(D\\ln 2)`.
        nfe: network calls (each on the whole batch).
    """

    prior: torch.Tensor
    terms: torch.Tensor
    levels: torch.Tensor | None
    probs: torch.Tensor | None
    total: torch.Tensor
    bpd: torch.Tensor
    nfe: int

    @property
    def decoder(self) -> torch.Tensor:
        """:math:`L_0` (exact sum only)."""
        if self.levels is not None:
            raise ValueError("the decoder term is separate only in the exact sum (samples=None)")
        return self.terms[:, 0]

    @property
    def kl(self) -> torch.Tensor:
        """:math:`L_1, \\dots, L_{N-1}`, ``(batch, N - 1)`` (exact sum only)."""
        if self.levels is not None:
            raise ValueError("the KL terms are separate only in the exact sum (samples=None)")
        return self.terms[:, 1:]


def ddpm_bound(
    model: Callable[..., torch.Tensor],
    sde: LinearSDE,
    x: torch.Tensor,
    schedule: DDPMSchedule,
    *,
    variance: Variance = "beta_tilde",
    prediction: Prediction = "eps",
    levels: int | None = None,
    samples: int | None = None,
    sampler: SecondMomentSampler | None = None,
    cond: Cond = None,
    generator: torch.Generator | None = None,
) -> DiscreteBound:
    r"""DDPM's variational bound of ``x`` under ``model``: the prior term, every :math:`L_i`, their sum.

    Args:
        model, sde, x, variance, prediction, levels, cond: as in :func:`ddpm_term`.
        schedule: the DDPM chain (for ``variance="learned"`` the one the model was trained on).
        samples: ``None`` sums all :math:`N` terms (:math:`N` network calls); an integer :math:`K`
            estimates the sum by :math:`\frac1K\sum_k L_{j_k}/p_{j_k}` (:math:`K` calls).
        sampler: draws the levels of the estimate (and learns from its terms); uniform if ``None``.
        generator: for the noise and the sampled levels, on ``x``'s device.

    Returns:
        a :class:`DiscreteBound`; ``bpd`` is a bound on the bits per dimension of the pixels'
        probability with ``levels``, of the density of ``x`` without.
    """
    c, x0 = _prepare(model, sde, x, schedule, variance, prediction, levels, cond)
    N, B = len(c), x0.shape[0]
    if samples is not None and (
        isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
    ):
        raise ValueError(
            f"samples must be None (the exact sum) or an integer >= 1, got {samples!r}"
        )
    if sampler is not None:
        if samples is None:
            raise ValueError("sampler draws the levels of a Monte-Carlo estimate: pass samples too")
        if sampler.N != N:
            raise ValueError(f"sampler has N={sampler.N} levels, the schedule {N}")

    def draw():
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)

    def term(i):
        return _term(model, sde, c, x0, i, draw(), variance, prediction, levels, cond, x.dtype)

    drawn = probs = None
    with torch.no_grad():
        if samples is None:
            terms = torch.stack(
                [term(torch.full((B,), i, device=x0.device, dtype=torch.long)) for i in range(N)], 1
            )
            total_terms = terms.sum(1)
        else:
            cols, ids, ps = [], [], []
            for _ in range(samples):
                if sampler is None:
                    i = torch.randint(0, N, (B,), generator=generator, device=x0.device)
                    p = torch.full((B,), 1.0 / N, dtype=torch.float64, device=x0.device)
                else:
                    i, p = sampler.sample(B, generator=generator)
                cols.append(term(i))
                ids.append(i)
                ps.append(p)
                if sampler is not None:
                    sampler.update(i, cols[-1])
            terms, drawn, probs = torch.stack(cols, 1), torch.stack(ids, 1), torch.stack(ps, 1)
            total_terms = (terms / probs).mean(1)
    prior = prior_kl(schedule, x0)
    total = prior + total_terms
    D = x0[0].numel()
    return DiscreteBound(
        prior, terms, drawn, probs, total, total / (D * math.log(2)), terms.shape[1]
    )
