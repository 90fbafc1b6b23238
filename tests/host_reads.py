"""Count the reads of tensor values by the host: the CPU stand-in for CUDA's sync debug mode.

On a GPU each of these waits for the device (``torch.cuda.set_sync_debug_mode`` flags them); on a
CPU they cost nothing, so a loop can hide one per step without any timing showing it. Inside
``with HostReads() as reads:`` every such call on a tensor is counted, and ``reads.calls`` keeps
the names in order.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

#: Tensor methods and functions whose result is a host value, or whose output shape depends on
#: values (so the host must wait for them)
SYNCING = frozenset(
    {
        "__bool__",
        "__float__",
        "__int__",
        "__index__",
        "item",
        "tolist",
        "numpy",
        "cpu",
        "nonzero",
        "masked_select",
        "unique",
    }
)


class HostReads(TorchFunctionMode):
    """``calls``: the names of the reads; ``sites``: ``(module file name, function)`` of the Python
    function that made each read."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self.sites: list[tuple[str, str]] = []

    @property
    def count(self) -> int:
        return len(self.calls)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        boolean_index = name == "__getitem__" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
        )
        if name in SYNCING or boolean_index:
            self.calls.append(name)
            caller = sys._getframe(1).f_code
            self.sites.append((Path(caller.co_filename).name, caller.co_name))
        return func(*args, **(kwargs or {}))


def count_cuda_syncs(fn):
    """``(fn(), number of synchronizing CUDA operations it ran)``, by torch's sync debug mode."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message) for w in caught)
