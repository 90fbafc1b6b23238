"""Linear measurement operators (adjoints, pseudo-inverses, shapes) and reconstruction guidance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdekit.linear import VESDE, VPSDE
from sdekit.measurements import (
    Composition,
    Downsample,
    LinearOperator,
    Mask,
    ReconstructionGuidance,
)
from sdekit.mixture import GaussianMixture


def _matrix(op: LinearOperator) -> torch.Tensor:
    """The operator as an explicit (out, in) matrix, from its action on the basis vectors."""
    n = math.prod(op.in_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *op.in_shape)
    return op.forward(basis).reshape(n, -1).T


def _operators(seed: int, c: int, h: int, w: int, f: int) -> list[LinearOperator]:
    gen = torch.Generator().manual_seed(seed)
    shape = (c, h * f, w * f)
    mask = torch.rand(shape, generator=gen) < 0.5
    low_mask = torch.rand((c, h, w), generator=gen) < 0.5
    return [Mask(mask), Downsample(shape, f), Mask(low_mask) @ Downsample(shape, f)]


@settings(derandomize=True, deadline=None, max_examples=15)
@given(
    seed=st.integers(0, 2**16), c=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3),
    f=st.integers(1, 3),
)  # fmt: skip
def test_adjoint_and_pseudo_inverse(seed, c, h, w, f):
    """<Ax, y> = <x, A^T y>; A^+ is the Moore-Penrose inverse of the explicit matrix; Pi = A^+ A
    is the orthogonal projector (symmetric, idempotent)."""
    gen = torch.Generator().manual_seed(seed)
    for op in _operators(seed, c, h, w, f):
        x = torch.randn(4, *op.in_shape, generator=gen, dtype=torch.float64)
        y = torch.randn(4, *op.out_shape, generator=gen, dtype=torch.float64)
        lhs = (op(x) * y).flatten(1).sum(1)
        rhs = (x * op.adjoint(y)).flatten(1).sum(1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
        a = _matrix(op)
        torch.testing.assert_close(
            op.adjoint(y).reshape(4, -1), y.reshape(4, -1) @ a, rtol=1e-12, atol=1e-12
        )
        if isinstance(op, Composition):
            with pytest.raises(ValueError, match="no closed-form pseudo-inverse"):
                op.pinv(y)
            continue
        pinv = torch.linalg.pinv(a)
        torch.testing.assert_close(
            op.pinv(y).reshape(4, -1), y.reshape(4, -1) @ pinv.T, rtol=1e-10, atol=1e-10
        )
        px = op.project(x)
        torch.testing.assert_close(op.project(px), px, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(op(px), op(x), rtol=1e-12, atol=1e-12)
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(
            (px * z).flatten(1).sum(1),
            (x * op.project(z)).flatten(1).sum(1),
            rtol=1e-12,
            atol=1e-12,
        )


def test_downsample_is_block_averaging_and_mask_keeps_entries():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = Downsample((1, 4, 4), 2)
    torch.testing.assert_close(down(x), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert down.out_shape == (1, 2, 2)
    torch.testing.assert_close(down.pinv(down(x))[0, 0, :2, :2], torch.full((2, 2), 2.5))
    mask = torch.tensor([True, False, True])
    v = torch.tensor([[1.0, -2.0, 3.0]])
    assert torch.equal(Mask(mask)(v), torch.tensor([[1.0, 0.0, 3.0]]))


def test_bad_operators_and_observations():
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        Mask(torch.ones(3))
    with pytest.raises(ValueError, match="H and W multiples of factor=2"):
        Downsample((1, 5, 4), 2)
    with pytest.raises(ValueError, match="factor must be an integer >= 1"):
        Downsample((1, 4, 4), 0)
    with pytest.raises(ValueError, match="operators do not compose"):
        Mask(torch.ones(1, 4, 4, dtype=torch.bool)) @ Downsample((1, 4, 4), 2)
    mask = Mask(torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, \*\(2,\)\)"):
        mask(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"observation must have shape \(batch, \*\(2,\)\)"):
        mask.check_observation(torch.zeros(2))
    with pytest.raises(ValueError, match="NaN or inf at observed entries"):
        mask.check_observation(torch.tensor([[math.nan, 0.0]]))
    clean = mask.check_observation(torch.tensor([[1.0, math.nan]]))
    assert torch.equal(clean, torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="observation contains NaN"):
        Downsample((1, 2, 2), 2).check_observation(torch.full((1, 1, 1, 1), math.nan))
    with pytest.raises(ValueError, match="floating-point"):
        mask.check_observation(torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_guidance_on_a_gaussian_is_the_closed_form(sde, noise_std):
    r"""For x0 ~ N(mu, s^2 I), Tweedie's x0-hat is linear, x0-hat = mu + k (x - alpha mu) with
    k = alpha s^2 / (alpha^2 s^2 + sigma^2), so the guided score is
    s(x) + w k A^T (y - A x0-hat) / (sigma_y^2 + sigma^2 / alpha^2)."""
    mu, s = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), 0.7
    gm = GaussianMixture([1.0], mu[None], s)
    op = Mask(torch.tensor([True, False, True]))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.05, 0.9, 6, dtype=torch.float64) * sde.T
    alpha, sigma = (v[:, None] for v in sde.marginal(t))
    k = alpha * s**2 / (alpha**2 * s**2 + sigma**2)
    x0 = mu + k * (x - alpha * mu)
    r2 = noise_std**2 + sigma**2 / alpha**2
    w = 2.5
    expected = gm.score(x, t, sde) + w * k * op.adjoint(op(y) - op(x0)) / r2
    guided = ReconstructionGuidance(gm.score_fn(sde), sde, op, y, noise_std=noise_std, scale=w)
    torch.testing.assert_close(guided(x, t), expected, rtol=1e-10, atol=1e-10)

    # the same guidance for a model predicting eps: its output is the guided score's eps
    def eps_model(x, t):
        return -sde.sigma(t)[:, None] * gm.score(x, t, sde)

    guided_eps = ReconstructionGuidance(
        eps_model, sde, op, y, noise_std=noise_std, scale=w, prediction="eps"
    )
    torch.testing.assert_close(guided_eps(x, t), -sigma * expected, rtol=1e-10, atol=1e-10)
    # under no_grad (as samplers run) the gradient still flows through the model
    with torch.no_grad():
        torch.testing.assert_close(guided(x, t), expected, rtol=1e-10, atol=1e-10)


def test_guidance_bad_input():
    sde = VPSDE()
    op = Mask(torch.tensor([True, False]))
    y = torch.zeros(4, 2)

    def model(x, t):
        return -x

    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        ReconstructionGuidance(model, sde, op, y, scale=-1.0)
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        ReconstructionGuidance(model, sde, op, y, noise_std=math.nan)
    with pytest.raises(ValueError, match="operator must be a LinearOperator"):
        ReconstructionGuidance(model, sde, torch.ones(2, dtype=torch.bool), y)
    guided = ReconstructionGuidance(model, sde, op, y)
    with pytest.raises(ValueError, match="x has 3 samples but the observation 4"):
        guided(torch.zeros(3, 2), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, \*\(2,\)\)"):
        guided(torch.zeros(4, 3), torch.full((4,), 0.5))
