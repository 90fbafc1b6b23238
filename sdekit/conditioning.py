r"""The condition a model is given: one object passed unchanged through samplers, losses, likelihood
and trainer.

A conditional model is called as ``model(x, t, cond)``, an unconditional one as ``model(x, t)``.
``cond`` is whatever the model understands, as long as it is *per sample*: a tensor whose first
dimension is the batch (class labels ``(batch,)``, a hint image ``(batch, C, H, W)``, a mask), or a
mapping of names to such tensors (``{"labels": ..., "hint": ...}``). sdekit never looks inside it
except to take the rows of a sub-batch, to stack two conditions (classifier-free guidance evaluates
the conditional and unconditional model in one batch) or to check that it matches the batch; those
three operations are here, so every feature treats a condition the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

#: a per-sample condition: a tensor ``(batch, ...)``, a mapping of names to such tensors, or None
Cond = torch.Tensor | Mapping[str, torch.Tensor] | None


def _tensors(cond: Cond) -> list[tuple[str, torch.Tensor]]:
    if cond is None:
        return []
    if isinstance(cond, torch.Tensor):
        return [("cond", cond)]
    if isinstance(cond, Mapping):
        items = list(cond.items())
        for key, value in items:
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"cond[{key!r}] must be a tensor with the batch as first dimension, "
                    f"got {type(value).__name__}"
                )
        return [(f"cond[{key!r}]", value) for key, value in items]
    raise ValueError(
        "cond must be a tensor (batch, ...), a mapping of names to such tensors, or None; "
        f"got {type(cond).__name__}"
    )


def check_cond(cond: Cond, batch: int) -> None:
    """Every tensor of ``cond`` must have ``batch`` rows (raises ``ValueError`` naming the entry)."""
    for name, value in _tensors(cond):
        if value.ndim == 0 or value.shape[0] != batch:
            raise ValueError(
                f"{name} must have the batch size {batch} as its first dimension, got shape "
                f"{tuple(value.shape)}"
            )


def select(cond: Cond, index: torch.Tensor | slice) -> Cond:
    """The rows ``index`` of every tensor of ``cond`` (a sub-batch, or a resampled one)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[index]
    _tensors(cond)
    return {key: value[index] for key, value in cond.items()}


def concat(conds: Sequence[Cond]) -> Cond:
    """Stack conditions along the batch; all must be None, all tensors, or mappings of one key set."""
    if all(c is None for c in conds):
        return None
    if all(isinstance(c, torch.Tensor) for c in conds):
        return torch.cat(list(conds))
    if all(isinstance(c, Mapping) for c in conds):
        keys = set(conds[0])
        if any(set(c) != keys for c in conds):
            raise ValueError(
                f"conditions to stack must have the same keys, got {[set(c) for c in conds]}"
            )
        return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}
    raise ValueError("conditions to stack must all be None, all tensors, or all mappings")


def call_model(model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, cond: Cond):
    """``model(x, t)`` without a condition, ``model(x, t, cond)`` with one."""
    return model(x, t) if cond is None else model(x, t, cond)
