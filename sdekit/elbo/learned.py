r"""Networks with a learned reverse variance (Nichol & Dhariwal 2021, §3.1, eq. 15).

The network outputs, next to its prediction, one number :math:`v` per data dimension, and the reverse
variance of the step :math:`x_i \to x_{i-1}` is the log-interpolation

.. math:: \Sigma_\theta(x_i, i) = \exp\bigl(v\log\beta_i + (1 - v)\log\tilde\beta_i\bigr)

between the two fixed choices of Ho et al. 2020 (:math:`v = 1`: :math:`\beta_i`; :math:`v = 0`:
:math:`\tilde\beta_i`). :math:`v` is not constrained to :math:`[0, 1]`. (The reference code maps the
network's raw output :math:`r` to :math:`v = (r + 1)/2`; here the output *is* :math:`v`.) On a step
:math:`t \to s` of any grid of a linear SDE the same :math:`v` interpolates between the forward
kernel's variance :math:`\sigma^2_{t|s}` (which is :math:`\beta_i` on the chain's own levels) and the
posterior's :math:`\sigma_s^2\sigma^2_{t|s}/\sigma_t^2` (:math:`\tilde\beta_i`), which is how the
samplers of :mod:`sdekit.sampling.learned_variance` use it on fewer steps (the paper's §4).

:class:`LearnedVariance` wraps a network with twice the data's channels (``UNet(out_channels=2 * C)``,
``MLP(out_dim=2 * d)``). Its ``forward`` returns the prediction only, so it goes wherever a network
goes (samplers, the ODE likelihood, the DSM loss, trainers, EMA, autocast and DDP wrappers); the
:math:`v` of its latest call is kept until read once by :func:`take_v`, so the variance costs no
second evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..discretization import DDPMSchedule
from ..linear import LinearSDE
from .discrete import Chain, chain


class LearnedVariance(nn.Module):
    r"""A network ``net(x, t[, labels])`` whose output is ``[prediction, v]`` along dim 1.

    Args:
        net: a network returning ``(batch, 2C, ...)`` for inputs ``(batch, C, ...)``.
        schedule, sde: the chain it is trained on (by :class:`~sdekit.elbo.HybridLoss`) and the
            SDE of its time input. Both are recorded (the betas and the levels' times, as buffers
            saved with the weights), so that a bound or a loss with another schedule or SDE raises.

    ``forward(x, t, labels=None)`` returns the prediction ``(batch, C, ...)``; :meth:`with_variance`
    returns ``(prediction, v)``.
    """

    def __init__(self, net: nn.Module, schedule: DDPMSchedule, sde: LinearSDE):
        super().__init__()
        self.net = net
        c = chain(schedule, sde)
        self.register_buffer("betas", c.betas.clone())
        self.register_buffer("times", c.times.clone())
        self._v: torch.Tensor | None = None

    def with_variance(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prediction, v)``, both shaped like ``x``."""
        out = self.net(x, t) if labels is None else self.net(x, t, labels)
        want = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
        if tuple(out.shape) != want:
            raise ValueError(
                f"LearnedVariance needs a network with twice the data's channels: for x of shape "
                f"{tuple(x.shape)} it must return {want}, got {tuple(out.shape)} (build it with "
                "UNet(out_channels=2 * C) or MLP(out_dim=2 * d))"
            )
        prediction, v = out.chunk(2, dim=1)
        return prediction, v

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        prediction, self._v = self.with_variance(x, t, labels)
        return prediction


def find_learned_variance(model: Callable) -> LearnedVariance:
    """``model`` itself or the :class:`LearnedVariance` inside it (behind EMA, autocast, DDP)."""
    if isinstance(model, LearnedVariance):
        return model
    if isinstance(model, nn.Module):
        for m in model.modules():
            if isinstance(m, LearnedVariance):
                return m
    raise ValueError(
        "a learned variance needs a network that outputs v: wrap it in sdekit.elbo.LearnedVariance "
        f"(got {type(model).__name__}); or use variance='beta' or 'beta_tilde'"
    )


def take_v(model: Callable, like: torch.Tensor) -> torch.Tensor:
    """The :math:`v` of ``model``'s latest call, shaped like that call's prediction ``like``; it is
    consumed, so a stale :math:`v` is never read twice."""
    lv = find_learned_variance(model)
    v, lv._v = lv._v, None
    if v is None or v.shape != like.shape:
        got = "none" if v is None else f"shape {tuple(v.shape)}"
        raise ValueError(
            f"no v from the latest call of the LearnedVariance network (got {got}, need "
            f"{tuple(like.shape)}): v is read right after the call that made the prediction, so "
            "the model given must be the one called (not a copy, nor a transform that batches calls)"
        )
    return v


def check_trained_chain(model: Callable, c: Chain) -> None:
    """Raise unless ``model``'s recorded training chain is ``c`` (same betas, same level times)."""
    lv = find_learned_variance(model)
    betas, times = lv.betas.detach().cpu(), lv.times.detach().cpu()
    if betas.shape != c.betas.shape:
        raise ValueError(
            f"schedule does not match the model's training schedule: N = {c.betas.shape[0]} levels, "
            f"the LearnedVariance network was trained on N = {betas.shape[0]} (its v interpolates "
            "between that chain's beta and beta_tilde)"
        )
    if not torch.allclose(betas, c.betas.cpu(), rtol=1e-9, atol=0):
        raise ValueError(
            "schedule does not match the model's training schedule: same N, other betas"
        )
    if not torch.allclose(times, c.times.cpu(), rtol=1e-6, atol=1e-12):
        raise ValueError(
            "sde does not match the model's: the schedule's levels map to other times than the "
            "LearnedVariance network was trained at"
        )
