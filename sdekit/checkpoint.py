r"""Checkpoints that survive a crash mid-write and are verified on load, and the random states that
make a resume exact.

Writing. :func:`save_checkpoint` writes to a temporary file ``.<name>.XXXXXXXX.tmp`` in the
target's directory, flushes it to disk (``fsync``) and renames it over the target with
:func:`os.replace`, which POSIX makes atomic within one file system: a reader, or a run restarted
after a crash at any point of the write, sees either the previous checkpoint or the new one, never
a truncated file. A process killed mid-write (``kill -9``) leaves its temporary file behind;
:func:`remove_stale_temporaries` deletes those on the next start.

Verifying. Beside the state, the file holds the SHA-256 digest of its contents
(:func:`state_digest`: every tensor's dtype, shape and bytes and every other value, in order), and
:func:`load_checkpoint` recomputes it: a flipped byte anywhere gives :class:`CheckpointError`, as
does a truncated, empty or foreign file, instead of weights that load and sample garbage. A
training checkpoint written before the checksum was added (it holds a run's ``step``, ``config``,
``model`` and ``ema`` but no ``sha256``) loads with a :class:`UnverifiedCheckpointWarning`: it is
read with ``torch.load(weights_only=True)`` like every checkpoint, so no code runs, but nothing
vouches for its bytes; the next save of a resumed run adds the checksum.
:func:`check_finite_parameters` refuses weights holding NaN or inf (a run that diverged).

Random states. :func:`rng_state` and :func:`set_rng_state` capture and restore every global
generator a training step may draw from (torch CPU, every CUDA device, NumPy, Python's ``random``)
as plain tensors and tuples, so checkpoints load with ``torch.load(weights_only=True)``: no pickled
code is ever run on load.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: the key of the checksum in a checkpoint file (removed by :func:`load_checkpoint`)
CHECKSUM_KEY = "sha256"
# temporary files left by a process that died before this one started are stale
_PROCESS_START = time.time()


#: what a training checkpoint from before the checksum holds (loaded with a warning)
LEGACY_KEYS = ("step", "config", "model", "ema")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, empty, foreign, or non-finite."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without a checksum (written before sdekit added it) was loaded unverified."""


def state_digest(state: Any) -> str:
    """The SHA-256 digest of ``state``: tensors (dtype, shape, bytes), numbers, strings, ``None``
    and lists, tuples and dicts of them, in order (raises ``TypeError`` for anything else)."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__} {len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    elif obj is None or isinstance(obj, bool | int | float | str | bytes):
        h.update(f"{type(obj).__name__} {obj!r};".encode())
    else:
        raise TypeError(
            "a checkpoint holds tensors, numbers, strings, None and lists, tuples and dicts of "
            f"them; got a {type(obj).__name__}"
        )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` and its checksum to ``path`` atomically (see the module docs)."""
    path = Path(path)
    if CHECKSUM_KEY in state:
        raise ValueError(f"state must not hold the key {CHECKSUM_KEY!r}: it is the checksum's")
    payload = {**state, CHECKSUM_KEY: state_digest(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # make the rename itself durable: fsync the directory entry (not possible on every platform)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`, tensors mapped to
    ``map_location``.

    Raises ``FileNotFoundError`` when ``path`` does not exist and :class:`CheckpointError` (a
    ``ValueError``) naming the file when it is a directory, empty, unreadable (truncated,
    corrupt, not a torch file), not an sdekit checkpoint, or fails its checksum. A training
    checkpoint from before checksums loads with an :class:`UnverifiedCheckpointWarning`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint must be an existing file, {path} does not exist")
    if path.is_dir():
        inside = path / "checkpoint.pt"
        hint = f": pass the file inside it, {inside}" if inside.is_file() else ""
        raise CheckpointError(f"checkpoint must be a file, {path} is a directory{hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it holds no checkpoint")
    try:
        # verified on the CPU, then moved: the digest reads every byte anyway
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated, corrupt, or not a torch file): "
            f"{type(e).__name__}: {reason}"
        ) from e
    if (
        isinstance(state, dict)
        and CHECKSUM_KEY not in state
        and all(k in state for k in LEGACY_KEYS)
    ):
        warnings.warn(
            f"checkpoint {path} has no SHA-256 checksum (it was written by an sdekit from before "
            "checksums): loaded unverified; a damaged file would go unnoticed. Resuming the run "
            "writes a verified checkpoint",
            UnverifiedCheckpointWarning,
            stacklevel=2,
        )
        return _to_device(state, torch.device(map_location))
    if not isinstance(state, dict) or not isinstance(state.get(CHECKSUM_KEY), str):
        raise CheckpointError(
            f"{path} is not an sdekit checkpoint: it holds no {CHECKSUM_KEY} checksum (files "
            "written by sdekit.checkpoint.save_checkpoint do)"
        )
    stored = state.pop(CHECKSUM_KEY)
    try:
        actual = state_digest(state)
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path} holds an unexpected value: {e}") from e
    if actual != stored:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its contents do not match its SHA-256 checksum "
            f"(stored {stored[:12]}..., computed {actual[:12]}...); restore a copy, or delete it "
            "to start the run afresh"
        )
    if torch.device(map_location).type != "cpu":
        state = _to_device(state, torch.device(map_location))
    return state


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict | list):  # in place: a state dict keeps its _metadata
        for key in obj.keys() if isinstance(obj, dict) else range(len(obj)):
            obj[key] = _to_device(obj[key], device)
        return obj
    if isinstance(obj, tuple):
        return tuple(_to_device(value, device) for value in obj)
    return obj


def require_keys(state: dict[str, Any], keys: Iterable[str], path: str | Path) -> None:
    """``state`` (read from ``path``) must hold ``keys``: :class:`CheckpointError` naming the
    missing ones otherwise (a checkpoint of another kind of run)."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing}: it was not written by this kind of run"
        )


def check_finite_parameters(module: nn.Module, what: str, path: str | Path) -> None:
    """Every floating-point parameter of ``module`` (the ``what`` weights loaded from ``path``)
    must be finite: :class:`CheckpointError` naming the first bad tensor otherwise."""
    named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return
    finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()  # one host sync
    bad = [n for (n, _), ok in zip(named, finite, strict=True) if not ok]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: the {what} weights hold NaN or inf in {len(bad)} of "
            f"{len(named)} tensors (first: {bad[0]!r}); the run had diverged when it was "
            "written: resume from an earlier copy, or train again (e.g. with a lower lr)"
        )


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`save_checkpoint` of ``path`` left when killed
    mid-write: only names ``.<name>.XXXXXXXX.tmp`` beside ``path``, and only those last modified
    before this process started (a live writer's file is newer). Returns the removed paths."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    removed = []
    for tmp in path.parent.iterdir():
        if not pattern.fullmatch(tmp.name):
            continue
        try:
            if tmp.is_file() and tmp.stat().st_mtime < _PROCESS_START:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another process removed it first
            continue
    return removed


def rng_state() -> dict[str, Any]:
    """The states of torch's CPU and CUDA generators, NumPy's and Python's, as loadable data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": (version, list(internal), gauss_next),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
