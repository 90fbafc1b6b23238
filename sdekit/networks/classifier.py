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
from .embeddings import GaussianFourierEmbedding, time_embedding
from .unet import Attention, ResBlock, _norm


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
        if not channel_mults or min(channel_mults) < 1:
            raise ValueError(
                f"channel_mults must be a non-empty tuple of ints >= 1, got {channel_mults}"
            )
        factor = 2 ** (len(channel_mults) - 1)
        if image_size < 1 or image_size % factor:
            raise ValueError(
                f"image_size must be a positive multiple of 2 ** (len(channel_mults) - 1) = "
                f"{factor}, got {image_size}"
            )
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.in_channels, self.image_size = in_channels, image_size
        emb_dim = 4 * base_channels
        self.time = nn.Sequential(
            time_embedding(embedding, base_channels),
            nn.Linear(base_channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        ch, res = base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                out = base_channels * mult
                attn = Attention(out) if res in attn_resolutions else nn.Identity()
                self.down.append(nn.ModuleList([ResBlock(ch, out, emb_dim, dropout), attn]))
                ch = out
            if level < len(channel_mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                res //= 2
        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), Attention(ch), ResBlock(ch, ch, emb_dim, dropout)]
        )
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
        h = self.conv_in(x)
        for layer in self.down:
            h = layer[1](layer[0](h, emb)) if isinstance(layer, nn.ModuleList) else layer(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
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
