r"""Guidance: steering a model toward a class, as model transforms every sampler accepts.

Both methods turn a model into another model, called ``guided(x, t, cond)`` like a conditional one,
so that ``sample(guided, sde, shape, cond=labels, prediction=...)`` runs them through every sampler,
every SDE and every prediction type, and they compose with other transforms
(:func:`sdekit.thresholding.thresholded` around a guided model bounds its :math:`\hat x_0`).

**Classifier-free guidance** (Ho & Salimans 2022, eq. 6), with a network trained with label dropout
(:class:`~sdekit.networks.LabelEmbedding`, ``p_uncond > 0``), so that it also predicts the
unconditional :math:`\varepsilon(x, t, \varnothing)`:

.. math:: \tilde\varepsilon(x, t, y) = (1 + w)\,\varepsilon(x, t, y) - w\,\varepsilon(x, t, \varnothing).

*The convention.* :math:`w` is the paper's weight: :math:`w = 0` is the conditional model,
:math:`w = -1` the unconditional one, :math:`w > 0` guides. diffusers' (and Imagen's)
``guidance_scale`` writes the same combination as
:math:`\varepsilon(\varnothing) + g\,(\varepsilon(y) - \varepsilon(\varnothing))`, so
:math:`g = 1 + w`: diffusers' ``guidance_scale=7.5`` is ``w=6.5`` here. Since the two conventions
differ by one, a bare number is ambiguous: :func:`guidance_weight` (the one place that maps them)
takes exactly one of ``w=`` and ``guidance_scale=``, by keyword, and refuses both or neither.

*Any prediction space.* At fixed :math:`(x_t, t)` every conversion of the output table
(:mod:`sdekit.parameterization`) is affine in the model output, :math:`\varepsilon = a F + b`, with
the same :math:`a, b` for the conditional and the unconditional output. Because the weights
:math:`1 + w` and :math:`-w` sum to one,
:math:`(1 + w)(aF_y + b) - w(aF_\varnothing + b) = a\bigl((1 + w)F_y - wF_\varnothing\bigr) + b`:
guiding the score, :math:`\varepsilon`, :math:`\hat x_0` or :math:`v` gives the same sampler input,
so the combination is done on the model's own output. In score form it is
:math:`\nabla\log p_t(x) + (1 + w)\nabla\log p_t(y \mid x)`: the score of
:math:`p_t(x)\,p_t(y \mid x)^{1 + w}` up to the normalisation, classifier guidance with scale
:math:`1 + w` by the model's implicit classifier.

*Cost.* The conditional and unconditional outputs come from one batched call of the model on
:math:`2B` samples (the condition stacked with its null version by
:func:`sdekit.conditioning.concat`). ``sample()``'s ``info.nfe`` counts calls of the model it is
given, here the guided one: each is one batched network call of :math:`2B` samples (one of
:math:`B` at ``w = 0``, which returns the conditional model itself).

*Options.* A guidance interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval
improves sample and distribution quality"): guide only where :math:`\tilde\sigma = \sigma/\alpha`
(EDM's noise level, so their intervals carry over to every SDE) lies in
:math:`(\tilde\sigma_\text{lo}, \tilde\sigma_\text{hi}]`, or :math:`t` in
:math:`(t_\text{lo}, t_\text{hi}]`; elsewhere the output is the conditional model's. (The network is
still called on :math:`2B` samples there: a per-sample choice without a host synchronisation.)
Rescaling (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", §3.4),
per sample, on the model's output :math:`F` (their :math:`v`; the same for ``"eps"`` and
``"score"``, which differ by a per-sample factor):

.. math:: F_\text{rescaled} = \tilde F\,\frac{\operatorname{std}(F_y)}{\operatorname{std}(\tilde F)},
          \qquad F_\text{final} = \phi\,F_\text{rescaled} + (1 - \phi)\,\tilde F.

Unlike the combination, rescaling depends on the prediction space. Dynamic thresholding of
:math:`\hat x_0` (Saharia et al. 2022, §2.3) is :func:`sdekit.thresholding.thresholded` applied to
the guided model.

**Classifier guidance** (Dhariwal & Nichol 2021, §4, Alg. 1-2; Song et al. 2021, eq. 48): with a
noise-conditional classifier :math:`p_\phi(y \mid x_t, t)` (:mod:`sdekit.networks.classifier`) and
scale :math:`s`,

.. math:: \nabla\log p_t(x \mid y) \approx \nabla\log p_t(x) + s\,\nabla_x\log p_\phi(y \mid x_t, t),
          \qquad \tilde\varepsilon = \varepsilon - s\,\sigma_t\,\nabla_x\log p_\phi(y \mid x_t, t),

the gradient by autograd, added in score space and converted back to the model's prediction by the
linear part of :func:`sdekit.parameterization.from_score`. With the exact classifier
:math:`p_t(y \mid x)` and :math:`s = 1` it is exactly the class-conditional score (Bayes' rule).
Each guided call costs one model call and one classifier forward and backward pass on :math:`B`
samples (one ``info.nfe``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import Cond, call_model, concat
from .linear import LinearSDE
from .networks.embeddings import NULL_LABEL, LabelEmbedding
from .parameterization import Prediction, check_prediction, from_score
from .sde import broadcast_to_data

__all__ = [
    "NULL_LABEL",
    "guidance_weight",
    "null_labels",
    "labels_of",
    "combine",
    "rescale",
    "classifier_free_guidance",
    "classifier_gradient",
    "classifier_guidance",
]


def guidance_weight(*, w: float | None = None, guidance_scale: float | None = None) -> float:
    """The paper's weight :math:`w` from exactly one of the two conventions (module docs).

    Args:
        w: Ho & Salimans' weight (0: the conditional model).
        guidance_scale: diffusers' / Imagen's scale :math:`1 + w` (1: the conditional model).
    """
    if (w is None) == (guidance_scale is None):
        raise ValueError(
            "give exactly one of w (Ho & Salimans: 0 is the conditional model) and guidance_scale "
            f"(diffusers: 1 + w), got w={w}, guidance_scale={guidance_scale}"
        )
    if w is not None:
        return _finite("w", w)
    return _finite("guidance_scale", guidance_scale) - 1.0


def _finite(name: str, value) -> float:
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        real = True
    number = float(value) if real else math.nan
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def null_labels(cond: Cond) -> Cond:
    """The unconditional version of ``cond``: its labels replaced by :data:`NULL_LABEL`.

    ``cond`` is a labels tensor ``(batch,)`` or a mapping with a ``"labels"`` entry (the other
    entries, e.g. a control image, are kept).
    """
    if isinstance(cond, torch.Tensor):
        if cond.dtype.is_floating_point or cond.dtype == torch.bool:
            raise ValueError(
                f"cond must be integer labels for the default uncond=null_labels, got dtype "
                f"{cond.dtype}; pass uncond= a function giving the unconditional condition"
            )
        return torch.full_like(cond, NULL_LABEL)
    if isinstance(cond, Mapping) and "labels" in cond:
        return {**cond, "labels": null_labels(cond["labels"])}
    raise ValueError(
        "cond must be labels (batch,) or a mapping with 'labels' for the default "
        "uncond=null_labels; pass uncond= a function giving the unconditional condition"
    )


def combine(out_cond: torch.Tensor, out_uncond: torch.Tensor, w) -> torch.Tensor:
    r""":math:`(1 + w)F_y - wF_\varnothing`, written :math:`F_y + w(F_y - F_\varnothing)`, so
    that :math:`w = 0` returns ``out_cond`` bit for bit. ``w``: a number or broadcastable tensor."""
    return out_cond + w * (out_cond - out_uncond)


def rescale(guided: torch.Tensor, out_cond: torch.Tensor, phi: float) -> torch.Tensor:
    r"""Lin et al. 2024, §3.4: :math:`\phi\,\tilde F\,\sigma_y/\tilde\sigma + (1 - \phi)\tilde F`,
    standard deviations per sample over the data dimensions (a constant ``guided`` is kept)."""
    dims = tuple(range(1, guided.ndim))
    # population std: Bessel's factor would cancel in the ratio, and a single value has std 0
    std_cond = out_cond.std(dim=dims, keepdim=True, correction=0)
    std_guided = guided.std(dim=dims, keepdim=True, correction=0)
    ratio = torch.where(std_guided > 0, std_cond / std_guided, torch.ones_like(std_guided))
    return guided * (phi * ratio + (1 - phi))


def _interval(name: str, interval) -> tuple[float, float] | None:
    if interval is None:
        return None
    lo, hi = (float(v) for v in interval)
    if not (math.isfinite(lo) and lo >= 0 and lo < hi):
        raise ValueError(f"{name} must be (lo, hi) with 0 <= lo < hi, got {interval}")
    return lo, hi


def _label_embedding(model) -> LabelEmbedding | None:
    """The one label embedding inside a built-in network (or a wrapper of it), else None."""
    if not isinstance(model, nn.Module):
        return None
    found = [m for m in model.modules() if isinstance(m, LabelEmbedding)]
    return found[0] if len(found) == 1 else None


def classifier_free_guidance(
    model: Callable[..., torch.Tensor],
    *,
    w: float | None = None,
    guidance_scale: float | None = None,
    uncond: Callable[[Cond], Cond] = null_labels,
    sigma_interval: tuple[float, float] | None = None,
    t_interval: tuple[float, float] | None = None,
    sde: LinearSDE | None = None,
    rescale_phi: float = 0.0,
) -> Callable[..., torch.Tensor]:
    r"""``model`` guided by classifier-free guidance (module docs): ``guided(x, t, cond)``.

    Args:
        model: a conditional model ``model(x, t, cond)`` that also accepts the unconditional
            condition ``uncond(cond)`` (e.g. a network built with ``p_uncond > 0``); any output.
        w: the paper's weight (0: conditional model). Exactly one of ``w`` and ``guidance_scale``.
        guidance_scale: diffusers' scale, :math:`1 + w`.
        uncond: maps a condition to its unconditional version (default: labels to
            :data:`NULL_LABEL`, other entries of a mapping kept).
        sigma_interval: guide only where :math:`\sigma/\alpha \in (\text{lo}, \text{hi}]`
            (Kynkäänniemi et al. 2024); needs ``sde``.
        t_interval: guide only where :math:`t \in (\text{lo}, \text{hi}]`.
        sde: the linear SDE (for ``sigma_interval``).
        rescale_phi: :math:`\phi \in [0, 1]` of Lin et al.'s rescaling (0: off; they use 0.7).

    Returns:
        ``guided(x, t, cond)`` with the output type of ``model``; ``cond`` is required.
    """
    weight = guidance_weight(w=w, guidance_scale=guidance_scale)
    embedding = _label_embedding(model)
    if embedding is not None:
        if embedding.num_classes is None:
            raise ValueError(
                "model is unconditional (num_classes=None): classifier-free guidance needs a "
                "class-conditional model trained with label dropout (p_uncond > 0)"
            )
        if not embedding.has_null_label and uncond is null_labels:
            raise ValueError(
                "model has no null label (built with p_uncond = 0): train it with p_uncond > 0 "
                "for classifier-free guidance, or pass uncond= for another unconditional input"
            )
    sigma_interval = _interval("sigma_interval", sigma_interval)
    t_interval = _interval("t_interval", t_interval)
    if sigma_interval is not None and t_interval is not None:
        raise ValueError("give at most one of sigma_interval and t_interval")
    if sigma_interval is not None and not isinstance(sde, LinearSDE):
        raise ValueError(f"sigma_interval needs sde, a LinearSDE; got {type(sde).__name__}")
    if not 0 <= _finite("rescale_phi", rescale_phi) <= 1:
        raise ValueError(f"rescale_phi must lie in [0, 1], got {rescale_phi}")

    def inside(t: torch.Tensor) -> torch.Tensor:
        if sigma_interval is not None:
            alpha, sigma = sde.marginal(t.to(torch.float64))
            level, (lo, hi) = sigma / alpha, sigma_interval
        else:
            level, (lo, hi) = t, t_interval
        return (level > lo) & (level <= hi)

    def guided(x: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        if cond is None:
            raise ValueError(
                "cond is required by classifier-free guidance: sample(guided, ..., cond=labels)"
            )
        if weight == 0:
            return model(x, t, cond)
        b = x.shape[0]
        out = model(torch.cat([x, x]), torch.cat([t, t]), concat([cond, uncond(cond)]))
        out_cond, out_uncond = out[:b], out[b:]
        w_t = weight
        if sigma_interval is not None or t_interval is not None:
            w_t = broadcast_to_data(inside(t).to(out.dtype) * weight, out_cond)
        result = combine(out_cond, out_uncond, w_t)
        if rescale_phi > 0:
            result = rescale(result, out_cond, rescale_phi)
        return result

    return guided


def labels_of(cond: Cond) -> torch.Tensor:
    """The class labels of a condition: ``cond`` itself, or ``cond["labels"]`` of a mapping."""
    if isinstance(cond, torch.Tensor):
        return cond
    if isinstance(cond, Mapping) and "labels" in cond:
        return cond["labels"]
    raise ValueError(
        "cond must be the labels (batch,) to guide toward, or a mapping with 'labels': "
        "sample(guided, ..., cond=labels)"
    )


def classifier_gradient(
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
) -> torch.Tensor:
    r""":math:`\nabla_x\log p_\phi(y \mid x, t)` by autograd, shaped like ``x``.

    ``classifier(x, t)`` returns logits ``(batch, C)`` (normalised by a log-softmax here);
    ``labels`` ``(batch,)`` integers in ``[0, C)``; ``num_classes``, when given, must equal ``C``.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "classifier guidance needs autograd: sample under torch.no_grad(), not "
            "torch.inference_mode()"
        )
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, t)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"classifier must return logits (batch, num_classes) = ({x.shape[0]}, C), got "
                f"{tuple(logits.shape)}"
            )
        c = logits.shape[1]
        if num_classes is not None and c != num_classes:
            raise ValueError(
                f"classifier returns {c} classes, but num_classes is {num_classes}: the classifier "
                "must be trained on the model's classes"
            )
        if labels.shape != (x.shape[0],) or labels.dtype.is_floating_point:
            raise ValueError(
                f"labels must be (batch,) = ({x.shape[0]},) integers, got {tuple(labels.shape)} "
                f"{labels.dtype}"
            )
        ok = (labels >= 0) & (labels < c)
        if labels.device.type == "cpu":
            if not bool(ok.all()):
                raise ValueError(
                    f"labels must lie in [0, {c}) (the classifier's classes), got "
                    f"{labels[~ok][:4].tolist()}"
                )
        else:
            torch._assert_async(ok.all(), f"labels must lie in [0, {c})")
        log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None].long())
        (grad,) = torch.autograd.grad(log_p.sum(), x_in)
    return grad.to(x.dtype)


def classifier_guidance(
    model: Callable[..., torch.Tensor],
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    scale: float,
    prediction: Prediction = "score",
    sde: LinearSDE | None = None,
    conditional_model: bool = False,
    num_classes: int | None = None,
) -> Callable[..., torch.Tensor]:
    r"""``model`` guided by the gradient of a noisy classifier (module docs): ``guided(x, t, cond)``.

    Args:
        model: the diffusion model, predicting ``prediction``; unconditional ``model(x, t)``, or
            conditional ``model(x, t, cond)`` with ``conditional_model=True`` (Dhariwal & Nichol
            guide both).
        classifier: ``classifier(x, t) -> logits (batch, C)``, e.g. a trained
            :class:`~sdekit.networks.UNetClassifier` in eval mode, or
            :meth:`sdekit.GaussianMixture.classifier_fn` (exact).
        scale: the guidance scale :math:`s` (finite; 1 with an exact classifier gives the exact
            class-conditional score).
        prediction: what ``model`` outputs (the guided model outputs the same).
        sde: the linear SDE (its :math:`\alpha, \sigma` convert the gradient to ``prediction``;
            not needed for ``"score"``).
        conditional_model: pass ``cond`` to ``model`` too.
        num_classes: the number of classes; default ``classifier.num_classes`` if it has one. It
            must match the classifier's output and a conditional network's classes.

    Returns:
        ``guided(x, t, cond)``: ``cond`` the labels (or a mapping with ``"labels"``), required.
    """
    scale = _finite("scale", scale)
    check_prediction(prediction)
    if prediction != "score" and not isinstance(sde, LinearSDE):
        raise ValueError(
            f"prediction {prediction!r} needs sde, a LinearSDE (to convert the classifier "
            f"gradient); got {type(sde).__name__}"
        )
    declared = getattr(classifier, "num_classes", None)
    if num_classes is None:
        num_classes = declared
    elif declared is not None and declared != num_classes:
        raise ValueError(f"classifier has {declared} classes, but num_classes is {num_classes}")
    embedding = _label_embedding(model)
    if embedding is not None:
        if conditional_model and embedding.num_classes is None:
            raise ValueError(
                "conditional_model=True, but model is unconditional (num_classes=None)"
            )
        if not conditional_model and embedding.num_classes is not None:
            raise ValueError(
                f"model is class-conditional (num_classes={embedding.num_classes}): pass "
                "conditional_model=True to give it the labels too"
            )
        if conditional_model and num_classes is not None and embedding.num_classes != num_classes:
            raise ValueError(
                f"classifier has {num_classes} classes, but model has {embedding.num_classes}"
            )
    if isinstance(classifier, nn.Module) and classifier.training:
        warnings.warn(
            "classifier is in training mode (dropout on): call classifier.eval() before guiding",
            stacklevel=2,
        )

    def guided(x: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        if cond is None:
            raise ValueError(
                "cond is required by classifier guidance: sample(guided, ..., cond=labels)"
            )
        labels = labels_of(cond)
        out = call_model(model, x, t, cond if conditional_model else None)
        grad = scale * classifier_gradient(classifier, x, t, labels, num_classes).to(out.dtype)
        if prediction == "score":
            return out + grad
        alpha, sigma = (
            broadcast_to_data(c, x).to(out.dtype) for c in sde.marginal(t.to(torch.float64))
        )
        # from_score is affine in the score: at x = 0 it is its linear part
        return out + from_score(grad, prediction, torch.zeros_like(out), alpha, sigma)

    return guided
