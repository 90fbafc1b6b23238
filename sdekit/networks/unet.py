r"""A UNet score network in the spirit of DDPM++/NCSN++ (Song et al. 2021, App. H; Ho et al. 2020).

Residual blocks (BigGAN style: GroupNorm, SiLU, 3x3 conv) are conditioned on time and class by a
scale-shift (FiLM, Perez et al. 2018; Dhariwal & Nichol 2021, §3) of their second normalisation,
:math:`h \leftarrow \operatorname{GN}(h)(1 + \gamma(e)) + \beta(e)`; every residual sum is divided
by :math:`\sqrt 2` (DDPM++'s ``skip_rescale``). Self-attention (fused
:func:`~torch.nn.functional.scaled_dot_product_attention`) runs at the chosen resolutions and in the
middle. Each level but the last halves the resolution with a stride-2 convolution, so the image size
must be divisible by :math:`2^{L-1}` for :math:`L` levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_batch_time
from ..configurable import Configurable
from .embeddings import LabelEmbedding, time_embedding

_SQRT_HALF = 1 / math.sqrt(2)


def norm_groups(channels: int) -> int:
    r"""The number of GroupNorm groups for ``channels``: the largest divisor of ``channels`` that
    is at most :math:`\min(32, \lfloor C/4 \rfloor)` (1 below 8 channels).

    Every group then holds at least 4 channels (DDPM++'s ``min(C // 4, 32)``, Song et al. 2021,
    where it divides :math:`C`). Groups of one channel would make an instance norm, which removes
    every channel's spatial mean: before the output convolution that erases the mean brightness of
    the input, which the network then cannot predict (a sampler multiplies what is left by
    :math:`1/\alpha(T)`).
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    limit = max(1, min(32, channels // 4))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


class ResBlock(nn.Module):
    """GN-SiLU-conv, FiLM by the conditioning vector, GN-SiLU-dropout-conv, rescaled skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        h = self.conv2(self.dropout(F.silu(h)))
        return (self.skip(x) + h) * _SQRT_HALF


class Attention(nn.Module):
    """Multi-head self-attention over the pixels (heads of 64 channels where they divide)."""

    def __init__(self, channels: int):
        super().__init__()
        self.heads = channels // 64 if channels % 64 == 0 else 1
        self.norm = _norm(channels)
        # linear maps on (batch, pixels, channels) tokens: on CPU a matmul beats a 1x1 convolution
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).reshape(b, hgt * wid, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, pixels, head_dim)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, hgt * wid, c)
        h = self.proj(h).transpose(1, 2).reshape(b, c, hgt, wid)
        return (x + h) * _SQRT_HALF


class UNet(nn.Module, Configurable):
    r"""A DDPM++-style UNet :math:`F_\theta(x, t, y)` on ``(batch, in_channels, size, size)``.

    Args:
        in_channels: image channels (the output has as many unless ``out_channels`` is given).
        image_size: height and width; must be divisible by ``2 ** (len(channel_mults) - 1)``.
        base_channels: channels of the first level (>= 4); level ``i`` has
            ``base_channels * channel_mults[i]``. Every GroupNorm has :func:`norm_groups` groups.
        channel_mults: one multiplier per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: resolutions (side lengths) at which self-attention follows each block.
        dropout: dropout probability inside the residual blocks.
        embedding: ``"fourier"`` (Gaussian Fourier features of ``t``, NCSN++) or ``"sinusoidal"``
            (positional features of ``1000 t``, DDPM); see :mod:`sdekit.networks.embeddings`.
        num_classes: number of class labels, or ``None`` for an unconditional model.
        out_channels: output channels; ``None`` for ``in_channels`` (``2 * in_channels`` for
            :class:`~sdekit.elbo.LearnedVariance`).
        p_uncond: label-dropout probability for classifier-free guidance (a learned null label,
            see :class:`~sdekit.networks.LabelEmbedding`); 0 for none.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (4,),
        dropout: float = 0.1,
        embedding: str = "fourier",
        num_classes: int | None = None,
        out_channels: int | None = None,
        p_uncond: float = 0.0,
    ):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.time = build_time_mlp(embedding, base_channels)
        self.num_classes = num_classes
        emb_dim = 4 * base_channels
        self.label = LabelEmbedding(num_classes, emb_dim, p_uncond)
        encoder = build_encoder(
            in_channels, image_size, base_channels, channel_mults, num_res_blocks,
            attn_resolutions, dropout,
        )  # fmt: skip
        self.conv_in, self.down, self.mid = encoder.conv_in, encoder.down, encoder.mid
        skips, ch, res = list(encoder.skip_channels), encoder.channels, encoder.resolution

        def attn(ch: int, res: int) -> nn.Module:
            return Attention(ch) if res in attn_resolutions else nn.Identity()

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                out = base_channels * mult
                block = ResBlock(ch + skips.pop(), out, emb_dim, dropout)
                self.up.append(nn.ModuleList([block, attn(out, res)]))
                ch = out
            if level > 0:
                self.up.append(
                    nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch, 3, padding=1))
                )
                res *= 2
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, out_channels or in_channels, 3, padding=1)

    def encode(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The first half of :meth:`forward`: the conditioning vector ``emb``, the input
        convolution, the encoder and the middle block. Returns ``(h, skips, emb)``: the middle
        block's output, the encoder's outputs that the decoder concatenates (input convolution
        first), and ``emb``. ``decode(*encode(x, t, labels))`` is ``forward(x, t, labels)``
        bit for bit; a ControlNet (:mod:`sdekit.networks.controlnet`) adds its residuals to
        ``h`` and ``skips`` in between."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        check_batch_time(t, x)
        emb = embed(self.time, self.label, t, labels)
        h, skips = run_encoder(self.conv_in(x), emb, self.down, self.mid)
        return h, skips, emb

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        """The second half of :meth:`forward`: the decoder on the middle block's output ``h``
        and the encoder's ``skips`` (not modified), then the output convolution."""
        skips = list(skips)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, skips.pop()], dim=1), emb))
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.decode(*self.encode(x, t, labels))


@dataclass
class Encoder:
    """The input convolution, encoder levels and middle block of a :class:`UNet`, and what the
    decoder needs to know of them: the channels of each skip, the last channels and resolution."""

    conv_in: nn.Conv2d
    down: nn.ModuleList
    mid: nn.ModuleList
    skip_channels: tuple[int, ...]
    channels: int
    resolution: int


def build_time_mlp(embedding: str, base_channels: int) -> nn.Sequential:
    """Features of ``t`` lifted to the ``4 * base_channels`` conditioning width."""
    emb_dim = 4 * base_channels
    return nn.Sequential(
        time_embedding(embedding, base_channels),
        nn.Linear(base_channels, emb_dim),
        nn.SiLU(),
        nn.Linear(emb_dim, emb_dim),
    )


def build_encoder(
    in_channels: int,
    image_size: int,
    base_channels: int,
    channel_mults: tuple[int, ...],
    num_res_blocks: int,
    attn_resolutions: tuple[int, ...],
    dropout: float,
) -> Encoder:
    """The down path of a :class:`UNet` (shared by :class:`~sdekit.networks.UNetClassifier`),
    its arguments checked; modules are created in the order the UNet always created them, so a
    seed gives the same initial weights."""
    if not channel_mults or min(channel_mults) < 1:
        raise ValueError(
            f"channel_mults must be a non-empty tuple of ints >= 1, got {channel_mults}"
        )
    factor = 2 ** (len(channel_mults) - 1)
    if image_size < 1 or image_size % factor:
        raise ValueError(
            "image_size must be a positive multiple of 2 ** (len(channel_mults) - 1) = "
            f"{factor}, "
            f"got {image_size}"
        )
    if base_channels < 4:
        raise ValueError(
            "base_channels must be >= 4 (so that every GroupNorm group holds at least 4 "
            f"channels, see norm_groups), got {base_channels}"
        )
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    emb_dim = 4 * base_channels
    conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
    down = nn.ModuleList()
    skips, ch, res = [base_channels], base_channels, image_size
    for level, mult in enumerate(channel_mults):
        for _ in range(num_res_blocks):
            out = base_channels * mult
            block = ResBlock(ch, out, emb_dim, dropout)
            attn = Attention(out) if res in attn_resolutions else nn.Identity()
            down.append(nn.ModuleList([block, attn]))
            skips.append(out)
            ch = out
        if level < len(channel_mults) - 1:
            down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            skips.append(ch)
            res //= 2
    mid = nn.ModuleList(
        [ResBlock(ch, ch, emb_dim, dropout), Attention(ch), ResBlock(ch, ch, emb_dim, dropout)]
    )
    return Encoder(conv_in, down, mid, tuple(skips), ch, res)


def embed(
    time: nn.Module, label: LabelEmbedding, t: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """The conditioning vector of the residual blocks: SiLU of the time features plus the label's."""
    return F.silu(label(time(t), labels))


def run_encoder(
    h: torch.Tensor, emb: torch.Tensor, down: nn.ModuleList, mid: nn.ModuleList
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The encoder levels ``down`` and the middle block ``mid`` of a :class:`UNet` (or of its
    trainable copy) on the input convolution's output ``h``: ``(middle output, skips)``."""
    skips = [h]
    for layer in down:
        if isinstance(layer, nn.ModuleList):
            h = layer[1](layer[0](h, emb))
        else:
            h = layer(h)
        skips.append(h)
    return mid[2](mid[1](mid[0](h, emb)), emb), skips
