r"""What a network predicts, and the one place that converts between the choices.

With the marginal :math:`x_t = \alpha x_0 + \sigma\varepsilon` of a linear SDE, a network may output

- ``"score"``: :math:`\nabla_x\log p_t(x_t) \approx -\varepsilon/\sigma` (Song et al. 2021);
- ``"eps"``: the noise :math:`\varepsilon` (Ho et al. 2020);
- ``"x0"``: the denoised data :math:`x_0` (Karras et al. 2022's denoiser :math:`D(x;\sigma)`);
- ``"v"``: :math:`v = \alpha\varepsilon - \sigma x_0` (Salimans & Ho 2022, §4).

They are linked, for any :math:`\alpha, \sigma` (not only :math:`\alpha^2 + \sigma^2 = 1`), by

.. math:: \varepsilon = -\sigma\,s, \qquad x_0 = \frac{x_t - \sigma\varepsilon}{\alpha}, \qquad
          x_0 = \frac{\alpha x_t - \sigma v}{\alpha^2 + \sigma^2}, \qquad
          \varepsilon = \frac{\sigma x_t + \alpha v}{\alpha^2 + \sigma^2}.

``alpha`` and ``sigma`` below are already broadcast against ``x`` (see :func:`sdekit.broadcast_to_data`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

from .checks import check_choice
from .linear import LinearSDE
from .sde import ScoreFn, broadcast_to_data

#: what a network outputs
Prediction = Literal["score", "eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)


def check_prediction(prediction: Prediction) -> str:
    return check_choice("prediction", prediction, PREDICTIONS)


def to_eps(output, prediction: Prediction, x, alpha, sigma) -> torch.Tensor:
    """The noise estimate :math:`\\hat\\varepsilon` from a network output."""
    check_prediction(prediction)
    if prediction == "eps":
        return output
    if prediction == "score":
        return -sigma * output
    if prediction == "x0":
        return (x - alpha * output) / sigma
    return (sigma * x + alpha * output) / (alpha**2 + sigma**2)


def to_x0(output, prediction: Prediction, x, alpha, sigma) -> torch.Tensor:
    """The data estimate :math:`\\hat x_0` (Tweedie's formula for ``"score"``) from a network output."""
    check_prediction(prediction)
    if prediction == "x0":
        return output
    if prediction == "v":
        return (alpha * x - sigma * output) / (alpha**2 + sigma**2)
    return (x - sigma * to_eps(output, prediction, x, alpha, sigma)) / alpha


def to_score(output, prediction: Prediction, x, alpha, sigma) -> torch.Tensor:
    """The score estimate :math:`-\\hat\\varepsilon/\\sigma` from a network output."""
    if prediction == "score":
        return output
    return -to_eps(output, prediction, x, alpha, sigma) / sigma


def from_score(score, prediction: Prediction, x, alpha, sigma) -> torch.Tensor:
    """The output a ``prediction`` network gives for the score ``score``: the inverse of
    :func:`to_score`, for transforms that edit a model's output in score space."""
    check_prediction(prediction)
    if prediction == "score":
        return score
    eps = -sigma * score
    if prediction == "eps":
        return eps
    x0 = (x - sigma * eps) / alpha
    if prediction == "x0":
        return x0
    return alpha * eps - sigma * x0


def target(prediction: Prediction, x0, eps, alpha, sigma) -> torch.Tensor:
    """The regression target of a ``prediction`` network, for :math:`x_t = \\alpha x_0 + \\sigma\\varepsilon`.

    (The noise ``eps`` and data ``x0`` that made :math:`x_t`.)
    """
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    return -eps / sigma


def score_fn(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: LinearSDE,
    prediction: Prediction,
) -> ScoreFn:
    """Wrap ``model(x, t)`` that predicts ``prediction`` as a score function ``score(x, t)``."""
    check_prediction(prediction)
    if prediction == "score":
        return model

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha = broadcast_to_data(sde.alpha(t), x)
        sigma = broadcast_to_data(sde.sigma(t), x)
        return to_score(model(x, t), prediction, x, alpha, sigma)

    return score
