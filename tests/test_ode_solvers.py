"""sdekit's own Dormand-Prince 5(4) with per-sample steps (sdekit.ode_solvers).

The tableau is checked by convergence orders on closed-form ODEs (order 5 for the solution carried
on, 4 for the embedded one), the controller and first step by SciPy's RK45 run on each row alone
(the same algorithm: the same accepted and rejected steps, the same result), and the batch
mechanics by bitwise comparisons of a row solved alone and among others.
"""

import math

import numpy as np
import pytest
import torch
from host_reads import HostReads, count_cuda_syncs
from scipy.integrate import solve_ivp

from sdekit.ode_solvers import B_HAT, B, C, E, dopri5, dopri5_step

F64 = torch.float64


def closed_form_rhs(t, y):
    # u' = -u^2, v' = -2 t v^2 (Riccati), w' = w cos t, z' = z (1 - z): nonlinear, two of them
    # depending on t, so both the a_ij and the c_i enter
    return torch.stack(
        [-(y[:, 0] ** 2), -2 * t * y[:, 1] ** 2, y[:, 2] * torch.cos(t), y[:, 3] * (1 - y[:, 3])], 1
    )


def closed_form_solution(t: float) -> torch.Tensor:
    return torch.tensor(
        [[1 / (1 + t), 1 / (1 + t * t), math.exp(math.sin(t)), 1 / (1 + 4 * math.exp(-t))]],
        dtype=F64,
    )


def coupled_rhs(t, y):
    return torch.stack(
        [-2 * t * y[:, 0] ** 2 + y[:, 1], torch.cos(3 * t) * y[:, 0] - y[:, 1] ** 2 / 4], 1
    )


def test_tableau_is_consistent():
    # row sums give the nodes, the weights sum to one, and E is the difference of the weights
    from sdekit.ode_solvers import A

    for i in range(1, 7):
        assert math.isclose(sum(A[i]), C[i], abs_tol=1e-14)
    assert math.isclose(sum(B), 1.0) and math.isclose(sum(B_HAT), 1.0)
    assert all(math.isclose(e, b - bh, abs_tol=1e-16) for e, b, bh in zip(E, B, B_HAT, strict=True))
    assert A[6] == B[:6]  # first same as last


def fixed_step_errors(steps: int, T: float = 2.0):
    """Global errors at T of the order-5 solution and of the embedded order-4 one, fixed steps."""
    y5 = y4 = closed_form_solution(0.0)
    t = torch.zeros(1, dtype=F64)
    h = torch.full((1,), T / steps, dtype=F64)
    for _ in range(steps):
        y5, _, _ = dopri5_step(closed_form_rhs, t, y5, h, closed_form_rhs(t, y5), (0.0, T))
        new, error, _ = dopri5_step(closed_form_rhs, t, y4, h, closed_form_rhs(t, y4), (0.0, T))
        y4 = new - error  # the embedded solution, carried on by itself
        t = t + h
    exact = closed_form_solution(T)
    return (y5 - exact).abs()[0], (y4 - exact).abs()[0]


def test_convergence_orders_five_and_four():
    steps = [32, 64, 128]
    errors = [fixed_step_errors(n) for n in steps]
    log_h = -np.log(steps)
    for component in range(4):
        e5 = np.log([float(e[0][component]) for e in errors])
        e4 = np.log([float(e[1][component]) for e in errors])
        slope5, slope4 = np.polyfit(log_h, e5, 1)[0], np.polyfit(log_h, e4, 1)[0]
        assert 4.8 < slope5 < 5.9, (component, slope5)
        assert 3.7 < slope4 < 4.3, (component, slope4)


def test_first_same_as_last_stage_is_the_derivative_at_the_new_point():
    t = torch.tensor([0.3, 0.7], dtype=F64)
    y = torch.tensor([[0.5, 0.4, 1.2, 0.3], [0.8, 0.9, 1.1, 0.6]], dtype=F64)
    h = torch.tensor([0.1, -0.05], dtype=F64)
    y_new, _, k7 = dopri5_step(closed_form_rhs, t, y, h, closed_form_rhs(t, y), (0.0, 1.0))
    assert torch.equal(k7, closed_form_rhs(t + h, y_new))


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_each_row_is_scipy_rk45_on_that_row_alone(tol):
    y0 = torch.rand(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 3 + 0.1
    y, stats = dopri5(coupled_rhs, y0, 0.0, 2.0, rtol=tol, atol=tol)
    assert stats.nfe == 2 + 6 * stats.iterations
    for b in range(5):

        def fun(t, z):
            return coupled_rhs(torch.tensor([t], dtype=F64), torch.from_numpy(z)[None])[0].numpy()

        sol = solve_ivp(fun, (0.0, 2.0), y0[b].numpy(), method="RK45", rtol=tol, atol=tol)
        assert int(stats.accepted[b]) == sol.t.size - 1
        assert sol.nfev == 2 + 6 * int(stats.accepted[b] + stats.rejected[b])
        np.testing.assert_allclose(y[b].numpy(), sol.y[:, -1], rtol=1e-11, atol=1e-12)
    assert int((stats.accepted + stats.rejected).max()) == stats.iterations


def test_error_follows_the_tolerance():
    y0 = closed_form_solution(0.0)
    tols = [1e-4, 1e-6, 1e-8, 1e-10]
    nfe, errors = [], []
    for tol in tols:
        y, stats = dopri5(closed_form_rhs, y0, 0.0, 2.0, rtol=tol, atol=tol)
        errors.append(float((y - closed_form_solution(2.0)).abs().max()))
        nfe.append(stats.nfe)
    assert all(e < 10 * tol for e, tol in zip(errors, tols, strict=True))
    # an order-5 method needs tol^(-1/5) times more steps as the tolerance shrinks
    slope = np.polyfit(-np.log(tols), np.log(nfe), 1)[0]
    assert 0.15 < slope < 0.25, slope
    assert np.polyfit(np.log(tols), np.log(errors), 1)[0] > 0.8


def test_rows_take_their_own_steps_and_do_not_depend_on_the_batch():
    # row 0 is easy (a slow logistic), row 1 hard (fast oscillation in z and a steep u)
    def rhs(t, y):
        rate = y[:, 2:3]
        return torch.cat(
            [rate * torch.cos(rate * t[:, None] * y[:, :2]), torch.zeros_like(rate)], 1
        )

    easy = torch.tensor([[0.1, 0.2, 0.5]], dtype=F64)
    hard = torch.tensor([[0.3, -0.1, 20.0]], dtype=F64)
    others = torch.rand(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64) * 10
    kwargs = dict(rtol=1e-7, atol=1e-7)
    y_easy, s_easy = dopri5(rhs, easy, 0.0, 1.0, **kwargs)
    y_hard, s_hard = dopri5(rhs, hard, 0.0, 1.0, **kwargs)
    y_both, s_both = dopri5(rhs, torch.cat([easy, hard, others]), 0.0, 1.0, **kwargs)
    assert int(s_easy.accepted) * 3 < int(s_hard.accepted)
    assert torch.equal(s_both.accepted[:2], torch.cat([s_easy.accepted, s_hard.accepted]))
    assert torch.equal(s_both.rejected[:2], torch.cat([s_easy.rejected, s_hard.rejected]))
    assert torch.equal(y_both[:2], torch.cat([y_easy, y_hard]))  # bitwise
    assert s_both.iterations == max(s_easy.iterations, s_hard.iterations, s_both.iterations)
    assert s_easy.iterations < s_hard.iterations <= s_both.iterations


@pytest.mark.parametrize("interval", [(0.25, 1.0), (1.0, 0.25)], ids=["forward", "backward"])
def test_every_call_is_inside_the_interval_and_counted(interval):
    t0, t1 = interval
    seen = []

    def rhs(t, y):
        seen.append(t.clone())
        return closed_form_rhs(t, y)

    y0 = closed_form_solution(t0).expand(4, 4) * torch.tensor(
        [[1.0], [0.9], [1.1], [0.5]], dtype=F64
    )
    y, stats = dopri5(rhs, y0, t0, t1, rtol=1e-5, atol=1e-5)
    assert len(seen) == stats.nfe == 2 + 6 * stats.iterations
    times = torch.stack(seen)
    assert float(times.min()) >= min(t0, t1) and float(times.max()) <= max(t0, t1)
    # rows that have arrived sit at t1 with zero-length steps until the last one arrives
    arrived_early = stats.accepted + stats.rejected < stats.iterations
    assert bool(arrived_early.any())
    assert bool((times[-6:, arrived_early] == t1).all())


def test_termination_is_read_once_every_check_every_iterations():
    def rhs(t, y):
        return coupled_rhs(t, y)

    y0 = torch.rand(4, 2, generator=torch.Generator().manual_seed(2), dtype=F64) + 0.5
    results = {}
    for k in (1, 4):
        with HostReads() as reads:
            y, stats = dopri5(rhs, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6, check_every=k)
        # one read per check; nothing else in the loop asks the host (the final failure check
        # adds one)
        assert reads.count == stats.host_reads + 1 == math.ceil(stats.iterations / k) + 1
        results[k] = y, stats
    (y1, s1), (y4, s4) = results[1], results[4]
    assert torch.equal(y1, y4) and torch.equal(s1.accepted, s4.accepted)
    assert s1.iterations <= s4.iterations < s1.iterations + 4
    assert s4.host_reads == math.ceil(s4.iterations / 4) < s1.host_reads


def test_a_non_finite_row_is_named():
    def rhs(t, y):
        return torch.where(y[:, :1] > 1.5, torch.nan, 1.0) * y

    y0 = torch.tensor([[1.0], [0.1], [2.0]], dtype=F64)
    with pytest.raises(FloatingPointError, match=r"1 of 3 rows \(indices \[2\]\)"):
        dopri5(rhs, y0, 0.0, 0.3, rtol=1e-6, atol=1e-6)
    with pytest.raises(FloatingPointError, match=r"indices \[0, 2\]"):
        # row 0 reaches 1.5 at t = log 1.5: its trial steps beyond return NaN
        dopri5(rhs, y0, 0.0, 1.0, rtol=1e-6, atol=1e-6)


def test_bad_arguments_raise():
    y0 = torch.ones(2, 1, dtype=F64)
    with pytest.raises(ValueError, match="check_every must be an integer >= 1"):
        dopri5(coupled_rhs, y0, 0.0, 1.0, rtol=1e-3, atol=1e-3, check_every=0)
    with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
        dopri5(coupled_rhs, y0, 0.0, 1.0, rtol=0.0, atol=1e-3)
    with pytest.raises(ValueError, match="y0 must be a floating-point tensor"):
        dopri5(coupled_rhs, torch.ones(2, 1, dtype=torch.int64), 0.0, 1.0, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="t0 and t1 must differ"):
        dopri5(coupled_rhs, y0, 1.0, 1.0, rtol=1e-3, atol=1e-3)
    with pytest.raises(RuntimeError, match="max_steps"):
        dopri5(
            closed_form_rhs, closed_form_solution(0.0), 0.0, 2.0, rtol=1e-9, atol=1e-9, max_steps=5
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("check_every", [1, 4])
def test_on_cuda_the_loop_syncs_once_per_check_and_matches_the_cpu(check_every):
    y0 = torch.rand(64, 2, generator=torch.Generator().manual_seed(3), dtype=F64) * 3 + 0.1
    kwargs = dict(rtol=1e-6, atol=1e-6, check_every=check_every)
    y_cpu, s_cpu = dopri5(coupled_rhs, y0, 0.0, 2.0, **kwargs)
    (y, stats), syncs = count_cuda_syncs(lambda: dopri5(coupled_rhs, y0.cuda(), 0.0, 2.0, **kwargs))
    # the reads of "all arrived?" and the final "any failed?": nothing per step
    assert syncs == stats.host_reads + 1 == math.ceil(stats.iterations / check_every) + 1
    assert y.device.type == "cuda"
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-9, atol=1e-12)
    assert int((stats.accepted.cpu() - s_cpu.accepted).abs().max()) <= 1
