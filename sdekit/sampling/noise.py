"""Gaussian noise for samplers, reproducible per sample.

With one ``torch.Generator`` the noise of sample ``i`` depends on the batch size. With a list of
generators, one per sample (the convention of diffusers), each sample draws from its own stream, so a
sample is the same whatever batch it is drawn in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class NoiseSource:
    """Draws standard normal tensors shaped like ``x``, on ``x``'s device and dtype."""

    def __init__(self, generator: torch.Generator | Sequence[torch.Generator] | None = None):
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g = self.generator
        if g is None or isinstance(g, torch.Generator):
            return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        if len(g) != x.shape[0]:
            raise ValueError(
                f"generator must be one per sample: got {len(g)} for a batch of {x.shape[0]}"
            )
        return torch.stack(
            [torch.randn(x.shape[1:], generator=gi, device=x.device, dtype=x.dtype) for gi in g]
        )
