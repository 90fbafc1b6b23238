r"""The hybrid objective of improved DDPM (Nichol & Dhariwal 2021, §3.1, eq. 16).

.. math:: L_\text{hybrid} = L_\text{simple} + \lambda\,L_\text{vlb}, \qquad \lambda = 0.001,

with, per sample and level :math:`i \sim U\{0, \dots, N-1\}`,
:math:`L_\text{simple} = \lVert\varepsilon - \hat\varepsilon_\theta\rVert^2/D` (Ho et al.'s simple loss)
and :math:`L_\text{vlb} = N\,L_i/(D\ln 2)`, the one-term estimate of the bound's sum
:math:`\sum_i L_i` in bits per dimension (:mod:`sdekit.elbo.discrete`; the prior term has no
parameters). Both are per dimension as in the reference code, so :math:`\lambda` means what it means
there. In :math:`L_\text{vlb}` the mean is computed from :math:`\operatorname{sg}(\hat\varepsilon_\theta)`
(stop-gradient): the bound trains only the variance, the mean is trained by :math:`L_\text{simple}`.

With a :class:`~sdekit.elbo.SecondMomentSampler` the levels are importance-sampled instead and each
sample is weighted by :math:`1/(N p_i)`, which keeps the expectation (the reference code weights the
whole per-sample loss the same way). The paper samples :math:`L_\text{hybrid}` uniformly and keeps
importance sampling for training on :math:`L_\text{vlb}` alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..checks import check_positive
from ..conditioning import Cond, check_cond
from ..discretization import DDPMSchedule
from ..linear import LinearSDE
from ..parameterization import Prediction, check_prediction
from .continuous import _on_grid
from .discrete import (
    Chain,
    chain,
    check_levels,
    log_variance,
    model_eps,
    terms_from_eps,
)
from .importance import SecondMomentSampler
from .learned import check_trained_chain, take_v


class HybridLoss:
    r""":math:`L_\text{simple} + \lambda L_\text{vlb}` for a :class:`~sdekit.elbo.LearnedVariance`
    network (module notes).

    Args:
        sde: the SDE of the network's time input.
        schedule: the DDPM chain it is trained on (the one the network records).
        lam: :math:`\lambda` (0.001 in the paper), > 0.
        prediction: what the network predicts (:math:`L_\text{simple}` is always the
            :math:`\varepsilon` error).
        levels: pixel levels :math:`L` of data on the grid :math:`2k/(L-1) - 1` (the discretized
            decoder of the level-0 term), or ``None`` for continuous data (Gaussian decoder).
        sampler: importance-samples the levels (and learns from the terms); uniform if ``None``.

    ``loss_fn(model, x0, cond=None, generator=None)`` returns the batch mean.
    """

    def __init__(
        self,
        sde: LinearSDE,
        schedule: DDPMSchedule,
        *,
        lam: float = 1e-3,
        prediction: Prediction = "eps",
        levels: int | None = None,
        sampler: SecondMomentSampler | None = None,
    ):
        self.sde = sde
        self.chain = chain(schedule, sde)
        self.lam = check_positive("lam", lam)
        self.prediction = check_prediction(prediction)
        self.levels = check_levels(levels)
        if sampler is not None and sampler.N != len(self.chain):
            raise ValueError(f"sampler has N={sampler.N} levels, the schedule {len(self.chain)}")
        self.sampler = sampler
        self._chains: dict[torch.device, Chain] = {}
        self._checked: set[int] = set()

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        cond: Cond = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if id(model) not in self._checked:
            check_trained_chain(model, self.chain)
            self._checked.add(id(model))
        check_cond(cond, x0.shape[0])
        device, B, N = x0.device, x0.shape[0], len(self.chain)
        if device not in self._chains:
            self._chains[device] = self.chain.to(device)
        c = self._chains[device]
        compute = torch.promote_types(x0.dtype, torch.float32)
        if self.sampler is None:
            i = torch.randint(0, N, (B,), generator=generator, device=device)
            weight = torch.ones(B, dtype=compute, device=device)
        else:
            i, p = self.sampler.sample(B, generator=generator)
            weight = (1 / (N * p)).to(compute)
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=compute)
        x = x0.to(compute)
        eps_hat, out = model_eps(
            model, self.sde, c, x, i, noise, prediction=self.prediction,
            cond=cond, dtype=x0.dtype, compute=compute,
        )  # fmt: skip
        v = take_v(model, out).to(compute)
        D = x0[0].numel()
        simple = (noise - eps_hat).square().flatten(1).sum(1) / D
        log_var = log_variance(c, i, x, "learned", v)
        target = x if self.levels is None else _on_grid(x, self.levels).to(compute)
        term = terms_from_eps(c, i, target, noise, eps_hat.detach(), log_var, self.levels)
        term = term.flatten(1).sum(1)
        if self.sampler is not None:
            self.sampler.update(i, term.detach())
        vlb = N * term / (D * math.log(2))
        return (weight * (simple + self.lam * vlb)).mean()
