"""The Trainer's fast paths: no host read per step, fused AdamW, channels_last, torch.compile.

On a CPU a host read costs nothing, so a sync per step would not show in any timing; the reads are
counted instead (tests/host_reads.py), and each one left in a step must be a value check whose
accelerator branch is ``torch._assert_async`` (no sync there). The CUDA test counts real syncs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from host_reads import HostReads, count_cuda_syncs

from sdekit.training import TrainConfig, Trainer

# the reads a step may make on a CPU, with why none of them waits for an accelerator:
CPU_ONLY_READS = {
    ("checks.py", "check_time"),  # `if t.device.type == "cpu" and not bool(...)`
    ("checks.py", "_check_values"),  # torch._assert_async off the CPU
    ("checks.py", "check_float_input"),  # the CPU branch; _check_values (async) elsewhere
    ("losses.py", "_in_domain"),  # float() of a host constant, torch.tensor(T) on the CPU
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        data="digits", batch_size=16, steps=4, channels=8, channel_mults=(1, 2), num_res_blocks=1,
        lr=1e-3, warmup_steps=2, out=str(tmp_path), sample_every=0, checkpoint_every=0,
        device="cpu",
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


MLP = dict(data="gmm_2d", toy_size=256, hidden=16, depth=2)


@pytest.mark.parametrize("kw", [dict(), dict(MLP, grad_clip=0.0)], ids=["unet", "mlp_no_clip"])
def test_a_training_step_reads_the_host_only_in_cpu_value_checks(tmp_path, kw):
    trainer = Trainer(config(tmp_path, **kw), sample_grid=False)
    trainer.train_step()  # the optimiser's state is created at the first step
    with HostReads() as reads:
        loss = trainer.train_step()
    assert set(reads.sites) <= CPU_ONLY_READS, sorted(set(reads.sites) - CPU_ONLY_READS)
    assert loss.shape == () and trainer.grad_norm.shape == ()


def test_adamw_is_fused_with_its_step_counter_on_the_device(tmp_path):
    trainer = Trainer(config(tmp_path), sample_grid=False)
    assert trainer.optimizer.defaults["fused"] is True
    trainer.train_step()
    state = trainer.optimizer.state[trainer.trainable[0]]
    assert state["step"].device == trainer.trainable[0].device


def test_channels_last_images_train_like_contiguous_ones(tmp_path):
    runs = {}
    for channels_last in (True, False):
        trainer = Trainer(
            # no dropout: its masks are drawn in memory order, so they differ between layouts
            config(
                tmp_path / str(channels_last), channels_last=channels_last, steps=2, dropout=0.0
            ),
            sample_grid=False,
        )
        conv = next(p for p in trainer.model.parameters() if p.ndim == 4 and p.shape[1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert trainer.x.is_contiguous(memory_format=torch.channels_last)  # one channel: both
        runs[channels_last] = trainer.train()
    # the same computation in another memory layout: equal up to the convolutions' round-off
    torch.testing.assert_close(
        torch.tensor(runs[True]), torch.tensor(runs[False]), rtol=1e-4, atol=0
    )


def test_compile_wraps_the_network_and_checkpoints_keep_the_plain_module(tmp_path, monkeypatch):
    # torch.compile itself takes minutes on a shared CPU (benchmarks/train_throughput.py measures
    # it); here it is replaced by a recorder to test what the Trainer hands it and keeps
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = Trainer(config(tmp_path, compile=True, steps=2), sample_grid=False)
    assert compiled == [trainer.model]  # single process: the DDP wrapper is the model itself
    trainer.train()
    state = torch.load(trainer.checkpoint_path, weights_only=False)
    assert state["model"].keys() == trainer.model.state_dict().keys()
    assert not any(key.startswith("_orig_mod") for key in state["model"])
    # compile and channels_last change how, not what, is computed: a resume may switch them
    resumed = Trainer(config(tmp_path, compile=False, channels_last=False, steps=3))
    assert resumed.step == 2


def test_the_log_holds_the_mean_loss_since_its_previous_line(tmp_path):
    trainer = Trainer(config(tmp_path, **MLP, steps=7, log_every=3), sample_grid=False)
    losses = trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6, 7]
    for line, chunk in zip(lines, (losses[0:3], losses[3:6], losses[6:7]), strict=True):
        assert math.isclose(line["loss"], math.fsum(chunk) / len(chunk), rel_tol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_training_step_does_not_sync(tmp_path):
    trainer = Trainer(config(tmp_path, device="cuda", precision="bf16"), sample_grid=False)
    trainer.train_step()
    _, syncs = count_cuda_syncs(lambda: [trainer.train_step() for _ in range(3)])
    assert syncs == 0
    # train() reads the losses of log_every steps at once: 20 more steps are 2 more log lines and
    # a few syncs each (the checkpoint written at the end costs the same for both runs)
    syncs = []
    for steps in (20, 40):
        run = Trainer(
            config(tmp_path / str(steps), device="cuda", steps=steps, log_every=10),
            sample_grid=False,
        )
        syncs.append(count_cuda_syncs(run.train)[1])
    assert syncs[1] - syncs[0] <= 2 * 4, syncs
