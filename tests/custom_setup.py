"""A user's own SDE and networks, in an importable module (as a user's would be) for the set-up tests.

A checkpoint names these classes by import path (``custom_setup.TrigSDE``); tests/ is on the
path of the test run, so :func:`sdekit.inference.load_model` rebuilds them.
"""

from __future__ import annotations

import torch
from torch import nn

from sdekit.configurable import Configurable
from sdekit.linear import LinearSDE


class TrigSDE(LinearSDE):
    r"""A user SDE giving only :math:`\alpha(t) = \cos\theta t` and :math:`\sigma(t) = \sin\theta t`
    (variance preserving); drift, diffusion and the inverse log-SNR come from the base class."""

    def __init__(self, theta: float = 1.4, *, T: float = 1.0, t_min: float = 1e-3):
        super().__init__(T, t_min)
        if not 0 < theta * T < torch.pi / 2:
            raise ValueError(f"theta * T must lie in (0, pi/2), got {theta * T}")
        self.theta = theta

    def alpha(self, t):
        return torch.cos(self.theta * t)

    def sigma(self, t):
        return torch.sin(self.theta * t)


class TinyNet(nn.Module, Configurable):
    """A user network that derives from Configurable: it records its constructor's arguments."""

    def __init__(self, dim: int = 2, hidden: int = 16, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.inp = nn.Linear(dim + 1, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, t):
        return self.scale * self.out(torch.tanh(self.inp(torch.cat([x, t[:, None]], 1))))


class PlainNet(nn.Module):
    """A user network that cannot describe itself (no to_config)."""

    def __init__(self, dim: int = 2, hidden: int = 16):
        super().__init__()
        self.inp = nn.Linear(dim + 1, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, t):
        return self.out(torch.tanh(self.inp(torch.cat([x, t[:, None]], 1))))
