r"""An exponential moving average of a model's weights, the weights that are sampled from.

After the :math:`n`-th update (:math:`n = 0, 1, \dots`) with model weights :math:`\theta_n`,

.. math:: \bar\theta \leftarrow d_n\,\bar\theta + (1 - d_n)\,\theta_n, \qquad
          d_n = \min\Bigl(d,\ \frac{1 + n}{10 + n}\Bigr)

with the warm-up (the schedule of TensorFlow's ``ExponentialMovingAverage`` given
``num_updates``), or :math:`d_n = d` without it. The warm-up keeps the average from being dominated
by the random initialisation: the weight left on the initial :math:`\bar\theta` after :math:`n`
updates is :math:`\prod_{k<n} d_k = 1/\binom{n+9}{9}` while the cap is not reached, against
:math:`d^n` without.
Buffers (e.g. normalisation statistics) are copied, not averaged. Only the parameters that require
grad are averaged: a frozen part of the model (the locked base network of a ControlNet) never
changes, so the average shares those tensors with the model instead of holding a second copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .checks import check_probability


class EMA:
    """Keeps ``model``'s moving average in a frozen copy, :attr:`module`, in eval mode.

    Args:
        model: the trained model (its current weights start the average). The parameters that
            require grad now are averaged; the others are shared with ``model``, not copied.
        decay: :math:`d`, in [0, 1).
        warmup: use :math:`d_n = \\min(d, (1 + n)/(10 + n))`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True):
        self.decay = check_probability("decay", decay, open_right=True)
        self.warmup = warmup
        self.num_updates = 0
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        # deepcopy's memo maps an object to its copy: the frozen tensors map to themselves
        self.module = copy.deepcopy(model, memo=frozen).eval().requires_grad_(False)
        self._averaged = [n for n, p in model.named_parameters() if p.requires_grad]
        ema_params = dict(self.module.named_parameters())
        self._ema_params = [ema_params[n] for n in self._averaged]

    def current_decay(self) -> float:
        """:math:`d_n` for the next update."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (one update)."""
        d = self.current_decay()
        named = dict(model.named_parameters())
        pairs = zip(self._averaged, self._ema_params, strict=True)
        params = [named[n].detach().to(q.dtype) for n, q in pairs]
        # lerp_(theta, 1 - d) is d * avg + (1 - d) * theta, in one fused kernel over all tensors
        torch._foreach_lerp_(self._ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {
            "module": self.module.state_dict(),
            "num_updates": self.num_updates,
            "decay": self.decay,
            "warmup": self.warmup,
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
