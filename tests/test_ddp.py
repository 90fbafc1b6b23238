"""Two Gloo processes on the CPU train to the weights of one process with the same global batch.

The data order and the loss's noise are functions of (seed, step, micro-batch), so 2 processes with
``grad_accum=1`` see exactly the micro-batches of 1 process with ``grad_accum=2``; DDP averages the
two halves' gradients where the single process accumulates them.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sdekit.checkpoint import load_checkpoint
from sdekit.training import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def config(out, **kw) -> dict:
    base = dict(
        data="gmm_2d", toy_size=512, batch_size=64, steps=4, hidden=32, depth=2, lr=3e-3,
        warmup_steps=1, out=str(out), sample_every=0, checkpoint_every=0, sample_n=16,
        sample_steps=2, device="cpu",
    )  # fmt: skip
    return {**base, **kw}


def _worker(rank: int, world: int, port: int, cfg: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )  # fmt: skip
    if sys.platform == "linux":
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig(**cfg))  # initialises the process group from env://
    assert trainer.world_size == world and trainer.micro_batch == cfg["batch_size"] // world
    losses = trainer.train()
    if rank == 0:
        torch.save(torch.tensor(losses, dtype=torch.float64), os.path.join(cfg["out"], "losses.pt"))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    cfg = config(tmp_path / "ddp")
    ctx = mp.start_processes(
        _worker, args=(2, free_port(), cfg), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the DDP workers did not finish within 240 s")

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(TrainConfig(**config(tmp_path / "one", grad_accum=2)))
        losses = single.train()
    finally:
        torch.set_num_threads(n)

    state = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert state["step"] == 4 and len(state["rng"]) == 2  # one RNG state per process
    ddp_losses = torch.load(tmp_path / "ddp" / "losses.pt")
    assert torch.allclose(ddp_losses, torch.tensor(losses, dtype=torch.float64), atol=1e-6)
    for name, p in single.model.state_dict().items():
        assert torch.allclose(state["model"][name], p, atol=1e-6, rtol=0), name
    for name, p in single.ema.module.state_dict().items():
        assert torch.allclose(state["ema"]["module"][name], p, atol=1e-6, rtol=0), name
    # and the weights moved: the comparison is not between two untouched initialisations
    init = Trainer(TrainConfig(**config(tmp_path / "init", steps=1))).model.state_dict()
    assert any((init[k] - v).abs().max() > 1e-3 for k, v in state["model"].items())
