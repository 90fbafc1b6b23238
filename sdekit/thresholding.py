r"""Keeping :math:`\hat x_0` inside the data range while sampling: clipping and dynamic thresholding.

Data scaled to :math:`[-1, 1]` (every image loader of :mod:`sdekit.data`) has its denoised estimate
:math:`\hat x_0 = (x_t - \sigma\hat\varepsilon)/\alpha` inside that range, but a network's estimate
is not: at large noise levels its error is multiplied by :math:`1/\alpha`, and a sampler that
follows such an estimate can end far outside the range (saturated images). Saharia et al. 2022
("Photorealistic text-to-image diffusion models with deep language understanding", §2.3) bound it
at every model call:

- static thresholding, ``"clip"``: :math:`\hat x_0 \leftarrow \operatorname{clip}(\hat x_0, -1, 1)`;
- dynamic thresholding, ``"dynamic"``: per sample, :math:`s = \max(1, q_p(\lvert\hat x_0\rvert))`
  with :math:`q_p` the :math:`p`-quantile over the sample's values, then
  :math:`\hat x_0 \leftarrow \operatorname{clip}(\hat x_0, -s, s)/s`. Values beyond the
  :math:`p`-quantile are clipped and the rest scaled back into :math:`[-1, 1]`, so a sample whose
  estimate is too bright everywhere is dimmed rather than flattened to white. Where
  :math:`q_p \le 1` it is the clip.

:func:`thresholded` applies either to any model, whatever it predicts: it converts the output to
:math:`\hat x_0` with :func:`sdekit.parameterization.to_x0`, bounds it, and converts the change
back. Every conversion is affine in the model output :math:`y` at fixed :math:`x_t`,
:math:`\hat x_0 = a x_t + b y`, so the bounded output is :math:`y + (\hat x_0' - \hat x_0)/b`, the
linear part computed by the same table (:func:`~sdekit.parameterization.to_score` of ``"x0"``, then
:func:`~sdekit.parameterization.from_score`, at :math:`x_t = 0`). An estimate already in range is
returned unchanged, bit for bit. The result is called like a model, ``thresholded(x, t)`` or
``thresholded(x, t, cond)``, so every sampler, prediction type and other model transform (guidance)
accepts it. It is off unless asked for: data that is not bounded, such as the toy sets, must not be
thresholded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from .checks import check_choice
from .conditioning import Cond, call_model
from .linear import LinearSDE
from .parameterization import check_prediction, from_score, to_score, to_x0
from .sde import broadcast_to_data

#: how :math:`\hat x_0` is bounded: static clipping or Saharia et al.'s dynamic thresholding
Thresholding = Literal["clip", "dynamic"]
THRESHOLDINGS: tuple[str, ...] = get_args(Thresholding)


def check_percentile(percentile: float) -> float:
    if not (math.isfinite(percentile) and 0 < percentile <= 1):
        raise ValueError(f"percentile must lie in (0, 1], got {percentile}")
    return float(percentile)


def threshold_x0(
    x0: torch.Tensor, method: Thresholding = "dynamic", percentile: float = 0.995
) -> torch.Tensor:
    r"""Bound the data estimate ``x0`` ``(batch, ...)`` to :math:`[-1, 1]`, per sample.

    ``"clip"``: :math:`\operatorname{clip}(\hat x_0, -1, 1)`. ``"dynamic"``:
    :math:`\operatorname{clip}(\hat x_0, -s, s)/s` with :math:`s = \max(1, q_p(\lvert\hat x_0\rvert))`,
    the ``percentile`` :math:`p` quantile (linear interpolation) of the sample's absolute values
    (Saharia et al. 2022, §2.3; :math:`p = 0.995` as in diffusers' schedulers).
    """
    check_choice("method", method, THRESHOLDINGS)
    check_percentile(percentile)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape (batch, *data_shape), got {tuple(x0.shape)}")
    if method == "clip":
        return x0.clamp(-1, 1)
    flat = x0.flatten(1).abs().to(torch.promote_types(x0.dtype, torch.float32))
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1).to(x0.dtype)
    s = broadcast_to_data(s, x0)
    return torch.minimum(torch.maximum(x0, -s), s) / s


def thresholded(
    model: Callable[..., torch.Tensor],
    sde: LinearSDE,
    prediction: str,
    *,
    method: Thresholding = "dynamic",
    percentile: float = 0.995,
) -> Callable[..., torch.Tensor]:
    r"""``model`` with its :math:`\hat x_0` bounded by :func:`threshold_x0` at every call.

    Args:
        model: ``model(x, t)`` or ``model(x, t, cond)`` predicting ``prediction``.
        sde: the linear SDE whose :math:`\alpha(t), \sigma(t)` convert the output to
            :math:`\hat x_0`.
        prediction: what ``model`` outputs: ``"score"``, ``"eps"``, ``"x0"`` or ``"v"``; the result
            outputs the same.
        method, percentile: see :func:`threshold_x0`.

    Returns:
        ``fn(x, t, cond=None)``, called like ``model`` (the condition passed through unchanged).
    """
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"sde must be a LinearSDE, got {type(sde).__name__}")
    check_prediction(prediction)
    check_choice("method", method, THRESHOLDINGS)
    check_percentile(percentile)

    def fn(x: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        out = call_model(model, x, t, cond)
        alpha, sigma = (
            broadcast_to_data(c, x).to(out.dtype) for c in sde.marginal(t.to(torch.float64))
        )
        x0 = to_x0(out, prediction, x, alpha, sigma)
        change = threshold_x0(x0, method, percentile) - x0
        # the change in output space: the linear part of the conversion table (at x_t = 0)
        score_change = to_score(change, "x0", 0.0, alpha, sigma)
        return out + from_score(score_change, prediction, 0.0, alpha, sigma)

    return fn
