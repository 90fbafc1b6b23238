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
generator=g)``, so the :class:`~sdekit.training.Trainer` (checkpoints, EMA, resume, DDP) trains it:
:class:`ClassifierTrainer` is that Trainer with the network of :func:`build_classifier`, the labels
as the condition and no sample grids (``python -m sdekit train-classifier``), and
:func:`load_classifier` reads its checkpoint back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .builders import build_sde, load_data
from .checkpoint import CheckpointError, check_finite_parameters, load_checkpoint, require_keys
from .checks import check_batch_time, check_choice
from .conditioning import Cond
from .config import TrainConfig
from .guidance import labels_of
from .linear import LinearSDE
from .losses import DenoisingScoreMatching
from .sde import broadcast_to_data
from .training import Trainer

#: the checkpoint entry that marks a classifier run (a score network's checkpoint has none)
CHECKPOINT_KIND = "noise-conditional classifier"

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


def build_classifier(
    config: TrainConfig, data_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """The classifier of ``config``, sized like :func:`sdekit.builders.build_model`'s network: an
    :class:`~sdekit.networks.MLPClassifier` (``hidden``, ``depth``) for vectors, a
    :class:`~sdekit.networks.UNetClassifier` (``channels``, ``channel_mults``, ``num_res_blocks``,
    ``dropout``, attention at the lowest resolution) for square images."""
    from .networks import MLPClassifier, UNetClassifier

    if len(data_shape) == 1:
        return MLPClassifier(data_shape[0], num_classes, config.hidden, config.depth)
    if len(data_shape) == 3 and data_shape[1] == data_shape[2]:
        side, levels = data_shape[1], len(config.channel_mults)
        return UNetClassifier(
            num_classes, data_shape[0], side, config.channels, config.channel_mults,
            config.num_res_blocks, attn_resolutions=(side // 2 ** (levels - 1),),
            dropout=config.dropout,
        )  # fmt: skip
    raise ValueError(f"data must be vectors (d,) or square images (C, H, H), got {data_shape}")


class ClassifierTrainer(Trainer):
    """The :class:`~sdekit.training.Trainer` of a noise-conditional classifier of ``config.data``:
    :func:`build_classifier`'s network, :class:`NoisyClassifierLoss` on ``config.sde`` (with its
    ``t_sampling``), the data's labels as the condition, no sample grids. Checkpoints, EMA, resume
    and DDP are the Trainer's; the checkpoint is marked as a classifier's.

    Args:
        config: the run (``class_conditional`` is implied; ``p_uncond`` must be 0).
        data: ``(x, labels)`` instead of ``config.data``.
    """

    def __init__(
        self, config: TrainConfig, *, data: tuple[torch.Tensor, torch.Tensor] | None = None
    ):
        if config.p_uncond:
            raise ValueError(
                "p_uncond is label dropout for a diffusion model; a classifier needs it 0"
            )
        config = dataclasses.replace(config, class_conditional=True)
        x, labels = load_data(config) if data is None else data
        if labels is None or not isinstance(labels, torch.Tensor):
            raise ValueError("a classifier needs data (x, labels) with integer labels (N,)")
        torch.manual_seed(config.seed)
        model = build_classifier(config, tuple(x.shape[1:]), int(labels.max()) + 1)
        t_sampling = "lognormal" if config.t_sampling == "lognormal" else "uniform"
        loss = NoisyClassifierLoss(
            build_sde(config), t_sampling, p_mean=config.p_mean, p_std=config.p_std
        )
        super().__init__(config, model=model, loss_fn=loss, data=(x, labels), sample_grid=False)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kind": CHECKPOINT_KIND}


class TrainedClassifier(NamedTuple):
    """A trained classifier (see :func:`load_classifier`)."""

    classifier: nn.Module
    sde: LinearSDE
    config: TrainConfig
    data_shape: tuple[int, ...]
    num_classes: int


def load_classifier(
    path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> TrainedClassifier:
    """The classifier of a :class:`ClassifierTrainer` checkpoint (EMA weights by default), in eval
    mode, with the SDE it was trained on; :class:`~sdekit.checkpoint.CheckpointError` for a
    checkpoint of anything else."""
    state = load_checkpoint(path, map_location=device)
    if state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(
            f"{path} is not a classifier checkpoint (train one with python -m sdekit "
            "train-classifier)"
        )
    require_keys(state, ("config", "data_shape", "num_classes", "model", "ema"), path)
    config = TrainConfig.from_dict(state["config"])
    shape = tuple(state["data_shape"])
    classifier = build_classifier(config, shape, state["num_classes"])
    classifier.load_state_dict(state["ema"]["module"] if ema else state["model"])
    check_finite_parameters(classifier, "EMA" if ema else "model", path)
    return TrainedClassifier(
        classifier.to(device).eval(), build_sde(config), config, shape, state["num_classes"]
    )
