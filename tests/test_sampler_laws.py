"""Closed-form laws of single sampler steps: the Langevin and annealed-Langevin correctors' stationary
variance on a Gaussian, and DDIM's marginal-preserving step at intermediate eta.

Each coefficient enters the law, so a wrong factor moves it far outside the tolerance (the docstrings
give the value of the usual slips); the samplers' own code is not restated."""

from __future__ import annotations

import math

import pytest
import torch

from sdekit.linear import EDMSDE, VPSDE, SubVPSDE
from sdekit.sampling import get_sampler
from sdekit.sampling.noise import NoiseSource

F64 = torch.float64


def _corrector_chain(corrector: str, snr: float, s0: float, sigma_s: float, n_corrector: int = 20):
    r"""``n_corrector`` corrector steps at :math:`\sigma_s` (EDM SDE: :math:`\alpha = 1`, so the
    :math:`r = \alpha_t^2/\alpha_s^2` of Song et al.'s Alg. 5 is 1) on data
    :math:`\mathcal N(0, s_0^2 I_{16})`, started from the exact :math:`p_s = \mathcal N(0, v I)`,
    :math:`v = s_0^2 + \sigma_s^2`, with the exact score :math:`-x/v`. Returns the state and v."""
    sde = EDMSDE()
    v = s0**2 + sigma_s**2
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(v) * torch.randn(4000, 16, generator=g, dtype=F64)
    ts = torch.tensor([sigma_s + 0.1, sigma_s], dtype=F64)
    pc = get_sampler("pc").fn
    out = pc(
        lambda z, t: -z / v,
        sde,
        x,
        ts,
        noise=NoiseSource(torch.Generator().manual_seed(1)),
        predictor="none",
        corrector=corrector,
        snr=snr,
        n_corrector=n_corrector,
    )
    return out, v


def test_langevin_corrector_stationary_variance():
    r"""Alg. 4-5 of Song et al. 2021: :math:`\epsilon = 2r(\mathrm{snr}\,\bar{|z|}/\bar{|s|})^2`,
    :math:`x \leftarrow x + \epsilon s + \sqrt{2\epsilon}\,z`. On :math:`\mathcal N(0, v)` the step
    is :math:`x' = (1 - \epsilon/v)x + \sqrt{2\epsilon}z`, stationary at :math:`v' = v/(1 -
    \epsilon/2v)`, and with :math:`x \sim \mathcal N(0, v')` the norms give :math:`\epsilon = 2
    \mathrm{snr}^2 v^2/v'`: the fixed point is :math:`v' = v(1 + \mathrm{snr}^2)`, 1.25 v at snr
    0.5. Without the factor 2 in epsilon it is 1.125 v; with :math:`\sqrt{\epsilon}` for
    :math:`\sqrt{2\epsilon}`, 0.75 v."""
    snr = 0.5
    x, v = _corrector_chain("langevin", snr, s0=0.8, sigma_s=0.6)
    ratio = float(x.var()) / v
    assert ratio == pytest.approx(1 + snr**2, rel=0.02)  # 64000 values: standard error 0.6 %
    assert float(x.mean()) == pytest.approx(0.0, abs=0.02)


def test_annealed_langevin_corrector_stationary_variance():
    r"""ALD (Song & Ermon 2019, Alg. 1, as in score_sde): :math:`\epsilon = 2r(\mathrm{snr}\,
    \sigma_s)^2`, constant, so :math:`v' = v/(1 - \epsilon/2v) = v/(1 - \mathrm{snr}^2\sigma_s^2/v)`:
    1.316 v for snr = 0.5, :math:`\sigma_s` = 0.5, :math:`s_0` = 0.1. With
    :math:`\mathrm{snr}\,\sigma_s` unsquared it is 26 v; without the factor 2, 1.137 v."""
    snr, s0, sigma_s = 0.5, 0.1, 0.5
    x, v = _corrector_chain("ald", snr, s0=s0, sigma_s=sigma_s)
    expected = 1 / (1 - snr**2 * sigma_s**2 / v)
    assert float(x.var()) / v == pytest.approx(expected, rel=0.02)


class _Fixed:
    def __init__(self, z):
        self.z = z

    def __call__(self, x):
        return self.z


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), EDMSDE()], ids=["vp", "subvp", "edm"])
@pytest.mark.parametrize("eta", [0.3, 0.5, 0.8])
def test_ddim_step_preserves_the_marginal_of_a_point_mass_at_any_eta(sde, eta):
    r"""DDIM's family of forward processes shares the marginals :math:`\mathcal N(\alpha_t x_0,
    \sigma_t^2 I)` (Song, Meng & Ermon 2021, Lemma 1 and eq. 12). For data at one point :math:`m`
    the exact score recovers :math:`x_0 = m` and :math:`\varepsilon` exactly, so one step from
    :math:`x_t = \alpha_t m + \sigma_t\varepsilon` must give :math:`x_s = \alpha_s m +
    a\varepsilon + bz` with :math:`a^2 + b^2 = \sigma_s^2` and :math:`b = \eta\,\sigma_s
    \sigma_{t|s}/\sigma_t` (eq. 16: eta times DDPM's posterior deviation). Read off exactly (no
    sampling) by stepping with z and with -z. With :math:`\eta^2` for :math:`\eta` in the noise
    coefficient :math:`a^2 + b^2` is off by up to 19 %."""
    m = 0.7
    t, s = (0.9, 0.3) if sde.T == 1.0 else (8.0, 1.0)
    ts = torch.tensor([t, s], dtype=F64)
    a_t, s_t = (float(v) for v in sde.marginal(ts[:1]))
    a_s, s_s = (float(v) for v in sde.marginal(ts[1:]))

    def score(x, time):  # the point mass's exact score
        alpha, sigma = sde.marginal(time)
        return -(x - alpha[:, None] * m) / sigma[:, None] ** 2

    g = torch.Generator().manual_seed(0)
    eps = torch.randn(64, 3, generator=g, dtype=F64)
    z = torch.randn(64, 3, generator=g, dtype=F64)
    x_t = a_t * m + s_t * eps
    ddim = get_sampler("ddim").fn
    plus = ddim(score, sde, x_t, ts, noise=_Fixed(z), eta=eta)
    minus = ddim(score, sde, x_t, ts, noise=_Fixed(-z), eta=eta)
    a = ((plus + minus) / 2 - a_s * m) / eps
    b = (plus - minus) / 2 / z
    torch.testing.assert_close(a, torch.full_like(a, float(a.mean())), rtol=1e-9, atol=1e-12)
    var_ts = s_t**2 - (a_t / a_s) ** 2 * s_s**2
    torch.testing.assert_close(b, torch.full_like(b, eta * s_s * math.sqrt(var_ts) / s_t))
    assert float(a[0, 0]) ** 2 + float(b[0, 0]) ** 2 == pytest.approx(s_s**2, rel=1e-9)
