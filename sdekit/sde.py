r"""The SDE abstraction: a forward SDE, its reverse-time SDE and its probability-flow ODE.

A forward SDE on data :math:`x \in \mathbb{R}^{d}` (any data shape) with diagonal diffusion,

.. math:: \mathrm{d}x = f(x, t)\,\mathrm{d}t + G(x, t)\,\mathrm{d}w, \qquad t \in [0, T],

has the reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6 and App. D, eq. 17)

.. math:: \mathrm{d}x = \bigl[f - GG^\top \nabla_x \log p_t - \nabla\cdot(GG^\top)\bigr]\mathrm{d}t
          + G\,\mathrm{d}\bar w,

integrated from :math:`T` down to 0, and the probability-flow ODE (Song et al. 2021, eq. 13 and App. D,
eq. 18) whose solutions share the marginals :math:`p_t`:

.. math:: \frac{\mathrm{d}x}{\mathrm{d}t} = f - \tfrac12 GG^\top \nabla_x \log p_t
          - \tfrac12 \nabla\cdot(GG^\top).

The divergence term vanishes when :math:`G` does not depend on :math:`x`; it matters for a
state-dependent diffusion.

Conventions: ``x`` has shape ``(batch, *data_shape)`` with at least one data dimension, ``t`` has shape
``(batch,)``. ``diffusion(x, t)`` returns either shape ``(batch,)`` (a scalar :math:`g(t)` per sample) or
``x.shape`` (a diagonal, state-dependent :math:`G(x, t)` whose entry :math:`i` depends on :math:`x_i`
only).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import nn

from .checks import check_output, check_positive

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def broadcast_to_data(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample ``(batch,)`` tensor to ``(batch, 1, ..., 1)`` so it broadcasts over ``x``."""
    if v.shape == x.shape:
        return v
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def checked_drift(sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sde.drift(x, t)``, which must be a tensor shaped like ``x`` (raises naming the SDE)."""
    return check_output(f"{type(sde).__name__}.drift", sde.drift(x, t), x)


def checked_diffusion(sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sde.diffusion(x, t)``, which must be shaped ``(batch,)`` or like ``x``."""
    name = f"{type(sde).__name__}.diffusion"
    return check_output(name, sde.diffusion(x, t), x, per_sample_ok=True)


def checked_score(score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``score_fn(x, t)`` (the model's score), which must be a tensor shaped like ``x``."""
    return check_output("the score model (score_fn)", score_fn(x, t), x)


class SDE(abc.ABC):
    r"""A forward SDE :math:`\mathrm{d}x = f(x,t)\,\mathrm{d}t + G(x,t)\,\mathrm{d}w` on :math:`[0, T]`.

    Subclass it and define :meth:`drift` and :meth:`diffusion`; :meth:`reverse` and
    :meth:`probability_flow` then come for free. Override :meth:`diffusion_divergence` when the
    diagonal diffusion entry :math:`G_i` depends on more than :math:`x_i`, or when a closed form is
    cheaper than autograd.

    Args:
        T: the time horizon, > 0.
        t_min: the smallest time a sampler integrates to, in [0, T). Score models are not trained
            at :math:`t = 0` where :math:`p_t` can be singular.
    """

    def __init__(self, T: float = 1.0, t_min: float = 0.0):
        self.T = check_positive("T", T)
        if not 0 <= t_min < T:
            raise ValueError(f"t_min must lie in [0, T) = [0, {T}), got {t_min}")
        self.t_min = float(t_min)

    @abc.abstractmethod
    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The drift :math:`f(x, t)`, shaped like ``x``."""

    @abc.abstractmethod
    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The diffusion: :math:`g(t)` of shape ``(batch,)`` or diagonal :math:`G(x, t)` shaped like ``x``."""

    def diffusion_squared(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """:math:`GG^\\top` (diagonal), broadcastable against ``x``."""
        return broadcast_to_data(checked_diffusion(self, x, t), x) ** 2

    def diffusion_divergence(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r""":math:`[\nabla\cdot(GG^\top)]_i = \partial_{x_i} G_i^2` for a diagonal :math:`G`.

        Zero when the diffusion does not depend on ``x``; otherwise one autograd pass over
        :math:`\sum_i G_i^2`, exact when :math:`G_i` depends on :math:`x_i` alone. When ``x`` is
        itself part of a graph (``x.requires_grad``: the divergence of the probability-flow drift in
        :func:`~sdekit.likelihood.log_likelihood`) the pass keeps its graph, so that the
        second derivatives :math:`\partial^2_{x_i} G_i^2` of :math:`\nabla\cdot\tilde f` are
        differentiated too rather than dropped.
        """
        with torch.enable_grad():
            in_graph = x.requires_grad
            x_ = x if in_graph else x.detach().requires_grad_(True)
            G = checked_diffusion(self, x_, t)
            if G.shape != x.shape or not G.requires_grad:
                return torch.zeros_like(x)
            (div,) = torch.autograd.grad((G**2).sum(), x_, create_graph=in_graph, allow_unused=True)
        return torch.zeros_like(x) if div is None else div

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Samples from the prior :math:`p_T` (where this SDE knows it)."""
        raise NotImplementedError(f"{type(self).__name__} has no known prior distribution")

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior at ``x``, summed over data dimensions: shape ``(batch,)``."""
        raise NotImplementedError(f"{type(self).__name__} has no known prior density")

    def reverse(self, score_fn: ScoreFn) -> ReverseSDE:
        """The reverse-time SDE driven by ``score_fn(x, t)`` :math:`\\approx \\nabla_x \\log p_t(x)`."""
        return ReverseSDE(self, score_fn)

    def probability_flow(self, score_fn: ScoreFn) -> ProbabilityFlowODE:
        """The probability-flow ODE driven by ``score_fn``; callable as ``ode(t, x)`` for torchdiffeq."""
        return ProbabilityFlowODE(self, score_fn)


class ReverseSDE(SDE):
    r"""Reverse-time SDE of ``forward`` (Song et al. 2021, eq. 6; App. D, eq. 17).

    Indexed by forward time: integrate it from ``T`` down to ``t_min`` with negative steps, e.g.
    ``simulate(reverse, x_T, torch.linspace(T, t_min, n))``. Its drift is
    :math:`f - GG^\top s_\theta - \nabla\cdot(GG^\top)` and its diffusion is the forward :math:`G`.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn):
        super().__init__(forward.T, forward.t_min)
        self.forward, self.score_fn = forward, score_fn

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        fwd = self.forward
        return (
            checked_drift(fwd, x, t)
            - fwd.diffusion_squared(x, t) * checked_score(self.score_fn, x, t)
            - fwd.diffusion_divergence(x, t)
        )

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return checked_diffusion(self.forward, x, t)

    def prior_sample(self, shape, **kwargs) -> torch.Tensor:
        return self.forward.prior_sample(shape, **kwargs)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward.prior_log_prob(x)


class ProbabilityFlowODE(nn.Module):
    r"""Probability-flow ODE :math:`\dot x = f - \tfrac12 GG^\top s_\theta - \tfrac12\nabla\cdot(GG^\top)`.

    (Song et al. 2021, eq. 13; App. D, eq. 18.) ``ode(t, x)`` follows torchdiffeq's convention: ``t`` a
    scalar tensor, broadcast over the batch. ``nfe`` counts calls of the drift (score evaluations).
    It is an ``nn.Module`` so that ``torchdiffeq.odeint_adjoint`` finds a score network's parameters.

    ``ode(t, x)`` holds ``t`` in the SDE's domain :math:`[0, T]`, so that
    ``torchdiffeq.odeint(ode, x_T, torch.tensor([T, t_min]))`` is safe: an adaptive torchdiffeq
    solver asks for times outside the interval twice, in its first step-size probe (which ignores
    ``step_t``; t = -9 under VP on centred data) and in a last step past the end time that it
    interpolates back (t < 0 under VE). Those evaluations only steer the step size; for the score
    model to see nothing outside ``[t_min, T]``, use ``sdekit.sample(..., method="ode")``, or pass
    ``options={"step_t": ts[-1:], "first_step": h}`` with ``h`` from
    :func:`sdekit.sampling.ode.initial_step`.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn):
        super().__init__()
        self.sde, self.score_fn = sde, score_fn
        # the time domain, so that simulate() can step the ODE like any SDE
        self.T, self.t_min = sde.T, sde.t_min
        self.nfe = 0

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        sde = self.sde
        return checked_drift(sde, x, t) - 0.5 * (
            sde.diffusion_squared(x, t) * checked_score(self.score_fn, x, t)
            + sde.diffusion_divergence(x, t)
        )

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.clamp(0.0, self.T)  # see the class docstring: solvers probe outside [0, T]
        return self.drift(x, t.to(x.dtype).expand(x.shape[0]))
