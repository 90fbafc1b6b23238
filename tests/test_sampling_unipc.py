"""UniPC against closed forms: its coefficients' special cases, measured orders on the exact flow
map of a Gaussian, the free corrector's NFE, and Gaussian-mixture targets."""

import math

import numpy as np
import pytest
import torch
from test_sampling_dpm import MIX_1D, MIX_2D, SDES, f64, flow_map, gaussian_score, logsnr_grid

from sdekit import VPSDE
from sdekit.metrics import w1_to_mixture
from sdekit.sampling import sample
from sdekit.sampling.dpm_solver import step_weights
from sdekit.sampling.registry import get_sampler
from sdekit.sampling.unipc import psi, unipc_multistep, unipc_weights

F64 = torch.float64


def slope(steps, errors) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def test_registered_with_their_contract():
    for name, order in [("unipc", 4), ("unipc_bh1", 4), ("unipc_2", 3)]:
        spec = get_sampler(name)
        assert (spec.order, spec.stochastic, spec.needs_marginal) == (order, False, True)
        assert (spec.evals_per_step, spec.default_grid) == (1, "logsnr")
    assert get_sampler("UniPC").name == "unipc"
    assert get_sampler("UniPC-2").name == "unipc_2"


def test_psi_is_the_weight_of_each_taylor_term():
    """psi_m(h) h^m = int_0^h e^{-(h-u)} u^m / m! du, by quadrature, on both sides of h = 1."""
    x, w = np.polynomial.legendre.leggauss(40)
    for h in (1e-3, 0.3, 0.999, 1.0, 2.5, 9.0):
        u, wu = 0.5 * h * (x + 1), 0.5 * h * w
        for m in range(4):
            exact = float((wu * np.exp(-(h - u)) * u**m).sum()) / math.factorial(m) / h**m
            assert float(psi(m, torch.tensor(h, dtype=F64))) == pytest.approx(exact, rel=1e-12)


def test_coefficients_special_cases():
    h = torch.tensor([0.3, 1.7], dtype=F64)
    r = -torch.tensor([0.8, 1.3], dtype=F64)  # the previous node, relative to h
    phi1 = -torch.expm1(-h)
    # UniP-2 with B(h) = 1 - e^{-h} is DPM-Solver++(2M) (paper, Sec. 3.3)
    pred, _ = unipc_weights(h, [r], "bh2")
    torch.testing.assert_close(pred, step_weights(h, -r, -r, torch.tensor(2)))
    # with B(h) = h it adds h/2 of the divided difference (D_i - D_{i-1}) / |r|
    pred, _ = unipc_weights(h, [r], "bh1")
    zero = torch.zeros_like(h)
    expected = torch.stack([phi1 + 0.5 * h / -r, -0.5 * h / -r, zero], -1)
    torch.testing.assert_close(pred, expected)
    # UniC-1: the trapezoid of D_i and the new D_{i+1} with weight B(h)/2
    for variant, B in (("bh1", h), ("bh2", phi1)):
        _, corr = unipc_weights(h, [], variant)
        torch.testing.assert_close(corr, torch.stack([phi1 - B / 2, zero, zero, B / 2], -1))
    # every weight set integrates a constant exactly: the weights sum to psi_0 = phi1
    for p_r in ([], [r], [r, 2 * r]):
        for variant in ("bh1", "bh2"):
            pred, corr = unipc_weights(h, p_r, variant)
            torch.testing.assert_close(pred.sum(-1), phi1)
            torch.testing.assert_close(corr.sum(-1), phi1)


# Every step at full order (a first-order last step would make every method second order), from T
# to where the log-SNR is 0 (see test_sampling_dpm). UniPC-3 on fine grids: on 16-128 steps its
# slope reads 3.5-3.9 as the error is near 1e-7 relative already.
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize(
    "order, variant, steps, expected",
    [
        (1, "bh1", [16, 32, 64, 128], 2),
        (2, "bh1", [16, 32, 64, 128], 3),
        (2, "bh2", [16, 32, 64, 128], 3),
        (3, "bh2", [128, 256, 512, 1024], 4),
    ],
)
def test_measured_order_is_the_predictor_order_plus_one(sde_name, order, variant, steps, expected):
    sde = SDES[sde_name]()
    t_end = float(sde.log_snr_inverse(f64(0.0)))
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None] * sde.prior_std
    exact = flow_map(sde, x, sde.T, t_end)
    errors = []
    for n in steps:
        out = unipc_multistep(
            gaussian_score(sde),
            sde,
            x,
            logsnr_grid(sde, n, t_end),
            order=order,
            variant=variant,
            final="full_order",
        )
        errors.append(float((out - exact).abs().max()))
    assert abs(slope(steps, errors) - expected) <= 0.35, errors


@pytest.mark.parametrize("sde_name", list(SDES))
def test_flow_map_to_t_min_on_every_linear_sde(sde_name):
    sde = SDES[sde_name]()
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None] * sde.prior_std
    exact = flow_map(sde, x, sde.T, sde.t_min)
    out = unipc_multistep(gaussian_score(sde), sde, x, logsnr_grid(sde, 32), final="full_order")
    assert float((out - exact).abs().max()) < 1e-4 * float(exact.abs().max())


def test_the_corrector_is_free_and_the_step_to_zero_costs_one():
    sde = VPSDE()
    for method in ("unipc", "unipc_bh1", "unipc_2"):
        for final, nfe in [("lower_order", 7), ("full_order", 7), ("zero", 8)]:
            x, info = sample(
                MIX_2D.score_fn(sde),
                sde,
                (32, 2),
                method=method,
                steps=7,
                final=final,
                return_trajectory=True,
            )
            assert info.nfe == nfe and info.trajectory.shape == (8, 32, 2)
            assert bool(torch.isfinite(x).all())


def test_converges_to_a_1d_mixture_and_the_callback_can_replace_the_state():
    sde = VPSDE()
    x = sde.prior_sample((3000, 1), generator=torch.Generator().manual_seed(0), dtype=F64)
    target = MIX_1D.at(sde.t_min, sde)
    distances = [
        w1_to_mixture(unipc_multistep(MIX_1D.score_fn(sde), sde, x, logsnr_grid(sde, n)), target)
        for n in (5, 40)
    ]
    assert distances[1] < distances[0] and distances[1] < 0.05, distances
    seen = []

    def pin_first(i, state):
        seen.append(i)
        state = state.clone()
        state[0] = 0.0
        return state

    out = unipc_multistep(MIX_1D.score_fn(sde), sde, x[:8], logsnr_grid(sde, 6), callback=pin_first)
    assert seen == list(range(6)) and float(out[0]) == 0.0


def test_bad_input_is_refused():
    sde = VPSDE()
    x, grid, score = torch.zeros(4, 1), logsnr_grid(sde, 5), gaussian_score(VPSDE())
    with pytest.raises(ValueError, match="order"):
        unipc_multistep(score, sde, x, grid, order=4)
    with pytest.raises(ValueError, match="variant"):
        unipc_multistep(score, sde, x, grid, variant="bh3")
    with pytest.raises(ValueError, match="final"):
        unipc_multistep(score, sde, x, grid, final="none")
    with pytest.raises(ValueError, match="ts"):
        unipc_multistep(score, sde, x, grid.flip(0))
    with pytest.raises(ValueError, match="LinearSDE"):
        unipc_multistep(score, sde.reverse(score), x, grid)
