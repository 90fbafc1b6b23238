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


class LabelEmbedding(nn.Module):
    """Adds a learned class embedding to a conditioning vector (nothing if ``num_classes=None``).

    A conditional model needs ``labels`` of shape ``(batch,)``; an unconditional one refuses them,
    so a forgotten or misplaced label never passes silently.
    """

    def __init__(self, num_classes: int | None, dim: int):
        super().__init__()
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.table = None if num_classes is None else nn.Embedding(num_classes, dim)

    def forward(self, cond: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.table is None:
            if labels is not None:
                raise ValueError("labels were given to an unconditional model (num_classes=None)")
            return cond
        if labels is None or labels.shape != (cond.shape[0],):
            shape = None if labels is None else tuple(labels.shape)
            raise ValueError(f"labels must have shape (batch,) = ({cond.shape[0]},), got {shape}")
        return cond + self.table(labels).to(cond.dtype)
