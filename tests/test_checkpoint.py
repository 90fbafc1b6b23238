"""Checkpoint integrity: a damaged, foreign or non-finite file gets one clear error naming it,
and an interrupted save's temporary files are cleaned up on the next start."""

from __future__ import annotations

import os
import struct
import time
import zipfile

import pytest
import torch

from sdekit.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    state_digest,
)
from sdekit.config import TrainConfig
from sdekit.inference import load_model
from sdekit.training import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real checkpoint of a two-step toy run."""
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data="gmm_2d", toy_size=128, batch_size=32, steps=2, hidden=16, depth=2,
                      out=str(out), sample_every=0, device="cpu")  # fmt: skip
    Trainer(cfg, sample_grid=False).train()
    return out / "checkpoint.pt"


def same(a, b) -> bool:
    """Equal contents, tensors bitwise."""
    return state_digest(a) == state_digest(b)


def test_round_trip_and_digest_sees_every_value(run):
    state = load_checkpoint(run)
    assert "sha256" not in state and state["step"] == 2
    changed = load_checkpoint(run)
    changed["model"]["inp.weight"][0, 0] += 1e-6  # a few ulps in one weight
    assert not same(state, changed)
    assert state_digest({"a": (1, 2)}) != state_digest({"a": [1, 2]}) != state_digest({"a": 1})
    with pytest.raises(ValueError, match="sha256"):
        save_checkpoint({"sha256": "x"}, run.parent / "bad.pt")


@pytest.mark.parametrize("fraction", [0.02, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 0.97])
def test_flipped_bytes_never_load_silently(run, tmp_path, fraction):
    """64 flipped bytes anywhere: a clear error, or (flipping only alignment padding) the very
    same state; never weights that differ."""
    raw = bytearray(run.read_bytes())
    start = int(fraction * (len(raw) - 64))
    raw[start : start + 64] = bytes(b ^ 0xFF for b in raw[start : start + 64])
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(raw))
    try:
        state = load_checkpoint(bad)
    except CheckpointError as e:
        assert str(bad) in str(e)
    else:
        assert same(state, load_checkpoint(run))


def test_flipped_weight_bytes_fail_the_checksum(run, tmp_path):
    """Bytes flipped inside a tensor's data leave a loadable archive: only the checksum sees it."""
    raw = bytearray(run.read_bytes())
    with zipfile.ZipFile(run) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - 32
    raw[start : start + 64] = bytes(b ^ 0xFF for b in raw[start : start + 64])
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    torch.load(tmp_path / "flipped.pt", weights_only=True)  # torch alone reads it without a word
    with pytest.raises(CheckpointError, match="do not match its SHA-256 checksum"):
        load_checkpoint(tmp_path / "flipped.pt")


def test_unusable_files_get_one_clear_error(run, tmp_path):
    raw = run.read_bytes()
    cases = {
        "truncated.pt": raw[: len(raw) // 2],
        "empty.pt": b"",
        "text.pt": b"step = 3\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"weight": torch.ones(3)}, tmp_path / "foreign.pt")
    messages = {
        "truncated.pt": "cannot be read",
        "empty.pt": "is empty",
        "text.pt": "cannot be read",
        "foreign.pt": "not an sdekit checkpoint",
    }
    for name, message in messages.items():
        with pytest.raises(CheckpointError, match=message) as e:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(CheckpointError, match=f"is a directory: pass the file inside it, {run}"):
        load_checkpoint(run.parent)
    with pytest.raises(FileNotFoundError, match="checkpoint must be an existing file"):
        load_checkpoint(tmp_path / "none.pt")
    save_checkpoint({"weights": torch.ones(2)}, tmp_path / "other_kind.pt")
    with pytest.raises(CheckpointError, match=r"lacks \['config'"):
        load_model(tmp_path / "other_kind.pt")


def test_nan_weights_are_refused_on_load_and_resume(run, tmp_path):
    state = load_checkpoint(run)
    state["ema"]["module"]["out.weight"][0, 0] = float("nan")
    out = tmp_path / "nan_run"
    save_checkpoint(state, out / "checkpoint.pt")  # a valid checksum over the NaN
    with pytest.raises(CheckpointError, match=r"EMA weights hold NaN or inf in 1 of .*out.weight"):
        load_model(out / "checkpoint.pt")
    assert load_model(out / "checkpoint.pt", ema=False).model is not None  # the model is fine
    cfg = TrainConfig.from_dict({**state["config"], "out": str(out), "steps": 4})
    with pytest.raises(CheckpointError, match="EMA weights hold NaN"):
        Trainer(cfg)


def test_stale_temporaries_are_removed_on_start(tmp_path):
    stale = tmp_path / ".checkpoint.pt.k3j_x9q2.tmp"
    fresh = tmp_path / ".checkpoint.pt.abcdefgh.tmp"  # a live writer's file (newer than us)
    other = tmp_path / ".other.pt.k3j_x9q2.tmp"
    lookalike = tmp_path / ".checkpoint.pt.notours.tmp"
    for p in (stale, fresh, other, lookalike):
        p.write_bytes(b"half a checkpoint")
    hour_ago = time.time() - 3600
    for p in (stale, other, lookalike):
        os.utime(p, (hour_ago, hour_ago))
    cfg = TrainConfig(data="gmm_2d", toy_size=64, batch_size=32, steps=1, hidden=8, depth=1,
                      out=str(tmp_path), device="cpu")  # fmt: skip
    Trainer(cfg)
    assert not stale.exists() and fresh.exists() and other.exists() and lookalike.exists()
    assert remove_stale_temporaries(tmp_path / "none" / "checkpoint.pt") == []


def test_map_location_moves_every_tensor_and_keeps_state_dict_metadata(run):
    state = load_checkpoint(run, map_location="meta")
    assert state["model"]["inp.weight"].device.type == "meta"
    assert state["rng"][0]["numpy"][1].device.type == "meta"  # inside tuples too
    assert hasattr(state["model"], "_metadata")  # what load_state_dict reads versions from
