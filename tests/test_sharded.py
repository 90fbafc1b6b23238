"""Sampling and likelihoods at scale: 2 Gloo processes write the very shards 1 process writes; a
run resumes what is verified and redoes what is not; bad input gets a clear error.

The workers run the command line exactly as ``torchrun --nproc_per_node 2 -m sdekit sample``
does (``RANK``/``WORLD_SIZE`` in the environment, the process group from ``env://``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_ddp import free_port
from torch import nn

from sdekit import VPSDE, GaussianMixture
from sdekit.cli import main
from sdekit.inference import TrainedModel, load_model
from sdekit.likelihood import log_likelihood
from sdekit.seeding import derive_seed
from sdekit.sharded import likelihood_shards, sample_shards
from sdekit.shards import load_shards, read_shard
from sdekit.training import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

SAMPLE = ["--method", "ddim", "--steps", "3", "--n", "37", "--shard-size", "8", "--batch-size",
          "3", "--device", "cpu"]  # fmt: skip
LIKELIHOOD = ["--n", "19", "--shard-size", "8", "--batch-size", "5", "--method", "heun2",
              "--steps", "3", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data="gmm_2d", toy_size=256, batch_size=32, steps=3, hidden=16, depth=2,
                      out=str(out), sample_every=0, device="cpu")  # fmt: skip
    Trainer(cfg, sample_grid=False).train()
    return out / "checkpoint.pt"


def _worker(rank: int, world: int, port: int, checkpoint: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )  # fmt: skip
    if sys.platform == "linux":
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    source = ["--checkpoint", checkpoint]
    assert main(["sample", *source, *SAMPLE, "--out-dir", f"{out}/samples"]) == 0
    assert main(["likelihood", *source, *LIKELIHOOD, "--out-dir", f"{out}/ll"]) == 0


def shard_arrays(directory) -> list[dict]:
    manifest = json.loads((directory / "manifest.json").read_text())
    return [read_shard(directory / e["file"]) for e in manifest["shards"]]


def test_two_processes_write_the_shards_of_one(run, tmp_path, capsys):
    ctx = mp.start_processes(
        _worker, args=(2, free_port(), str(run), str(tmp_path / "two")), nprocs=2, join=False,
        start_method="spawn",
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the workers did not finish within 240 s")
    source = ["--checkpoint", str(run)]
    assert main(["sample", *source, *SAMPLE, "--out-dir", str(tmp_path / "one/samples")]) == 0
    err = capsys.readouterr().err
    assert "shard 5/5 (items 32..36) done by process 0" in err  # a line per shard
    assert main(["likelihood", *source, *LIKELIHOOD, "--out-dir", str(tmp_path / "one/ll")]) == 0
    for kind, n in (("samples", 37), ("ll", 19)):
        two, one = tmp_path / "two" / kind, tmp_path / "one" / kind
        manifest = json.loads((two / "manifest.json").read_text())
        assert manifest["complete"] and manifest["source"]["world_size"] == 2
        # shards dealt in turn, uneven splits included (5 shards, 3 shards over 2 processes)
        ranks = [e["rank"] for e in manifest["shards"]]
        assert ranks == [0, 1, 0, 1, 0][: len(ranks)]
        for a, b in zip(shard_arrays(two), shard_arrays(one), strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert np.array_equal(a[key], b[key]), (kind, key)  # bitwise
        assert len(load_shards(two)["indices"]) == n
        ours = json.loads((one / "manifest.json").read_text())
        assert ours["settings"] == manifest["settings"]
    ll = json.loads((tmp_path / "two/ll/manifest.json").read_text())
    assert ll["summary"] == json.loads((tmp_path / "one/ll/manifest.json").read_text())["summary"]
    # the shards hold what one batched draw gives (up to the batches' round-off)
    x = load_model(run).sample_batched(37, batch_size=37, method="ddim", steps=3)
    assert np.allclose(load_shards(tmp_path / "one/samples")["samples"], x.numpy(), atol=1e-5)


def test_resume_skips_verified_shards_and_redoes_the_rest(run, tmp_path, capsys):
    trained = load_model(run)
    options = dict(n=40, shard_size=8, batch_size=4, method="ddim", steps=3, checkpoint=run)
    sample_shards(trained, tmp_path, **options)
    expected = load_shards(tmp_path)
    # sample i from generator (seed, 5, i), in the same batches as one draw of 40: bitwise
    batched = trained.sample_batched(40, batch_size=4, method="ddim", steps=3)
    assert np.array_equal(expected["samples"], batched.numpy())
    (tmp_path / "shard_00002.npz").unlink()  # never written (the run was stopped)
    raw = bytearray((tmp_path / "shard_00003.npz").read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # a flipped byte inside the samples
    (tmp_path / "shard_00003.npz").write_bytes(bytes(raw))
    (tmp_path / "shard_00004.npz").write_bytes(b"PK\x03\x04 half a file")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    capsys.readouterr()
    again = sample_shards(trained, tmp_path, **options)
    err = capsys.readouterr().err
    assert "shard_00003.npz is " in err and "shard_00004.npz is unreadable" in err
    assert "2 of 5 shards already complete" in err and "shard 1/5" not in err
    assert again["complete"]
    for key, value in load_shards(tmp_path).items():
        assert np.array_equal(value, expected[key]), key
    # a shard that reads back but is not the one the manifest recorded is computed again
    sample_shards(trained, tmp_path / "other", **{**options, "checkpoint": None, "steps": 4})
    os.replace(tmp_path / "other" / "shard_00001.npz", tmp_path / "shard_00001.npz")
    capsys.readouterr()
    sample_shards(trained, tmp_path, **options)
    assert "shard_00001.npz is written with other settings" in capsys.readouterr().err
    assert manifest["settings"] == again["settings"]


def test_resume_with_other_settings_is_refused(run, tmp_path, capsys):
    out = ["--checkpoint", str(run), *SAMPLE, "--out-dir", str(tmp_path)]
    assert main(["sample", *out]) == 0
    with pytest.raises(SystemExit):
        main(["sample", *out, "--steps", "4", "--seed", "1"])
    assert "other settings (seed: 0 there, 1 now, steps: 3 there, 4 now)" in capsys.readouterr().err
    # other weights under the same file name: the checkpoint's digest is a setting
    cfg = load_model(run).config
    Trainer(TrainConfig.from_dict({**cfg.to_dict(), "out": str(tmp_path / "re"), "seed": 1}),
            sample_grid=False).train()  # fmt: skip
    with pytest.raises(SystemExit):
        main(["sample", *out[2:], "--checkpoint", str(tmp_path / "re" / "checkpoint.pt")])
    assert "checkpoint_sha256" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["likelihood", "--checkpoint", str(run), *LIKELIHOOD, "--out-dir", str(tmp_path)])
    assert "holds a 'samples' run" in capsys.readouterr().err


def test_bad_input_gets_a_clear_error(run, tmp_path, capsys, monkeypatch):
    trained = load_model(run)
    monkeypatch.setattr("sdekit.shards._rank_world", lambda: (0, 4))
    with pytest.raises(ValueError, match=r"4 processes for 2 shard\(s\).*at most 2 processes"):
        sample_shards(trained, tmp_path, n=10, shard_size=8)
    monkeypatch.undo()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(run), "--device", "cpu"])
    assert "under torchrun the samples go to --out-dir" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    cases = [
        (["sample", "--out", "x.pt", "--out-dir", str(tmp_path)], "not both"),
        (
            ["likelihood", "--out-dir", str(tmp_path), "--data", "digits", "--split", "test"],
            "'digits' has no test split",
        ),
        (
            ["likelihood", "--out-dir", str(tmp_path), "--data", "digits"],
            "examples of shape (1, 8, 8), the model's are (2,)",
        ),
        (["likelihood", "--out-dir", str(tmp_path), "--n", "999999"], "--n must be at most"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            main([*argv, "--checkpoint", str(run), "--device", "cpu"])
        assert message in capsys.readouterr().err, argv
    part = tmp_path / "part"
    sample_shards(trained, part, n=16, shard_size=8)
    (part / "shard_00001.npz").write_bytes((part / "shard_00000.npz").read_bytes())
    with pytest.raises(ValueError, match="shard_00001.npz is missing or differs from the manifest"):
        load_shards(part)
    manifest = json.loads((part / "manifest.json").read_text())
    manifest["complete"], manifest["shards"][1]["sha256"] = False, None
    (part / "manifest.json").write_text(json.dumps(manifest))  # as a stopped run leaves it
    with pytest.raises(ValueError, match=r"not complete \(1 shard\(s\) missing.*run the same"):
        load_shards(part)


class ExactScore(nn.Module):
    """The exact score of a Gaussian mixture under an SDE, as a network."""

    def __init__(self, gm: GaussianMixture, sde):
        super().__init__()
        self.gm, self.sde = gm, sde
        self.unused = nn.Parameter(torch.zeros(()))  # a device to read off

    def forward(self, x, t):
        return self.gm.score(x, t, self.sde)


def test_likelihood_shards_are_the_exact_density_and_bits_per_dim(tmp_path):
    """With the oracle score the nats are the mixture's log-density at t_min; the values are
    log_likelihood's own on each batch; the bits per dimension follow from them exactly."""
    sde = VPSDE()
    gm = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [[0.4, 0.6], [0.5, 0.3]])
    config = TrainConfig(prediction="score", data="gmm_2d", device="cpu")
    trained = TrainedModel(ExactScore(gm, sde).double().eval(), sde, config, (2,), None)
    x = gm.sample(12, generator=torch.Generator().manual_seed(0))
    manifest = likelihood_shards(trained, x, tmp_path / "a", method="rk4", steps=40, shard_size=5,
                                 batch_size=5)  # fmt: skip
    values = load_shards(tmp_path / "a")
    exact = gm.log_prob(x, torch.full((12,), sde.t_min, dtype=torch.float64), sde)
    # measured within 7e-3 (rk4's 40 uniform steps; N(0, I) for p_T); a wrong prediction or SDE
    # is off by far more
    assert np.allclose(values["log_likelihood"], exact.numpy(), rtol=0, atol=1.5e-2)
    direct, _ = log_likelihood(trained.model, sde, x[5:10], prediction="score", method="rk4",
                               steps=40)  # fmt: skip
    assert np.array_equal(values["log_likelihood"][5:10], direct.numpy())
    bpd = -values["log_likelihood"] / (2 * math.log(2))
    assert np.array_equal(values["bits_per_dim"], bpd)
    assert math.isclose(manifest["summary"]["mean_bits_per_dim"], bpd.mean(), rel_tol=1e-12)
    # images on a pixel lattice: dequantised by (seed, 7, i) noise, bits/dim in pixel units
    m = 16.0
    pixels = torch.randint(0, 17, (6, 2), generator=torch.Generator().manual_seed(1))
    lattice = (pixels * (2 / m) - 1).double()
    likelihood_shards(trained, lattice, tmp_path / "b", method="rk4", steps=10, pixel_max=m,
                      seed=4, shard_size=4, batch_size=4)  # fmt: skip
    values = load_shards(tmp_path / "b")
    noise = torch.stack([torch.rand(2, generator=torch.Generator().manual_seed(derive_seed(4, 7, i)),
                                    dtype=torch.float64) for i in range(6)])  # fmt: skip
    y = (pixels + noise) * (2 / m) - 1
    lp = torch.cat([log_likelihood(trained.model, sde, y[a:b], prediction="score", method="rk4",
                                   steps=10)[0] for a, b in ((0, 4), (4, 6))])  # fmt: skip
    assert np.array_equal(values["log_likelihood"], lp.numpy())
    expected_bpd = -(lp + 2 * math.log(2 / m)) / (2 * math.log(2))
    assert np.allclose(values["bits_per_dim"], expected_bpd.numpy(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="pixel lattice"):
        likelihood_shards(trained, lattice + 0.01, tmp_path / "c", steps=2, pixel_max=m)
    with pytest.raises(ValueError, match="method must be one of"):
        likelihood_shards(trained, x, tmp_path / "c", method="dopri5")


def test_every_flag_passes_through_torchrun():
    """torchrun's own parser takes an abbreviation of its options for one (``--n`` would be
    ``--nnodes``...): every flag of sample and likelihood but ``--n`` must reach sdekit, and
    ``--num-samples``/``--num-examples`` stand in for it."""
    from torch.distributed.run import get_args_parser

    from sdekit.cli import build_parser

    torchrun = get_args_parser()
    torchrun.exit_on_error = False
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("sample", "likelihood", "export"):
        refused = set()
        for action in commands[command]._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                try:
                    args = torchrun.parse_args(["--nproc_per_node", "2", "-m", "sdekit", command,
                                                flag, "1"])  # fmt: skip
                except (SystemExit, Exception):
                    refused.add(flag)
                    continue
                assert args.training_script_args == [command, flag, "1"]
        assert refused <= {"--n"}, (command, refused)
