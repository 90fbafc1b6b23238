r"""Closed forms of DDPM's chain on Gaussian data :math:`\mathcal N(\mu, \operatorname{diag} s^2)`.

Written from Ho et al. 2020's formulas directly (posterior mean eq. 7, model mean eq. 11, with the
optimal, linear, denoiser :math:`\hat\varepsilon = \sqrt{1-\bar\alpha}(x_i - \sqrt{\bar\alpha}\mu)/v_i`,
:math:`v_i = \bar\alpha_i s^2 + 1 - \bar\alpha_i`), not from the noise-error form the package uses, so
that the tests compare two derivations. Every quantity is an expectation over the chain's noise for a
fixed :math:`x_0`, per dimension, float64.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class GaussianChain:
    def __init__(self, mu, s, betas):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.s = torch.as_tensor(s, dtype=torch.float64)
        self.b = torch.as_tensor(betas, dtype=torch.float64)
        self.a = 1 - self.b
        self.ab = torch.cumprod(self.a, 0)
        self.ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.ab[:-1]])
        self.bt = self.b * (1 - self.ab_prev) / (1 - self.ab)
        self.bt_clip = torch.cat([self.bt[1:2], self.bt[1:]])
        self.N = self.b.shape[0]

    def v(self):
        """Marginal variance of each level, ``(N, d)``."""
        return self.ab[:, None] * self.s**2 + (1 - self.ab[:, None])

    def variances(self, kind, v=None):
        """``(N, d)`` reverse variances: the reference codes' choices at level 0."""
        d = self.s.shape[0]
        if kind == "beta":
            var = torch.cat([self.bt_clip[:1], self.b[1:]])
        elif kind == "beta_tilde":
            var = self.bt_clip
        elif kind == "optimal":
            return self.optimal_variance()
        else:  # learned with v (N, d)
            return torch.exp(
                v * torch.log(self.b)[:, None] + (1 - v) * torch.log(self.bt_clip)[:, None]
            )
        return var[:, None].expand(self.N, d)

    def optimal_variance(self):
        r""":math:`\Sigma^*_i = \operatorname{Var}(x_{i-1} \mid x_i) = \beta_i v_{i-1}/v_i` (the data
        average of the optimal per-x0 variance), ``(N, d)``; :math:`v_{-1} = s^2`."""
        v = self.v()
        v_prev = torch.cat([self.s[None] ** 2, v[:-1]])
        return self.b[:, None] * v_prev / v

    def learned_v(self):
        """The v of eq. 15 that gives the optimal variance (level 0 between beta_0 and beta_tilde_1)."""
        lo, hi = torch.log(self.bt_clip)[:, None], torch.log(self.b)[:, None]
        return (torch.log(self.optimal_variance()) - lo) / (hi - lo)

    def _model_mean(self):
        """``(P, Q)`` of the model mean :math:`\\mu_\\theta = P x_i + Q` (Ho et al. eq. 11), ``(N, d)``."""
        v = self.v()
        sa, b = self.a.sqrt()[:, None], self.b[:, None]
        P = (1 - b / v) / sa
        Q = b * self.ab.sqrt()[:, None] * self.mu / (sa * v)
        return P, Q

    def mean_gap(self):
        r"""``(k, Q, r)`` with :math:`\tilde\mu_i - \mu_\theta = k x_0 - Q + \text{noise of variance } r`
        given :math:`x_0` (posterior mean eq. 7 minus model mean eq. 11), ``(N, d)`` each."""
        P, Q = self._model_mean()
        sab, om = self.ab.sqrt()[:, None], (1 - self.ab)[:, None]
        c1 = (self.ab_prev.sqrt() * self.b / (1 - self.ab))[:, None]
        c2 = (self.a.sqrt() * (1 - self.ab_prev) / (1 - self.ab))[:, None]
        A = c2 - P
        return c1 + A * sab, Q, A**2 * om

    def expected_terms(self, x0, var):
        """``(N,)`` expected terms for one ``x0`` (d,): level 0 the Gaussian decoder's NLL, then KLs."""
        x0 = torch.as_tensor(x0, dtype=torch.float64)
        k, Q, r = self.mean_gap()
        sq = (k * x0 - Q) ** 2 + r  # E[(mu_tilde - mu_theta)^2 | x0]
        bt = self.bt_clip[:, None]
        kl = 0.5 * (torch.log(var / bt) + bt / var - 1 + sq / var)
        P, Qm = self._model_mean()
        sab, om = self.ab.sqrt()[0], 1 - self.ab[0]
        dec_sq = (x0 - P[0] * sab * x0 - Qm[0]) ** 2 + P[0] ** 2 * om
        dec = 0.5 * (LOG_2PI + torch.log(var[0]) + dec_sq / var[0])
        return torch.cat([dec.sum()[None], kl[1:].sum(1)])

    def prior(self, x0):
        ab = self.ab[-1]
        x0 = torch.as_tensor(x0, dtype=torch.float64)
        return 0.5 * (ab * x0**2 + (1 - ab) - 1 - torch.log(1 - ab)).sum(-1)

    def bound(self, x0, var):
        return self.prior(x0) + self.expected_terms(x0, var).sum()

    def log_q(self, x0):
        """The data density."""
        x0 = torch.as_tensor(x0, dtype=torch.float64)
        return (-0.5 * (LOG_2PI + torch.log(self.s**2) + (x0 - self.mu) ** 2 / self.s**2)).sum(-1)

    def prior_mismatch(self, x0):
        r""":math:`\mathbb E_{q(x_N \mid x_0)}[\log q_N(x_N) - \log\mathcal N(x_N; 0, I)]`."""
        x0 = torch.as_tensor(x0, dtype=torch.float64)
        ab = self.ab[-1]
        m, var = ab.sqrt() * x0, 1 - ab
        mq, wq = ab.sqrt() * self.mu, ab * self.s**2 + 1 - ab
        e_log_q = -0.5 * (LOG_2PI + torch.log(wq) + ((m - mq) ** 2 + var) / wq)
        e_log_n = -0.5 * (LOG_2PI + m**2 + var)
        return (e_log_q - e_log_n).sum(-1)

    def sample_moments(self, var):
        r"""Mean and variance ``(d,)`` of DDPM's output (the decoder's mean, no final noise) started at
        :math:`\mathcal N(0, I)` with reverse variances ``var`` (levels 1..N-1 used)."""
        P, Q = self._model_mean()
        d = self.s.shape[0]
        m, w = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
        for i in range(self.N - 1, 0, -1):
            m, w = P[i] * m + Q[i], P[i] ** 2 * w + var[i]
        return P[0] * m + Q[0], P[0] ** 2 * w

    def model_log_likelihood(self, x0, var):
        r""":math:`\log p_\theta(x_0)` of the chain model itself: :math:`\mathcal N(0, I)` pushed through
        the reverse kernels :math:`\mathcal N(P x_i + Q, \Sigma_i)` (a Gaussian recursion)."""
        P, Q = self._model_mean()
        d = self.s.shape[0]
        m, w = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
        for i in range(self.N - 1, -1, -1):
            m, w = P[i] * m + Q[i], P[i] ** 2 * w + var[i]
        x0 = torch.as_tensor(x0, dtype=torch.float64)
        return (-0.5 * (LOG_2PI + torch.log(w) + (x0 - m) ** 2 / w)).sum(-1)


def continuous_bound(mu, s, sde, x0):
    r"""``(prior, diffusion, reconstruction)`` of the continuous-time bound with the exact denoiser,
    per sample of ``x0`` (n, d): with :math:`u = s^2 e^\lambda`,
    :math:`\mathbb E\lVert\varepsilon - \hat\varepsilon\rVert^2 = (u/(1+u))^2 + e^\lambda
    (x_0 - \mu)^2/(1 + u)^2` per dimension, integrated over :math:`\lambda` in closed form."""
    mu, s = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    ends = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    lam = sde.log_snr(ends)
    alpha, sigma = sde.marginal(ends)
    u0, uT = s**2 * torch.exp(lam[0]), s**2 * torch.exp(lam[1])

    def F(u):  # antiderivative of (u / (1 + u))^2 in lambda
        return torch.log1p(u) + 1 / (1 + u)

    def G(u):  # antiderivative of e^lambda / (1 + u)^2 in lambda
        return -1 / (s**2 * (1 + u))

    diffusion = 0.5 * ((F(u0) - F(uT)) + (x0 - mu) ** 2 * (G(u0) - G(uT))).sum(-1)
    sp2 = sde.prior_std**2
    prior = 0.5 * (
        (alpha[1] ** 2 * x0**2 + sigma[1] ** 2) / sp2 - 1 - torch.log(sigma[1] ** 2 / sp2)
    )
    D = x0.shape[-1]
    reconstruction = 0.5 * D * (LOG_2PI + 1 + 2 * torch.log(sigma[0] / alpha[0]))
    return prior.sum(-1), diffusion, reconstruction.expand(x0.shape[0])


def eps_oracle(gm, sde):
    """The exact noise prediction under ``sde``: -sigma times the exact score of the mixture."""

    def model(x, t):
        return -sde.sigma(t)[:, None] * gm.score(x, t, sde)

    return model


class OracleVariance(nn.Module):
    """The exact eps next to a ``v`` per level (a parameter), as a LearnedVariance network outputs
    them; the level is the one whose time ``times`` is nearest the input's."""

    def __init__(self, gm, sde, times, v):
        super().__init__()
        self.eps, self.times = eps_oracle(gm, sde), times
        self.v = nn.Parameter(torch.as_tensor(v, dtype=torch.float64).clone())

    def forward(self, x, t):
        level = (t[:, None] - self.times[None].to(t)).abs().argmin(1)
        return torch.cat([self.eps(x, t), self.v[level].to(x.dtype)], 1)
