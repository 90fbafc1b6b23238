"""The devices a benchmark runs on (``--device auto|cpu|cuda[:N]``) and the wait for one."""

from __future__ import annotations

import torch


def devices(choice: str) -> list[torch.device]:
    """``auto``: the CPU, and the GPU beside it when CUDA is present; else the one named."""
    if choice != "auto":
        if choice.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit(f"--device {choice}: CUDA is not available on this machine")
        return [torch.device(choice)]
    if not torch.cuda.is_available():
        print("CUDA is not available: the GPU rows are skipped\n")
        return [torch.device("cpu")]
    return [torch.device("cpu"), torch.device("cuda")]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer stops after it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
