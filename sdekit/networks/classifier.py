r"""Noise-conditional classifiers :math:`p_\phi(y \mid x_t, t)` for classifier guidance.

Dhariwal & Nichol 2021 (§4.1, App. C) classify noisy images with the downsampling half of their
UNet followed by a pooled head; :class:`UNetClassifier` is that for :class:`~sdekit.networks.UNet`
(the same residual blocks, FiLM time conditioning and attention, mean pooling after the middle
block), :class:`MLPClassifier` the same idea for vector data. Both output logits
``(batch, num_classes)`` and take ``(x, t)`` with ``t`` exactly as a score network of the same SDE
receives it. They are trained on :math:`x_t` drawn from the forward SDE by
:class:`sdekit.classifier.NoisyClassifierLoss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_batch_time
from ..configurable import Configurable
from .embeddings import GaussianFourierEmbedding
from .unet import _norm, build_encoder, build_time_mlp, run_encoder


def _check_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return num_classes


class UNetClassifier(nn.Module, Configurable):
    r"""The UNet's encoder (down path and middle block) with a pooled linear head.

    ``num_classes`` (>= 2) is the number of classes; the other arguments (``in_channels``,
    ``image_size``, ``base_channels``, ``channel_mults``, ``num_res_blocks``,
    ``attn_resolutions``, ``dropout``, ``embedding``) are those of :class:`~sdekit.networks.UNet`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 8,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (4,),
        dropout: float = 0.1,
        embedding: str = "fourier",
    ):
        super().__init__()
        self.num_classes = _check_classes(num_classes)
        self.in_channels, self.image_size = in_channels, image_size
        self.time = build_time_mlp(embedding, base_channels)
        encoder = build_encoder(
            in_channels, image_size, base_channels, channel_mults, num_res_blocks,
            attn_resolutions, dropout,
        )  # fmt: skip
        self.conv_in, self.down, self.mid = encoder.conv_in, encoder.down, encoder.mid
        ch = encoder.channels
        self.norm_out = _norm(ch)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        check_batch_time(t, x)
        emb = F.silu(self.time(t))
        h, _ = run_encoder(self.conv_in(x), emb, self.down, self.mid)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))


class MLPClassifier(nn.Module, Configurable):
    r"""An MLP :math:`(x, t) \mapsto` logits for vector data ``(batch, dim)``: time enters as in
    :class:`~sdekit.networks.MLP` (Fourier features added before every hidden layer).

    Args:
        dim: data dimension.
        num_classes: number of classes (>= 2).
        hidden: width of the hidden layers.
        depth: number of hidden layers (>= 1).
        time_features: number of Fourier features of ``t`` (even).
    """

    def __init__(
        self, dim: int, num_classes: int, hidden: int = 128, depth: int = 3, time_features: int = 16
    ):
        super().__init__()
        self.num_classes = _check_classes(num_classes)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.dim = dim
        self.time = nn.Sequential(
            GaussianFourierEmbedding(time_features), nn.Linear(time_features, hidden)
        )
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        check_batch_time(t, x)
        emb = self.time(t).to(x.dtype)
        h = self.inp(x)
        for layer in self.hidden:
            h = layer(F.silu(h + emb))
        return self.head(F.silu(h + emb))
