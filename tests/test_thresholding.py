"""Clipping and dynamic thresholding of x0-hat: the formula, identity in range, every prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PlainLinearSDE
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit
from sdekit.linear import EDMSDE, VESDE, VPSDE
from sdekit.parameterization import PREDICTIONS, target, to_x0
from sdekit.sde import broadcast_to_data
from sdekit.thresholding import THRESHOLDINGS, threshold_x0, thresholded

SDES = [VPSDE(), VESDE(), EDMSDE(), PlainLinearSDE()]
SDE_IDS = ["vp", "ve", "edm", "plain"]


def oracle(sde, prediction, x0_of):
    """A model whose data estimate at (x, t) is x0_of(x), in the output space of ``prediction``."""

    def model(x, t, cond=None):
        alpha, sigma = (broadcast_to_data(v, x).to(x.dtype) for v in sde.marginal(t.double()))
        x0 = x0_of(x) if cond is None else x0_of(x) + cond[:, None, None, None]
        eps = (x - alpha * x0) / sigma
        return target(prediction, x0, eps, alpha, sigma)

    return model


def test_dynamic_thresholding_is_saharia_et_al_formula():
    """s = max(1, quantile(|x0|, p)) per sample, x0 <- clip(x0, -s, s) / s (numpy's quantile)."""
    gen = torch.Generator().manual_seed(0)
    x0 = 3 * torch.randn(5, 2, 4, 4, generator=gen, dtype=torch.float64)
    x0[0] = 0.5 * torch.tanh(x0[0])
    x0[0, 0, 0, 0] = 1.5  # a value beyond 1 but the sample's quantile below: s = 1, a clip
    for p in (0.5, 0.9, 0.995, 1.0):
        flat = x0.flatten(1).abs().numpy()
        s = np.maximum(1.0, np.quantile(flat, p, axis=1))[:, None, None, None]
        expected = np.clip(x0.numpy(), -s, s) / s
        np.testing.assert_allclose(threshold_x0(x0, "dynamic", p).numpy(), expected, rtol=1e-12)
    out = threshold_x0(x0, "dynamic", 0.9)
    assert float(out.abs().max()) <= 1.0
    peaks = threshold_x0(x0, "dynamic", 1.0).abs().flatten(1).max(1).values
    assert torch.equal(peaks, torch.ones(5, dtype=torch.float64))  # p = 1: divide by the max
    torch.testing.assert_close(threshold_x0(x0, "clip"), x0.clamp(-1, 1))
    assert float(x0[0].abs().max()) > 1 > float(np.quantile(x0[0].abs().numpy(), 0.5))
    torch.testing.assert_close(threshold_x0(x0[:1], "dynamic", 0.5), x0[:1].clamp(-1, 1))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-50, 50), min_size=2, max_size=40),
    st.floats(0.01, 1.0),
    st.sampled_from(THRESHOLDINGS),
)
def test_thresholded_values_lie_in_range_and_keep_their_order(values, p, method):
    x0 = torch.tensor(values, dtype=torch.float64)[None]
    out = threshold_x0(x0, method, p)
    assert float(out.abs().max()) <= 1.0
    order = torch.argsort(x0[0])
    assert bool((out[0][order].diff() >= 0).all())  # monotone: no value overtakes another
    if float(x0.abs().max()) <= 1.0:
        assert torch.equal(out, x0)


@pytest.mark.parametrize("method", THRESHOLDINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_thresholded_model_is_the_identity_in_range(sde, prediction, method):
    """An estimate already inside [-1, 1] leaves the model's output unchanged, bit for bit."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(4, generator=gen, dtype=torch.float64)
    model = oracle(sde, prediction, lambda x: 0.9 * torch.tanh(x))
    assert torch.equal(thresholded(model, sde, prediction, method=method)(x, t), model(x, t))


@pytest.mark.parametrize("method", THRESHOLDINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_thresholded_model_bounds_x0_for_every_prediction(sde, prediction, method):
    """The output, read back as x0 through the conversion table, is threshold_x0 of the model's."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(4, generator=gen, dtype=torch.float64)
    model = oracle(sde, prediction, lambda x: 4 * x + 0.5)
    out = thresholded(model, sde, prediction, method=method, percentile=0.8)(x, t)
    alpha, sigma = (broadcast_to_data(v, x) for v in sde.marginal(t))
    x0 = to_x0(out, prediction, x, alpha, sigma)
    expected = threshold_x0(4 * x + 0.5, method, 0.8)
    torch.testing.assert_close(x0, expected, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(expected, 4 * x + 0.5)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_sampler_path_ends_in_range_with_a_thresholded_model(prediction):
    """A model whose x0 is 3 everywhere (with a per-sample offset through cond): DDIM and
    DPM-Solver++ (which follow x0-hat) end at the thresholded value, the raw model far outside."""
    sde = VPSDE()
    model = oracle(sde, prediction, lambda x: torch.full_like(x, 3.0))
    cond = torch.tensor([0.0, -7.0])
    bounded = thresholded(model, sde, prediction)
    for method in ("ddim", "dpmpp_2m"):
        kwargs = dict(method=method, steps=10, prediction=prediction, dtype=torch.float64)
        raw, _ = sdekit.sample(model, sde, (2, 1, 4, 4), cond=cond, **kwargs)
        x, _ = sdekit.sample(bounded, sde, (2, 1, 4, 4), cond=cond, **kwargs)
        assert float(raw.abs().min()) > 2.9
        torch.testing.assert_close(x[0], torch.ones_like(x[0]), atol=0.05, rtol=0)
        torch.testing.assert_close(x[1], -torch.ones_like(x[1]), atol=0.05, rtol=0)


def test_bad_arguments_are_named():
    sde = VPSDE()
    model = oracle(sde, "eps", lambda x: x)
    for p in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="percentile"):
            thresholded(model, sde, "eps", percentile=p)
    with pytest.raises(ValueError, match="method"):
        thresholded(model, sde, "eps", method="static")
    with pytest.raises(ValueError, match="prediction"):
        thresholded(model, sde, "noise")
    with pytest.raises(ValueError, match="sde"):
        thresholded(model, object(), "eps")
    with pytest.raises(ValueError, match="x0 must have shape"):
        threshold_x0(torch.ones(3))
