"""Argument checks: each raises ValueError naming the argument and the allowed range."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from sdekit.checks import (
    check_batch_time,
    check_finite,
    check_less,
    check_positive,
    check_probability,
    check_time,
)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_check_positive(bad):
    with pytest.raises(ValueError, match=r"beta_min must be a finite number > 0"):
        check_positive("beta_min", bad)


def test_check_positive_returns_float():
    value = check_positive("x", 2)
    assert value == 2.0 and isinstance(value, float)


def test_check_probability():
    assert check_probability("p", 0.0) == 0.0 and check_probability("p", 1.0) == 1.0
    for bad in (-1e-9, 1.0 + 1e-9, math.nan):
        with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
            check_probability("p", bad)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\)"):
        check_probability("eta", 1.0, open_right=True)


def test_check_less():
    check_less("sigma_min", 0.1, "sigma_max", 1.0)
    for low, high in ((1.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
            check_less("sigma_min", low, "sigma_max", high)


def test_check_time_reports_offending_values():
    check_time(torch.tensor([0.0, 0.5, 1.0]), 1.0)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\] = \[0, 1.0\], got \[-0.5, 2.0\]"):
        check_time(torch.tensor([-0.5, 0.5, 2.0]), 1.0)
    with pytest.raises(ValueError, match=r"s must lie in \[0, T\]"):
        check_time(torch.tensor([math.nan]), 1.0, "s")


def test_check_batch_time():
    x = torch.zeros(4, 3)
    check_batch_time(torch.zeros(4), x)
    for bad in (torch.zeros(3), torch.zeros(4, 1), torch.zeros(())):
        with pytest.raises(ValueError, match=r"t must have shape \(batch,\) = \(4,\)"):
            check_batch_time(bad, x)


def test_check_finite():
    check_finite("x", torch.ones(3))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="score contains NaN or inf"):
            check_finite("score", torch.tensor([1.0, bad]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_checks_on_gpu_do_not_sync_but_still_fail():
    # a failed device-side assert leaves the CUDA context unusable, so it runs in its own process
    script = (
        "import torch\n"
        "from sdekit.checks import check_time\n"
        "check_time(torch.tensor([0.5, 0.7], device='cuda'), 1.0)\n"
        "torch.cuda.synchronize()\n"
        "print('good input passed', flush=True)\n"
        "check_time(torch.tensor([0.5, 2.0], device='cuda'), 1.0)\n"
        "torch.cuda.synchronize()\n"
        "print('bad input passed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "good input passed" in done.stdout
    assert done.returncode != 0 and "bad input passed" not in done.stdout


def test_finite_watch_names_the_first_bad_step_and_check_result_finite():
    from sdekit.checks import FiniteWatch, check_result_finite

    ts = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    watch = FiniteWatch("my sampler", ts, hint="check the model")
    for i, value in enumerate([1.0, math.inf, math.nan, math.nan]):
        watch.update(i, torch.tensor([[0.0, value]]))
    with pytest.raises(
        FloatingPointError, match=r"my sampler .* at step 1 of 4 \(t = 0.75 -> 0.5\); check the"
    ):
        watch.check()
    clean = FiniteWatch("fine")
    clean.update(0, torch.zeros(2, 2))
    clean.check()
    FiniteWatch("never updated").check()
    check_result_finite("result", torch.zeros(3))
    with pytest.raises(FloatingPointError, match=r"result is non-finite .*1 of 3 values"):
        check_result_finite("result", torch.tensor([0.0, math.nan, 1.0]))
