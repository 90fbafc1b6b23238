r"""Training the noise-conditional classifier of classifier guidance.

Classifier guidance (:func:`sdekit.guidance.classifier_guidance`) needs :math:`p_\phi(y \mid x_t, t)`
on the noisy states the sampler visits, so the classifier is trained on exactly those
(Dhariwal & Nichol 2021, §4.1): for data :math:`(x_0, y)`, a time :math:`t` drawn as the diffusion
model's own loss draws it and :math:`x_t = \alpha(t)x_0 + \sigma(t)\varepsilon` from the same linear
SDE, the loss is the cross-entropy

.. math:: \mathcal L(\phi) = \mathbb E_{t, x_0, y, \varepsilon}\bigl[-\log p_\phi(y \mid x_t, t)\bigr],

minimised by the exact posterior :math:`p_t(y \mid x_t)` (the cross-entropy of a distribution is
smallest at itself), whose gradient in :math:`x_t` is what guidance adds to the score.
:class:`NoisyClassifierLoss` is called like every sdekit loss, ``loss_fn(net, x0, cond=labels,
generator=g)``, so the :class:`~sdekit.training.Trainer` (checkpoints, EMA, resume, DDP) trains it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .checks import check_batch_time, check_choice
from .conditioning import Cond
from .guidance import labels_of
from .linear import LinearSDE
from .losses import DenoisingScoreMatching
from .sde import broadcast_to_data

#: how training times are drawn, as for :class:`~sdekit.losses.DenoisingScoreMatching`
CLASSIFIER_T_SAMPLINGS = ("uniform", "lognormal")


class NoisyClassifierLoss:
    r"""Cross-entropy of a noisy classifier on :math:`x_t` of ``sde`` (module docs).

    Args:
        sde: the linear SDE of the diffusion model to be guided.
        t_sampling: ``"uniform"`` (:math:`t \sim U[t_{\min}, T]`, as Dhariwal & Nichol) or
            ``"lognormal"`` (EDM's :math:`\ln(\sigma/\alpha) \sim \mathcal N(P_\text{mean},
            P_\text{std}^2)`), matching the diffusion model's training times.
        p_mean, p_std: of ``"lognormal"``.

    ``loss_fn(classifier, x0, cond=labels, generator=None)`` returns the batch-mean cross-entropy;
    the classifier is called as ``classifier(x_t, t)`` and returns logits ``(batch, C)``.
    """

    def __init__(
        self,
        sde: LinearSDE,
        t_sampling: str = "uniform",
        *,
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ):
        if not isinstance(sde, LinearSDE):
            raise ValueError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        check_choice("t_sampling", t_sampling, CLASSIFIER_T_SAMPLINGS)
        self.sde = sde
        # the same time proposal as the diffusion model's loss (weights are 1 for these two)
        self._times = DenoisingScoreMatching(sde, t_sampling=t_sampling, p_mean=p_mean, p_std=p_std)

    def per_sample(
        self,
        classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        labels: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        r""":math:`-\log p_\phi(y \mid x_t, t)` at given ``t`` and noise, shape ``(batch,)``."""
        check_batch_time(t, x0)
        if labels.shape != (x0.shape[0],) or labels.dtype.is_floating_point:
            raise ValueError(
                f"labels must be (batch,) = ({x0.shape[0]},) integers, got "
                f"{tuple(labels.shape)} {labels.dtype}"
            )
        dtype = torch.promote_types(x0.dtype, torch.float32)
        alpha, sigma = (
            broadcast_to_data(c, x0).to(dtype) for c in self.sde.marginal(t.to(torch.float64))
        )
        x_t = (alpha * x0 + sigma * noise).to(x0.dtype)
        logits = classifier(x_t, t)
        if logits.ndim != 2 or logits.shape[0] != x0.shape[0]:
            raise ValueError(
                f"classifier must return logits (batch, num_classes), got {tuple(logits.shape)}"
            )
        c = logits.shape[1]
        if labels.device.type == "cpu" and not bool(((labels >= 0) & (labels < c)).all()):
            raise ValueError(f"labels must lie in [0, {c}) (the classifier's classes)")
        return F.cross_entropy(logits.to(dtype), labels.long(), reduction="none")

    def __call__(
        self,
        classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        *,
        cond: Cond = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The scalar loss: batch mean of the cross-entropy at sampled ``t`` and noise."""
        if cond is None:
            raise ValueError("cond (the class labels) is required to train a classifier")
        labels = labels_of(cond)
        time_dtype = torch.promote_types(x0.dtype, torch.float32)
        t, _ = self._times.sample_t(
            x0.shape[0], device=x0.device, dtype=time_dtype, generator=generator
        )
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.per_sample(classifier, x0, labels, t, noise).mean()
