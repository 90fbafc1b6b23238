r"""Hints for a ControlNet: images computed from an image, and how well a sample agrees with one.

Each built-in hint is a function of a batch of images ``(N, C, H, W)`` in the model range
:math:`[-1, 1]`, returning a hint of the same height and width:

- ``"edges"`` (:func:`sobel_edges`): the Sobel gradient magnitude of each channel,
  :math:`\lVert(\partial_x, \partial_y) x\rVert`, with
  :math:`\partial_x = \tfrac{1}{8}\bigl[\begin{smallmatrix}-1&0&1\\-2&0&2\\-1&0&1
  \end{smallmatrix}\bigr] * x` (Sobel & Feldman 1968; replicated borders, so the frame is no
  edge), mapped affinely from :math:`[0, \sqrt2]` (its range on :math:`[-1, 1]` images) to
  :math:`[-1, 1]`: no edge is -1. A continuous map rather than Canny's binary edges (the paper's),
  so that small images keep their strokes' strength.
- ``"downsample"`` (:func:`downsample`): the mean of every ``factor x factor`` block, repeated back
  to the full size. The hint has the image's size, so the hint encoder needs no upsampling of its
  own; the information is the low-resolution image's exactly (each block holds one value).
- ``"mask"`` (:func:`random_mask`): a random ``keep`` fraction of the pixels, as two parts: the
  image with the other pixels set to 0, and the mask (1 where kept), so ``C + 1`` channels. An
  all-zero hint then means "nothing observed", which makes hint dropout's zero hint a true null.

Hints are made once for the training set (one mask per image for ``"mask"``). A hint may be any
function ``fn(x) -> hint`` of the user's.

:func:`hint_error` measures hint consistency: the mean squared difference between the hint
computed from a sample and the hint it was drawn with (for ``"mask"``, on the kept pixels).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from .checks import check_choice

HintName = Literal["edges", "downsample", "mask"]
#: a built-in hint by name, or the user's function ``fn(x) -> hint``
Hint = HintName | Callable[[torch.Tensor], torch.Tensor]
HINT_NAMES = ("edges", "downsample", "mask")

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point batch of images (N, C, H, W), got {got}")


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """The Sobel edge map of each channel of ``x`` (module docs), in :math:`[-1, 1]`."""
    _check_images(x)
    c = x.shape[1]
    kx = _SOBEL.to(x)
    kernels = torch.stack([kx, kx.T])[:, None].repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    grad = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels, groups=c)
    magnitude = grad.unflatten(1, (c, 2)).square().sum(2).sqrt()
    return magnitude * math.sqrt(2) - 1


def downsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """The ``factor x factor`` block means of ``x``, repeated back to its size (module docs)."""
    _check_images(x)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"factor must divide the image size {tuple(x.shape[-2:])}, got {factor}")
    low = F.avg_pool2d(x, factor)
    return low.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def random_mask(
    x: torch.Tensor, keep: float = 0.25, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[x * m, m]`` with ``m`` 1 on a random ``keep`` fraction of the pixels (each pixel
    independently, the same for every channel), 0 elsewhere: ``C + 1`` channels."""
    _check_images(x)
    if not (isinstance(keep, int | float) and 0 < keep <= 1):
        raise ValueError(f"keep must lie in (0, 1], got {keep!r}")
    n, _, h, w = x.shape
    u = torch.rand((n, 1, h, w), generator=generator, device=x.device, dtype=x.dtype)
    mask = (u < keep).to(x.dtype)
    return torch.cat([x * mask, mask], 1)


HINTS: dict[str, Callable[..., torch.Tensor]] = {
    "edges": sobel_edges,
    "downsample": downsample,
    "mask": random_mask,
}


def make_hints(
    hint: Hint, x: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The hints of images ``x``: a built-in by name (``"mask"`` draws from ``generator``), or
    ``hint(x)``, which must return a finite floating-point ``(N, C', H', W')`` tensor."""
    _check_images(x)
    if callable(hint):
        out = hint(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"a hint function must return a batch of hint images ({x.shape[0]}, C, H, W) for "
                f"{x.shape[0]} images, got {got}"
            )
        if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
            raise ValueError("a hint function must return finite floating-point values")
        return out
    check_choice("hint", hint, HINT_NAMES)
    if hint == "mask":
        return random_mask(x, generator=generator)
    return HINTS[hint](x)


def hint_channels(hint: Hint, x: torch.Tensor) -> int:
    """The channels of the hints of images like ``x`` (one image is made to find out)."""
    return make_hints(hint, x[:1], generator=torch.Generator(x.device).manual_seed(0)).shape[1]


def hint_error(hint: Hint, x: torch.Tensor, hints: torch.Tensor) -> torch.Tensor:
    """Hint consistency per sample: the mean squared difference between the hint of ``x`` and
    ``hints`` (``"mask"``: between ``x`` and the hint's image on its kept pixels), ``(N,)``."""
    _check_images(x)
    if hint == "mask":
        c = x.shape[1]
        if hints.shape != (x.shape[0], c + 1, *x.shape[2:]):
            raise ValueError(
                f"mask hints for x of shape {tuple(x.shape)} must have shape "
                f"{(x.shape[0], c + 1, *x.shape[2:])}, got {tuple(hints.shape)}"
            )
        mask = hints[:, c:]
        squared = (x * mask - hints[:, :c]).square().sum((1, 2, 3))
        return squared / (c * mask.sum((1, 2, 3))).clamp_min(1)
    made = make_hints(hint, x)
    if made.shape != hints.shape:
        raise ValueError(
            f"hints must have the shape of the hints of x, {tuple(made.shape)}; got "
            f"{tuple(hints.shape)}"
        )
    return (made - hints).square().flatten(1).mean(1)
