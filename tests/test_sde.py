"""The SDE base class: reverse-time drift, probability-flow drift, the torchdiffeq ODE wrapper."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

from sdekit.linear import EDMSDE, OUSDE, VESDE, VPSDE, SubVPSDE
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


def test_probability_flow_divergence_has_the_second_derivative_of_the_diffusion(batch):
    r""":math:`\partial_x\tilde f` for :math:`\tilde f = f - \tfrac12 c^2(1 + x^2)s - c^2x`, each
    coordinate on its own: :math:`-3x^2 - c^2 x s - \tfrac12 c^2(1 + x^2)s' - c^2`. Without the
    graph of :math:`\nabla\cdot GG^\top` the last :math:`-c^2` goes missing."""
    from sdekit.likelihood import exact_divergence

    x, t = batch
    x, t = x[:, :1, :1, :2].reshape(5, 2), t
    ode = StateDependentSDE().probability_flow(some_score)
    s = torch.cos(x) * (1 + t)[:, None]
    ds = -torch.sin(x) * (1 + t)[:, None]
    expected = (-3 * x**2 - C**2 * x * s - 0.5 * C**2 * (1 + x**2) * ds - C**2).sum(1)
    _, div = exact_divergence(ode.drift, x, t)
    torch.testing.assert_close(div, expected)


class WrongShapes(SDE):
    """Returns what a user might get wrong, chosen by ``kind``."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def drift(self, x, t):
        return {"drift_column": x[:, :1], "drift_tuple": (x,)}.get(self.kind, -x)

    def diffusion(self, x, t):
        if self.kind == "diffusion_column":
            return torch.ones_like(x[:, :1])
        if self.kind == "diffusion_numpy":
            return torch.ones_like(t).numpy()
        return torch.ones_like(t)


@pytest.mark.parametrize(
    "kind, error, match",
    [
        ("drift_column", ValueError, r"WrongShapes.drift must return a tensor of shape \(3, 2\)"),
        ("drift_tuple", TypeError, "WrongShapes.drift must return a torch.Tensor"),
        ("diffusion_column", ValueError, r"WrongShapes.diffusion .*or \(3,\) .*got \(3, 1\)"),
        ("diffusion_numpy", TypeError, "WrongShapes.diffusion must return a torch.Tensor.*numpy"),
        ("score_column", ValueError, r"score model \(score_fn\) must return .*\(3, 2\)"),
    ],
)
def test_wrong_output_shapes_raise_naming_the_function(kind, error, match):
    sde = WrongShapes(kind)
    x, t = torch.zeros(3, 2, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)

    def score(z, s):
        return z[:, :1] if kind == "score_column" else -z

    for use in (
        lambda: sde.reverse(score).drift(x, t),
        lambda: sde.probability_flow(score)(t[0], x),
        lambda: simulate(sde.reverse(score), x, torch.tensor([1.0, 0.5])),
    ):
        with pytest.raises(error, match=match):
            use()


@pytest.mark.parametrize("name", ["vp", "subvp", "ou", "ve", "edm"])
def test_the_public_ode_object_is_safe_to_hand_to_odeint(name):
    """README: ``torchdiffeq.odeint(sde.probability_flow(score), x_T, ts)`` with dopri5 on centred
    data. torchdiffeq's first step-size probe ignores the interval and asked for t = -9 (VP) to
    -93 (OU), where the SDE and the mixture's score are undefined, and its last step overshoots
    t_min (t < 0 on VE and EDM); ``ode(t, x)`` holds t in [0, T]. All 5 seeds failed before, on
    every SDE; the samples are checked against the oracle for the first."""
    from sdekit.metrics import sliced_w1
    from sdekit.mixture import GaussianMixture

    sde = {
        "vp": VPSDE(),
        "subvp": SubVPSDE(),
        "ou": OUSDE(),
        "ve": VESDE(),
        "edm": EDMSDE(),
    }[name]
    target = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], 0.3)
    ts = torch.tensor([sde.T, sde.t_min])
    for seed in range(5):
        x_T = sde.prior_sample((200, 2), generator=torch.Generator().manual_seed(seed))
        ode = sde.probability_flow(target.score_fn(sde))
        x0 = torchdiffeq.odeint(ode, x_T, ts, rtol=1e-3, atol=1e-3)[-1]
        assert torch.isfinite(x0).all()
        if seed == 0:
            assert sliced_w1(x0, target, 16, generator=torch.Generator().manual_seed(1)) < 0.25


def test_the_documented_odeint_options_keep_the_model_in_t_min_to_T():
    from sdekit.mixture import GaussianMixture
    from sdekit.sampling.ode import initial_step

    sde = VPSDE()
    target = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], 0.3)
    seen = []

    def score(x, t):
        seen.append(t)
        return target.score(x, t, sde)

    ode = sde.probability_flow(score)
    x_T = sde.prior_sample((200, 2), generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([sde.T, sde.t_min])
    h = initial_step(ode, x_T, ts[0], ts[-1], order=4, rtol=1e-3, atol=1e-3)
    assert 0 < h <= sde.T - sde.t_min
    seen.clear()
    options = {"step_t": ts[-1:], "first_step": h}
    torchdiffeq.odeint(ode, x_T, ts, rtol=1e-3, atol=1e-3, options=options)
    seen = torch.cat(seen)
    assert float(seen.min()) >= float(ts[-1]) and float(seen.max()) <= sde.T
