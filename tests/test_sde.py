"""The SDE base class: reverse-time drift, probability-flow drift, the torchdiffeq ODE wrapper."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

from sdekit.linear import VPSDE
from sdekit.sde import SDE, broadcast_to_data
from sdekit.simulate import simulate

C = 0.7


class StateDependentSDE(SDE):
    r""":math:`f = -x^3 + \sin t`, :math:`G(x) = c\sqrt{1 + x^2}`.

    So :math:`GG^\top = c^2(1 + x^2)` and :math:`\nabla\cdot(GG^\top) = 2c^2 x`.
    """

    def drift(self, x, t):
        return -(x**3) + broadcast_to_data(torch.sin(t), x)

    def diffusion(self, x, t):
        return C * torch.sqrt(1 + x**2)


class ScalarDiffusionSDE(SDE):
    """:math:`f = -x`, :math:`g(t) = 1 + t` returned per sample, shape ``(batch,)``."""

    def drift(self, x, t):
        return -x

    def diffusion(self, x, t):
        return 1 + t


def some_score(x, t):
    """An arbitrary smooth 'score' that depends on both arguments."""
    return torch.cos(x) * broadcast_to_data(1 + t, x)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.rand(5, generator=gen, dtype=torch.float64)
    return x, t


def test_diffusion_divergence_state_dependent_closed_form(batch):
    x, t = batch
    sde = StateDependentSDE()
    torch.testing.assert_close(sde.diffusion_divergence(x, t), 2 * C**2 * x)
    torch.testing.assert_close(sde.diffusion_squared(x, t), C**2 * (1 + x**2))


def test_reverse_drift_state_dependent(batch):
    x, t = batch
    sde = StateDependentSDE()
    s = some_score(x, t)
    f = -(x**3) + torch.sin(t)[:, None, None, None]
    expected = f - C**2 * (1 + x**2) * s - 2 * C**2 * x
    rev = sde.reverse(some_score)
    torch.testing.assert_close(rev.drift(x, t), expected)
    torch.testing.assert_close(rev.diffusion(x, t), C * torch.sqrt(1 + x**2))
    assert (rev.T, rev.t_min) == (sde.T, sde.t_min)


def test_probability_flow_drift_state_dependent(batch):
    x, t = batch
    sde = StateDependentSDE()
    s = some_score(x, t)
    f = -(x**3) + torch.sin(t)[:, None, None, None]
    expected = f - 0.5 * C**2 * (1 + x**2) * s - C**2 * x
    ode = sde.probability_flow(some_score)
    torch.testing.assert_close(ode.drift(x, t), expected)
    # torchdiffeq's convention: a scalar time broadcast over the batch
    torch.testing.assert_close(ode(t[2], x), ode.drift(x, t[2].expand(5)))


def test_scalar_diffusion_broadcasts_per_sample(batch):
    x, t = batch
    sde = ScalarDiffusionSDE()
    g2 = (1 + t)[:, None, None, None] ** 2
    s = some_score(x, t)
    assert torch.equal(sde.diffusion_divergence(x, t), torch.zeros_like(x))
    torch.testing.assert_close(sde.reverse(some_score).drift(x, t), -x - g2 * s)
    torch.testing.assert_close(sde.probability_flow(some_score).drift(x, t), -x - 0.5 * g2 * s)


def test_probability_flow_odeint_rk4_exact_and_counts_nfe():
    r"""Gaussian data :math:`\mathcal N(0, s^2)` under VP: the flow is the linear map
    :math:`x_t = x_T\sqrt{(\alpha_t^2 s^2 + \sigma_t^2)/(\alpha_T^2 s^2 + \sigma_T^2)}` and the
    exact score is :math:`-x/(\alpha_t^2 s^2 + \sigma_t^2)`; rk4 with 99 steps is accurate to ~1e-8.
    """
    sde, s2 = VPSDE(), 0.25

    def var(t):
        return sde.alpha(t) ** 2 * s2 + sde.sigma(t) ** 2

    ode = sde.probability_flow(lambda x, t: -x / broadcast_to_data(var(t), x))
    x_T = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = torch.tensor([1.0, 0.01], dtype=torch.float64)
    x_0 = torchdiffeq.odeint(ode, x_T, ts, method="rk4", options=dict(step_size=0.01))[-1]
    ratio = torch.sqrt(var(ts[1:]) / var(ts[:1]))
    torch.testing.assert_close(x_0, x_T * ratio, rtol=1e-7, atol=1e-9)
    # 99 steps of 0.01; torchdiffeq's rk4 (3/8 rule) calls the drift 4 times a step
    assert ode.nfe == 4 * 99


def test_simulate_steps_the_probability_flow_as_euler():
    sde = VPSDE()
    ode = sde.probability_flow(lambda x, t: -x)
    x = torch.ones(3, 2, dtype=torch.float64)
    ts = torch.tensor([1.0, 0.6], dtype=torch.float64)
    t = ts[:1].expand(3)
    expected = x + ode.drift(x, t) * (-0.4)
    torch.testing.assert_close(simulate(ode, x, ts, return_path=False), expected)


@pytest.mark.parametrize(
    ("T", "t_min"), [(0.0, 0.0), (-1.0, 0.0), (math.inf, 0.0), (1.0, 1.0), (1.0, -0.1)]
)
def test_bad_horizon(T, t_min):
    with pytest.raises(ValueError, match="T|t_min"):
        StateDependentSDE(T=T, t_min=t_min)


def test_broadcast_to_data():
    x = torch.zeros(4, 3, 2)
    v = torch.arange(4.0)
    assert broadcast_to_data(v, x).shape == (4, 1, 1)
    assert broadcast_to_data(x, x) is x
