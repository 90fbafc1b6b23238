"""Network parameterizations: every conversion recovers eps, x0 and the score, any alpha, sigma."""

from __future__ import annotations

import pytest
import torch
from conftest import PlainLinearSDE

from sdekit.linear import EDMSDE, VESDE, VPSDE
from sdekit.mixture import GaussianMixture
from sdekit.parameterization import (
    PREDICTIONS,
    check_prediction,
    from_score,
    score_fn,
    target,
    to_eps,
    to_score,
    to_x0,
)
from sdekit.sde import broadcast_to_data


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize(
    "sde", [VPSDE(), VESDE(), EDMSDE(), PlainLinearSDE()], ids=["vp", "ve", "edm", "plain"]
)
def test_target_round_trips(prediction, sde):
    """x_t = alpha x0 + sigma eps; each prediction's target converts back to eps, x0, -eps/sigma
    (VE, EDM and the plain SDE have alpha^2 + sigma^2 != 1)."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(6, generator=gen, dtype=torch.float64)
    alpha, sigma = (broadcast_to_data(v, x0) for v in sde.marginal(t))
    x = alpha * x0 + sigma * eps
    out = target(prediction, x0, eps, alpha, sigma)
    torch.testing.assert_close(to_eps(out, prediction, x, alpha, sigma), eps)
    torch.testing.assert_close(to_x0(out, prediction, x, alpha, sigma), x0)
    torch.testing.assert_close(to_score(out, prediction, x, alpha, sigma), -eps / sigma)


def test_v_target_is_salimans_ho():
    """v = alpha eps - sigma x0 (Salimans & Ho 2022, §4), with literal numbers."""
    v = target("v", torch.tensor(2.0), torch.tensor(-1.0), torch.tensor(0.6), torch.tensor(0.8))
    assert float(v) == pytest.approx(0.6 * -1.0 - 0.8 * 2.0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_score_fn_wraps_exact_models(prediction):
    """A model that outputs the exact target (from the exact mixture score by Tweedie) wraps back
    to the exact score."""
    gm = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 2.0]], 0.5)
    sde = VESDE()

    def model(x, t):
        alpha, sigma = (broadcast_to_data(v, x) for v in sde.marginal(t))
        eps = -sigma * gm.score(x, t, sde)
        x0 = (x - sigma * eps) / alpha
        return target(prediction, x0, eps, alpha, sigma)

    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    torch.testing.assert_close(score_fn(model, sde, prediction)(x, t), gm.score(x, t, sde))


def test_unknown_prediction_raises():
    with pytest.raises(ValueError, match="prediction must be one of"):
        check_prediction("noise")
    with pytest.raises(ValueError, match="prediction must be one of"):
        score_fn(lambda x, t: x, VPSDE(), "epsilon")
    with pytest.raises(ValueError, match="prediction must be one of"):
        target("x_0", torch.zeros(1), torch.zeros(1), 1.0, 1.0)


@pytest.mark.parametrize("prediction", ["score", "eps", "x0", "v"])
def test_from_score_inverts_to_score(prediction):
    """from_score is the exact inverse of to_score for every prediction and (alpha, sigma)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    out = torch.randn(5, 3, generator=g, dtype=torch.float64)
    alpha = torch.rand(5, 1, generator=g, dtype=torch.float64) + 0.1
    sigma = torch.rand(5, 1, generator=g, dtype=torch.float64) * 3 + 0.05
    s = to_score(out, prediction, x, alpha, sigma)
    torch.testing.assert_close(
        from_score(s, prediction, x, alpha, sigma), out, rtol=1e-12, atol=1e-12
    )
