"""W1 metrics against closed-form distances."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from sdekit.metrics import sliced_w1, w1_to_cdf, w1_to_mixture
from sdekit.mixture import GaussianMixture


def _normal_cdf(mu: float, s: float):
    return lambda g: torch.special.ndtr((g - mu) / s)


@pytest.mark.parametrize(("mu", "s"), [(0.0, 1.0), (1.3, 0.5), (-2.0, 2.0)])
def test_w1_point_mass_to_normal_is_mean_abs(mu, s):
    """W1(delta_0, N(mu, s^2)) = E|X| = s sqrt(2/pi) exp(-mu^2/2s^2) + mu (1 - 2 Phi(-mu/s))."""
    exact = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2))
    exact += mu * (1 - 2 * 0.5 * math.erfc(mu / s / math.sqrt(2)))
    lo, hi, points = mu - 12 * s - 1, mu + 12 * s + 1, 200_001
    got = w1_to_cdf(torch.zeros(7), _normal_cdf(mu, s), lo, hi, points)
    # the trapezoid rule smears the empirical CDF's unit jump over one cell: error <= h / 2
    assert got == pytest.approx(exact, abs=0.5 * (hi - lo) / (points - 1) + 1e-9)


def test_w1_of_quantile_samples_is_the_shift():
    """n midpoint quantiles of N(0, 1) shifted by c: W1 to N(0, 1) is |c| up to O(1/n)."""
    n = 2000
    q = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    for c in (0.0, 0.25, -1.0):
        got = w1_to_cdf(q + c, _normal_cdf(0.0, 1.0), -10, 10, 100_001)
        assert got == pytest.approx(abs(c), abs=2e-3)


def test_w1_to_mixture_uses_the_data_law():
    gm = GaussianMixture([0.5, 0.5], [-3.0, 3.0], [0.5, 0.5])
    x = gm.sample(50_000, generator=torch.Generator().manual_seed(0))
    near = w1_to_mixture(x, gm)
    shifted = w1_to_mixture(x + 0.5, gm)
    assert near < 0.02
    assert shifted == pytest.approx(0.5, abs=0.02)


def test_sliced_w1_of_a_shift():
    """Shifting by c = (3, 0): each slice moves by |v.c|, E|v.c| = 3 E|cos theta| = 6/pi in 2D."""
    gm = GaussianMixture([0.4, 0.6], [[0.0, 1.0], [2.0, -1.0]], [[0.3, 0.6], [0.5, 0.2]])
    x = gm.sample(20_000, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    assert sliced_w1(x, gm, 32, generator=gen) < 0.03
    shifted = sliced_w1(x + torch.tensor([3.0, 0.0], dtype=torch.float64), gm, 256, generator=gen)
    # 256 directions: standard error of the mean of 3|cos| is 3 * 0.31 / 16 = 0.06
    assert shifted == pytest.approx(6 / math.pi, abs=0.15)


def test_bad_input():
    with pytest.raises(ValueError, match="points >= 2 and lo < hi"):
        w1_to_cdf(torch.zeros(3), _normal_cdf(0, 1), 1.0, 1.0)
    with pytest.raises(ValueError, match="points >= 2"):
        w1_to_cdf(torch.zeros(3), _normal_cdf(0, 1), -1.0, 1.0, points=1)
    gm = GaussianMixture([1.0], [[0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match=r"samples must be \(n, 2\)"):
        sliced_w1(torch.zeros(5, 3), gm)


def test_non_finite_or_empty_samples_raise_instead_of_a_nan_distance():
    gm1 = GaussianMixture([1.0], [0.0], 1.0)
    gm2 = GaussianMixture([1.0], [[0.0, 0.0]], 1.0)
    x = torch.zeros(5, 2)
    x[3, 1] = math.nan
    with pytest.raises(ValueError, match=r"samples contains NaN or inf \(1 of 10 values\)"):
        sliced_w1(x, gm2)
    with pytest.raises(ValueError, match="samples contains NaN or inf"):
        w1_to_mixture(x[:, 1], gm1)
    with pytest.raises(ValueError, match="samples contains NaN or inf"):
        w1_to_cdf(x[:, 1] * math.inf, _normal_cdf(0, 1), -1.0, 1.0)
    with pytest.raises(ValueError, match="samples must be a non-empty tensor"):
        w1_to_mixture(torch.zeros(0), gm1)


def test_metrics_is_reachable_from_the_package():
    # README: `import sdekit; sdekit.metrics.sliced_w1(...)`, in a fresh interpreter
    code = "import sdekit; print(sdekit.metrics.sliced_w1.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "sliced_w1"
