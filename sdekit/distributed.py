r"""Processes and devices: the process group under ``torchrun``, each process's device, its share of
a global batch, and the collectives the trainer needs.

``torchrun --nproc_per_node W`` starts :math:`W` processes with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in their environment; :func:`init_process_group` joins them into one group
(``env://``; NCCL on CUDA, Gloo on the CPU). A global batch of :math:`B` examples is cut into
:math:`W A` micro-batches of :math:`B / (W A)` (:func:`micro_batch_size`); process :math:`r`
computes micro-batches :math:`rA, \dots, rA + A - 1` (:func:`micro_batch_ids`), accumulating
gradients over its :math:`A`, and DDP (:func:`wrap_ddp`) averages them over the processes. One
process (``WORLD_SIZE`` unset or 1) needs none of this: every function here then does nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def init_process_group(device: str = "auto") -> tuple[int, int]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (once); ``(rank, world_size)``.

    ``device`` is a :attr:`~sdekit.config.TrainConfig.device` value: on CUDA each process first
    selects GPU ``LOCAL_RANK`` and the group uses NCCL, otherwise Gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = _wants_cuda(device)
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str) -> torch.device:
    """The device ``name`` stands for: ``"auto"`` is CUDA when available, else the CPU; under a
    process group ``"cuda"`` is this process's GPU (``LOCAL_RANK``).

    Raises ``ValueError`` for a name torch does not know or CUDA that is not there.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} needs CUDA, which is not available here: use 'cpu' (or 'auto')"
            )
        if dist.is_initialized():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return device


def micro_batch_size(batch_size: int, world_size: int, grad_accum: int) -> int:
    """:math:`B / (W A)`, the examples of one forward pass; ``B`` must divide evenly."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise ValueError(
            f"batch_size must be a multiple of world size x grad_accum = {parts}, got {batch_size}"
        )
    return batch_size // parts


def micro_batch_ids(rank: int, grad_accum: int) -> range:
    """The global indices of process ``rank``'s micro-batches: :math:`rA, \\dots, rA + A - 1`."""
    return range(rank * grad_accum, (rank + 1) * grad_accum)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` behind :class:`~torch.nn.parallel.DistributedDataParallel` under a process group
    of several processes (which broadcasts process 0's weights), else ``model`` itself.

    Parameters that do not require grad (a frozen base network) are left out of the averaging.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the processes, in place (``value`` itself without a group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def all_gather_objects(obj) -> list:
    """``[obj of process 0, obj of process 1, ...]`` (collective: every process must call it)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
