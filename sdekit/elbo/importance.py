r"""Importance sampling of the bound's terms by their magnitude (Nichol & Dhariwal 2021, §3.1).

The sum :math:`\sum_i L_i` of :math:`N` terms is estimated by :math:`L_j/p_j` with :math:`j \sim p`,
unbiased for any :math:`p` with :math:`p_i > 0`; its variance is least for :math:`p_i \propto |L_i|`,
which :class:`SecondMomentSampler` approximates from a short history of each term.
"""

from __future__ import annotations

import torch


class SecondMomentSampler:
    r"""Importance sampling of the levels, :math:`p_i \propto \sqrt{\mathbb E[L_i^2]}` (Nichol &
    Dhariwal 2021, §3.1, eq. 18), from the last ``history`` values of each term.

    Until every level has ``history`` values the levels are drawn uniformly; after that
    :math:`p_i = (1 - u)\,\sqrt{\overline{L_i^2}}/\sum_j\sqrt{\overline{L_j^2}} + u/N` with the small
    uniform share :math:`u` (``uniform_prob``, 0.001 as in the reference code) that keeps every
    :math:`p_i > 0`, so :math:`L_j/p_j` stays an unbiased estimate of :math:`\sum_i L_i` whatever the
    history. Updates and draws stay on the device (no host synchronisation).

    Args:
        N: the number of levels.
        history: values kept per level (10 in the paper).
        uniform_prob: :math:`u` in [0, 1].
        device: where the history lives (the data's device).
    """

    def __init__(self, N: int, *, history: int = 10, uniform_prob: float = 1e-3, device=None):
        if isinstance(N, bool) or not isinstance(N, int) or N < 2:
            raise ValueError(f"N must be an integer >= 2, got {N!r}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an integer >= 1, got {history!r}")
        if not 0 <= uniform_prob <= 1:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob}")
        self.N, self.history, self.uniform_prob = N, history, float(uniform_prob)
        # one spare column receives the writes beyond `history` of one level in one batch
        self._values = torch.zeros(N, history + 1, dtype=torch.float64, device=device)
        self._counts = torch.zeros(N, dtype=torch.int64, device=device)
        self._next = torch.zeros(N, dtype=torch.int64, device=device)

    def probs(self) -> torch.Tensor:
        """The current :math:`p`, ``(N,)`` float64."""
        w = self._values[:, : self.history].square().mean(1).sqrt()
        warm = (self._counts == self.history).all() & (w.sum() > 0)
        p = (1 - self.uniform_prob) * w / w.sum().clamp_min(1e-300) + self.uniform_prob / self.N
        return torch.where(warm, p, torch.full_like(p, 1.0 / self.N))

    def sample(self, batch: int, *, generator: torch.Generator | None = None):
        """``(i, p_i)``: ``batch`` levels drawn from :meth:`probs` and their probabilities."""
        p = self.probs()
        i = torch.multinomial(p, batch, replacement=True, generator=generator)
        return i, p[i]

    def update(self, i: torch.Tensor, terms: torch.Tensor) -> None:
        """Record the values ``terms`` of the levels ``i`` (both ``(batch,)``; the oldest go first)."""
        i = i.to(self._values.device)
        terms = terms.detach().to(self._values)
        order = torch.argsort(i, stable=True)
        i, terms = i[order], terms[order]
        k = torch.bincount(i, minlength=self.N)
        start = torch.cumsum(k, 0) - k
        rank = torch.arange(i.shape[0], device=i.device) - start[i]
        keep = rank >= k[i] - self.history  # the last `history` of a level's values in this batch
        col = torch.where(keep, (self._next[i] + rank) % self.history, self.history)
        self._values[i, col] = terms
        self._next = (self._next + k) % self.history
        self._counts = torch.clamp(self._counts + k, max=self.history)
