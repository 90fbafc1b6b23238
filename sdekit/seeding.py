r"""Counter-based randomness: every random draw of a run is a function of ``(seed, purpose, counters)``.

A run's data order and its loss's noise come from generators seeded by
:math:`\mathrm{hash}(\text{seed}, \text{purpose}, \dots)` (NumPy's ``SeedSequence``, so close
inputs give unrelated seeds) instead of one stream consumed step after step:

- a generated (toy) data set: ``(seed, 1)`` (:func:`data_generator`);
- the global generators of process :math:`r` (dropout): ``(seed, 2, r)``
  (:func:`seed_global_generators`);
- the permutation of epoch :math:`e`: ``(seed, 3, e)`` (:class:`BatchOrder`);
- the noise and times of micro-batch :math:`m` at step :math:`k`: ``(seed, 4, k, m)``
  (:func:`noise_generator`);
- sample :math:`i` of a batched draw: ``(seed, 5, i)`` (:func:`sample_generators`);
- the Hutchinson probes of a sharded likelihood's batch starting at item :math:`i`:
  ``(seed, 6, i)``, and the dequantization noise of item :math:`i`: ``(seed, 7, i)``
  (:mod:`sdekit.sharded`);
- the fresh points of a toy data set's ``test`` split: ``(seed, 8)`` (``sdekit likelihood``).

So nothing needs saving: a run resumed at step :math:`k` draws exactly what an uninterrupted one
would (bitwise on the CPU), and the draws do not depend on how the global batch is split between
processes and accumulation steps, nor a sample on the batch it is drawn in.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*words: int) -> int:
    """A 63-bit seed mixing ``words`` (NumPy's SeedSequence hash: close inputs, unrelated seeds)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> 1)


def data_generator(seed: int) -> torch.Generator:
    """The CPU generator a generated data set is drawn from."""
    return torch.Generator().manual_seed(derive_seed(seed, 1))


def seed_global_generators(seed: int, rank: int) -> None:
    """Seed torch's, NumPy's and Python's global generators (dropout, user code) of process
    ``rank``: distinct per process, so that processes do not drop the same units."""
    s = derive_seed(seed, 2, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)  # noqa: NPY002 (seeding the global state is the point)
    random.seed(s)


def noise_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The generator of the loss's noise and times for micro-batch ``micro`` of step ``step``."""
    return torch.Generator(device).manual_seed(derive_seed(seed, 4, step, micro))


def sample_generators(seed: int, indices: range, device: torch.device) -> list[torch.Generator]:
    """One generator per sample ``i`` in ``indices``, for samples that do not depend on the batch
    they are drawn in (:func:`sdekit.sample` accepts a list, one per sample)."""
    return [torch.Generator(device).manual_seed(derive_seed(seed, 5, i)) for i in indices]


class BatchOrder:
    """The examples of global batch ``step``: epochs of ``n // batch_size`` batches, each epoch
    :math:`e` a permutation of the ``n`` examples drawn from ``(seed, 3, e)`` (the last
    ``n % batch_size`` examples of a permutation wait for a later epoch).

    It keeps the permutation of the current epoch, to draw it once per epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be <= the data size {n}, got {batch_size}")
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.n // self.batch_size)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, 3, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).to(self.device)
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size]
