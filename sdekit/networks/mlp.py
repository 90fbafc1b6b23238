"""A small conditional MLP for 1D and 2D toy data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_batch_time
from ..configurable import Configurable
from .embeddings import GaussianFourierEmbedding, LabelEmbedding


class MLP(nn.Module, Configurable):
    r"""An MLP :math:`F_\theta(x, t, y)` for data ``(batch, dim)``; the output is ``(batch, out_dim)``.

    Time enters as Gaussian Fourier features of ``t`` exactly as passed in (raw :math:`t`, or
    :math:`\tfrac14\ln\sigma` behind :class:`EDMPrecond`), lifted by a linear layer and added, with
    the optional class embedding, before every hidden layer:
    :math:`h_{k+1} = W_k\,\operatorname{SiLU}(h_k + e(t, y))`.

    Args:
        dim: data dimension.
        hidden: width of the hidden layers.
        depth: number of hidden layers (>= 1).
        time_features: number of Fourier features of ``t`` (even).
        num_classes: number of class labels, or ``None`` for an unconditional model.
        out_dim: output width; ``None`` for ``dim`` (``2 * dim`` for
            :class:`~sdekit.elbo.LearnedVariance`).
        p_uncond: label-dropout probability for classifier-free guidance (a learned null label,
            see :class:`~sdekit.networks.LabelEmbedding`); 0 for none.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 3,
        time_features: int = 16,
        num_classes: int | None = None,
        out_dim: int | None = None,
        p_uncond: float = 0.0,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.dim = dim
        self.time = nn.Sequential(
            GaussianFourierEmbedding(time_features), nn.Linear(time_features, hidden)
        )
        self.num_classes = num_classes
        self.label = LabelEmbedding(num_classes, hidden, p_uncond)
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim if out_dim is None else out_dim)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        check_batch_time(t, x)
        cond = self.label(self.time(t).to(x.dtype), labels)
        h = self.inp(x)
        for layer in self.hidden:
            h = layer(F.silu(h + cond))
        return self.out(F.silu(h + cond))
