r"""Time embeddings: map a ``(batch,)`` time to a ``(batch, dim)`` feature vector.

Two classical choices, both on the time value ``t`` exactly as the network receives it (a raw
:math:`t \in [0, T]`, or EDM's :math:`c_\text{noise} = \tfrac14\ln\sigma` behind
:class:`~sdekit.networks.EDMPrecond`):

- Gaussian Fourier features (Tancik et al. 2020; NCSN++ of Song et al. 2021, App. H):
  :math:`[\sin 2\pi W t,\ \cos 2\pi W t]` with fixed :math:`W_k \sim \mathcal N(0, s^2)`;
- sinusoidal positional features (Vaswani et al. 2017; DDPM of Ho et al. 2020):
  :math:`[\sin \omega_k \tau,\ \cos \omega_k \tau]`, :math:`\omega_k = 10000^{-k/(d/2)}`, of
  :math:`\tau = 1000\,t`, so that :math:`t \in [0, 1]` spans DDPM's step indices.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..checks import check_choice


def _check_even(dim: int) -> int:
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even integer >= 2, got {dim}")
    return dim


class GaussianFourierEmbedding(nn.Module):
    r"""Fourier features :math:`[\sin 2\pi W t, \cos 2\pi W t]`, :math:`W \sim \mathcal N(0, s^2)`.

    ``W`` is a fixed buffer (not trained), drawn from a seeded generator so two models built with
    the same arguments embed time identically.

    Args:
        dim: output features (even): ``dim / 2`` frequencies.
        scale: standard deviation :math:`s` of the frequencies; 16 as in NCSN++.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        w = torch.randn(_check_even(dim) // 2, generator=generator) * scale
        self.register_buffer("freqs", 2 * math.pi * w)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t.to(self.freqs.dtype)[:, None] * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class SinusoidalEmbedding(nn.Module):
    r"""Positional features :math:`[\sin\omega_k\tau, \cos\omega_k\tau]` of :math:`\tau = 1000\,t`.

    :math:`\omega_k = 10000^{-k/(d/2)}`, :math:`k = 0, \dots, d/2 - 1` (Ho et al. 2020, App. B).
    """

    def __init__(self, dim: int):
        super().__init__()
        half = _check_even(dim) // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 1000.0 * t.to(self.freqs.dtype)[:, None] * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=1)


TimeEmbedding = Literal["fourier", "sinusoidal"]
EMBEDDINGS = {"fourier": GaussianFourierEmbedding, "sinusoidal": SinusoidalEmbedding}


def time_embedding(kind: TimeEmbedding, dim: int) -> nn.Module:
    """The embedding named ``kind`` (``"fourier"`` or ``"sinusoidal"``) with ``dim`` features."""
    return EMBEDDINGS[check_choice("embedding", kind, EMBEDDINGS)](dim)


#: the label of "no class": classifier-free guidance's unconditional input. A network trained with
#: label dropout (``p_uncond > 0``) embeds it with a learned row of its own (Ho & Salimans 2022, §3.2).
NULL_LABEL = -1


class LabelEmbedding(nn.Module):
    r"""Adds a learned class embedding to a conditioning vector (nothing if ``num_classes=None``).

    A conditional model needs integer ``labels`` of shape ``(batch,)`` in ``[0, num_classes)``; an
    unconditional one refuses them, so a forgotten or misplaced label never passes silently.

    **Label dropout** (Ho & Salimans 2022, Alg. 1): with ``p_uncond > 0`` the table has one more row,
    the learned null embedding, selected by :data:`NULL_LABEL`; in training mode each label is
    replaced by :data:`NULL_LABEL` independently with probability ``p_uncond`` (drawn from the global
    generator, which the trainer seeds and checkpoints), so one network learns both
    :math:`\varepsilon(x, t, y)` and the unconditional :math:`\varepsilon(x, t, \varnothing)`. In eval
    mode labels pass unchanged.

    Args:
        num_classes: number of class labels, or ``None`` for an unconditional model.
        dim: embedding width.
        p_uncond: label-dropout probability in ``[0, 1)`` (0.1-0.2 in Ho & Salimans); needs classes.
    """

    def __init__(self, num_classes: int | None, dim: int, p_uncond: float = 0.0):
        super().__init__()
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes must be None or an integer >= 1, got {num_classes}")
        if not (math.isfinite(p_uncond) and 0 <= p_uncond < 1):
            raise ValueError(f"p_uncond must lie in [0, 1), got {p_uncond}")
        if p_uncond > 0 and num_classes is None:
            raise ValueError("p_uncond > 0 needs a class-conditional model (num_classes >= 1)")
        self.num_classes = num_classes
        self.p_uncond = float(p_uncond)
        rows = None if num_classes is None else num_classes + (p_uncond > 0)
        self.table = None if rows is None else nn.Embedding(rows, dim)

    @property
    def has_null_label(self) -> bool:
        """Whether :data:`NULL_LABEL` is accepted (a null row learned by label dropout)."""
        return self.p_uncond > 0

    def drop(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with each entry replaced by :data:`NULL_LABEL` with probability ``p_uncond``."""
        dropped = torch.rand(labels.shape, device=labels.device) < self.p_uncond
        return torch.where(dropped, torch.full_like(labels, NULL_LABEL), labels)

    def check_labels(self, labels: torch.Tensor | None, batch: int) -> None:
        """Shape ``(batch,)``, an integer dtype, values in range (``ValueError`` naming ``labels``)."""
        k = self.num_classes
        if labels is None:
            raise ValueError(
                f"labels are required by this class-conditional model (num_classes={k}): "
                "pass cond=labels of shape (batch,)"
            )
        if not isinstance(labels, torch.Tensor) or labels.shape != (batch,):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
            raise ValueError(f"labels must have shape (batch,) = ({batch},), got {shape}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        ok = (labels >= 0) & (labels < k)
        allowed = f"[0, {k})"
        if self.has_null_label:
            ok |= labels == NULL_LABEL
            allowed += f" or NULL_LABEL = {NULL_LABEL}"
        elif labels.device.type == "cpu" and bool((labels == NULL_LABEL).any()):
            raise ValueError(
                f"labels contain NULL_LABEL = {NULL_LABEL}, but this model has no null label: it "
                "was built with p_uncond = 0 (train with p_uncond > 0 for classifier-free guidance)"
            )
        message = f"labels must lie in {allowed}"
        if labels.device.type == "cpu":
            if not bool(ok.all()):
                raise ValueError(f"{message}, got {labels[~ok][:4].tolist()}")
        else:
            torch._assert_async(ok.all(), message)

    def forward(self, cond: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.table is None:
            if labels is not None:
                raise ValueError("labels were given to an unconditional model (num_classes=None)")
            return cond
        self.check_labels(labels, cond.shape[0])
        if self.training and self.p_uncond > 0:
            labels = self.drop(labels)
        rows = torch.where(labels == NULL_LABEL, self.num_classes, labels)
        return cond + self.table(rows).to(cond.dtype)
