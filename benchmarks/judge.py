r"""The image benchmarks' judge: a small CNN classifier trained on the real training set, the Fréchet
distance in its penultimate features, and the sample statistics printed beside it.

Shared by ``quality_digits.py`` (8×8 digits), ``quality_images.py`` and ``sweep_images.py``
(Fashion-MNIST, 28×28 and padded to 32×32).

- :class:`Classifier`: stride-1 then stride-2 3×3 convolutions, a ``features``-unit penultimate
  layer (what the Fréchet distance is computed on) and a 10-way head.
- :func:`frechet_distance`: :math:`\lVert\mu_a - \mu_b\rVert^2
  + \operatorname{tr}(\Sigma_a + \Sigma_b - 2(\Sigma_a\Sigma_b)^{1/2})` between Gaussians fitted
  to two feature sets (Heusel et al. 2017, the FID formula, with this classifier in place of
  Inception). With a few hundred images the estimate is biased upwards even between two real sets,
  so it is always printed beside :func:`real_floor`, the same distance between two disjoint real
  sets of the same size: a perfect model would reach the floor, not zero.
- :func:`judge_samples`: the distance, the judge's mean max-softmax (confident classes:
  recognisable images), its class histogram and the fraction of saturated pixels (outside
  :math:`[-1, 1]`, the data range).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    """conv3x3(c0) - conv3x3/2(c1) - ... - linear(features) - linear(10), SiLU between layers.

    ``Classifier(8, (32, 64), 64)`` is the digits judge; ``Classifier(28, (32, 64, 64), 64)`` the
    Fashion-MNIST one. ``features`` gives the penultimate layer.
    """

    def __init__(self, size: int, channels: tuple[int, ...], features: int = 64):
        super().__init__()
        convs, ch = [], 1
        for i, out in enumerate(channels):
            convs.append(nn.Conv2d(ch, out, 3, stride=1 if i == 0 else 2, padding=1))
            ch, size = out, size if i == 0 else (size + 1) // 2
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Linear(ch * size * size, features)
        self.head = nn.Linear(features, 10)
        self.drop = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = F.silu(conv(h))
        return F.silu(self.fc(self.drop(h.flatten(1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, channels: tuple[int, ...], features: int, epochs: int
) -> Classifier:
    """A :class:`Classifier` for the images ``x`` trained by Adam on cross-entropy with small random
    shifts and pixel noise (so it tolerates samples slightly off the data's grey levels); seeded."""
    torch.manual_seed(0)
    model = Classifier(x.shape[-1], channels, features)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=g).split(64):
            xb = x[idx]
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            xb = xb + 0.1 * torch.randn(xb.shape, generator=g)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def cached_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    channels: tuple[int, ...],
    features: int,
    epochs: int,
    cache: str | None,
) -> tuple[Classifier, float]:
    """:func:`train_classifier`, or its weights from ``cache`` (a ``.pt`` path) when that exists;
    returns the judge and the CPU seconds spent training it (0 when loaded)."""
    if cache and Path(cache).is_file():
        model = Classifier(x.shape[-1], channels, features)
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval(), 0.0
    start = time.process_time()
    model = train_classifier(x, y, channels, features, epochs)
    if cache:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model, time.process_time() - start


@torch.no_grad()
def features(judge: Classifier, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    return torch.cat([judge.features(xb) for xb in x.split(batch)]).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    r""":math:`\lVert\mu_a - \mu_b\rVert^2 + \operatorname{tr}(\Sigma_a + \Sigma_b
    - 2(\Sigma_a\Sigma_b)^{1/2})` between Gaussians fitted to the rows of ``a`` and ``b``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    root = root.real  # rounding leaves a tiny imaginary part
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def real_floor(
    judge: Classifier, pool: torch.Tensor, reference: np.ndarray, draws: int = 5
) -> tuple[float, torch.Tensor]:
    """The mean distance from ``reference`` features to as many images drawn from ``pool`` (real
    images disjoint from the reference), over ``draws`` seeded draws; and the last draw."""
    n = reference.shape[0]
    g = torch.Generator().manual_seed(1)
    floors = []
    for _ in range(draws):
        real = pool[torch.randperm(pool.shape[0], generator=g)[:n]]
        floors.append(frechet_distance(features(judge, real), reference))
    return float(np.mean(floors)), real


#: float32 round-off of values computed to be exactly +-1 (a clipped estimate through the
#: conversions): not outside the data range
ROUND_OFF = 1e-5


@torch.no_grad()
def judge_samples(judge: Classifier, x: torch.Tensor, reference: np.ndarray) -> dict:
    """Fréchet distance to ``reference`` features, mean max-softmax, class histogram, the
    fraction of pixels outside [-1, 1] (beyond :data:`ROUND_OFF`), of those more than one 8-bit grey
    level outside
    (:math:`|x| > 1 + 2/255`) and the largest absolute value of the images ``x`` (judged as they
    are, unclipped)."""
    x = x.float().cpu()
    probs = torch.cat([F.softmax(judge(xb), 1) for xb in x.split(1000)])
    return {
        "fd": frechet_distance(features(judge, x), reference),
        "confidence": float(probs.max(1).values.mean()),
        "histogram": torch.bincount(probs.argmax(1), minlength=10).tolist(),
        "saturated": float((x.abs() > 1 + ROUND_OFF).float().mean()),
        "visibly_saturated": float((x.abs() > 1 + 2 / 255).float().mean()),
        "max_abs": float(x.abs().max()),
    }


def load_average() -> float:
    return os.getloadavg()[0]
