"""Time grids fitted to the model: the optimum is recovered where it can be computed (a Gaussian,
exact flow map, brute force), fitted grids beat the log-SNR grid on held-out x_T, the cost is
reported, and the grid is a tensor that sample() takes back."""

import pytest
import torch
from test_sampling_dpm import MIX_1D, NARROW, flow_map, gaussian_score

from sdekit import VPSDE
from sdekit.metrics import w1_to_mixture
from sdekit.sampling import fit_grid, get_sampler, sample, time_grid
from sdekit.sampling.noise import NoiseSource

F64 = torch.float64


def _prior(sde, n, seed):
    return sde.prior_sample((n, 1), generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize(
    "method, steps, candidates, substeps",
    [("ddim", 2, 16, 8), ("dpmpp_2m", 3, 8, 4), ("unipc_2", 3, 8, 4)],
)
def test_recovers_the_optimal_grid_of_a_gaussian(method, steps, candidates, substeps):
    """The exact flow map of N(0.7, 0.4^2) is affine, so the criterion of every grid on the fit's
    lattice can be computed without the teacher: the fitted grid is its minimiser."""
    sde = VPSDE()
    x, score = _prior(sde, 64, 0), gaussian_score(sde)
    exact = flow_map(sde, x, sde.T, sde.t_min)
    fit = fit_grid(
        score, sde, x, steps, method=method, candidates=candidates, teacher_substeps=substeps
    )
    lattice = time_grid(sde, candidates * substeps, "logsnr")
    last = len(lattice) - 1
    fn = get_sampler(method)

    def criterion(index):
        out = fn(score, sde, x, lattice[list(index)], noise=NoiseSource())
        return float((out - exact).abs().mean())

    interiors = (
        [(m,) for m in range(1, last)]
        if steps == 2
        else [(a, b) for a in range(1, last) for b in range(a + 1, last)]
    )
    best = min(interiors, key=lambda i: criterion((0, *i, last)))
    fitted = tuple(int((lattice - t).abs().argmin()) for t in fit.ts[1:-1])
    assert fitted == best
    torch.testing.assert_close(fit.ts, lattice[[0, *best, last]])


@pytest.mark.parametrize("target", [MIX_1D, NARROW], ids=["two modes", "narrow modes"])
def test_a_fitted_grid_beats_the_log_snr_grid_on_held_out_x_T(target):
    sde = VPSDE()
    score = target.score_fn(sde)
    fit = fit_grid(score, sde, _prior(sde, 256, 1), 5, method="unipc_2", candidates=32)
    held_out = _prior(sde, 4000, 2)
    fitted, _ = sample(score, sde, held_out, method="unipc_2", grid=fit.ts)
    logsnr, _ = sample(score, sde, held_out, method="unipc_2", steps=5)
    # measured: 0.047 against 0.121 (two modes), 0.026 against 0.165 (narrow modes)
    assert w1_to_mixture(fitted, target) < 0.5 * w1_to_mixture(logsnr, target)
    assert fit.criterion < 0.5 * fit.criterion_default


def test_the_cost_is_counted_and_the_grid_round_trips_as_a_tensor(tmp_path):
    sde = VPSDE()
    calls = []

    def model(x, t):
        calls.append(x.shape[0])
        return MIX_1D.score(x, t, sde)

    fit = fit_grid(model, sde, _prior(sde, 32, 3), 4, method="heun", candidates=8, refine=True)
    assert fit.nfe == len(calls) > 8 * 8 and set(calls) == {32} and fit.seconds > 0
    assert fit.method == "heun" and fit.ts.dtype == F64 and fit.ts.shape == (5,)
    assert float(fit.ts[0]) == sde.T and float(fit.ts[-1]) == sde.t_min
    assert bool((fit.ts[1:] < fit.ts[:-1]).all())
    torch.save(fit.ts, tmp_path / "grid.pt")
    x, info = sample(model, sde, (16, 1), method="heun", grid=torch.load(tmp_path / "grid.pt"))
    assert info.nfe == 2 * 4
    torch.testing.assert_close(info.ts, fit.ts)


def test_bad_input_is_refused():
    sde = VPSDE()
    x, score = _prior(sde, 8, 0), gaussian_score(sde)
    with pytest.raises(ValueError, match="method"):
        fit_grid(score, sde, x, 4, method="dpmpp_2m_sde")
    with pytest.raises(ValueError, match="steps"):
        fit_grid(score, sde, x, 0)
    with pytest.raises(ValueError, match="candidates"):
        fit_grid(score, sde, x, 10, candidates=8)
    with pytest.raises(ValueError, match="teacher_substeps"):
        fit_grid(score, sde, x, 4, teacher_substeps=0)
    with pytest.raises(ValueError, match="x_T"):
        fit_grid(score, sde, torch.zeros(8), 4)
    with pytest.raises(ValueError, match="LinearSDE"):
        fit_grid(score, sde.reverse(score), x, 4)
