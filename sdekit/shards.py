r"""Work cut into shards of consecutive items, spread over processes, verified and resumable.

The engine under :mod:`sdekit.sharded` (which says what the files hold and how a run resumes):
:func:`run_shards` plans, deals, computes and records the shards of one job, :func:`load_shards`
reads a finished run back. Process :math:`r` of :math:`W` computes the pending shards
:math:`r, r + W, \dots` of the pending list; process 0 alone reads and writes the manifest, and
every decision it takes (which shards are done, or an error) reaches the others through one
collective, so that no process waits on one that has stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from .distributed import all_gather_objects

MANIFEST_NAME = "manifest.json"
FORMAT = "sdekit-shards/1"
# settings that may differ between a run and its resume (where a file is, not what is in it)
_INFORMATIONAL = ("checkpoint",)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings_digest(settings: dict) -> str:
    """The SHA-256 of ``settings`` as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def positive_int(name: str, value: Any) -> int:
    """``value`` must be an integer >= 1 (``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def shard_ranges(n: int, shard_size: int) -> list[range]:
    """The index ranges of the shards: ``[0, S), [S, 2S), ..., [.., n)``."""
    positive_int("n", n)
    positive_int("shard_size", shard_size)
    return [range(a, min(n, a + shard_size)) for a in range(0, n, shard_size)]


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_shard(path: Path) -> dict[str, np.ndarray]:
    """Every array of a shard file."""
    # reading every array to its end makes zipfile check its CRC-32
    with np.load(path, allow_pickle=False) as z:
        return {key: z[key] for key in z.files}


def shard_name(k: int) -> str:
    """The file name of shard ``k``."""
    return f"shard_{k:05d}.npz"


def _verify(path: Path, r: range, digest: str, sha: str | None, check) -> str | None:
    """Why the shard file at ``path`` is not a complete result (``None`` if it is)."""
    try:
        arrays = read_shard(path)
    except Exception as error:  # a damaged zip raises any of several types
        return f"unreadable ({type(error).__name__}: {error})"
    if str(arrays.get("settings_sha256")) != digest:
        return "written with other settings"
    if not np.array_equal(arrays.get("indices"), np.arange(r.start, r.stop)):
        return f"does not hold items {r.start}..{r.stop - 1}"
    reason = check(arrays, len(r))
    if reason is None and sha is not None and file_sha256(path) != sha:
        reason = "its SHA-256 differs from the manifest's"
    return reason


def _prepare(directory: Path, kind: str, settings: dict, shards: list[range], check, source):
    """(rank 0) Check the directory against ``settings``; ``(done, pending, notes)``."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"out_dir must be a directory, {directory} is a file")
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST_NAME
    recorded: dict[int, str] = {}
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError as error:
            raise ValueError(f"{manifest_path} is not valid JSON ({error}): remove it") from None
        if old.get("format") != FORMAT or old.get("kind") != kind:
            raise ValueError(
                f"{directory} holds a {old.get('kind')!r} run of format {old.get('format')!r}, "
                f"not {kind!r}: choose another out_dir"
            )
        theirs = old.get("settings", {})
        diffs = sorted(
            k
            for k in set(settings) | set(theirs)
            if k not in _INFORMATIONAL and settings.get(k) != theirs.get(k)
        )
        if diffs:
            shown = ", ".join(
                f"{k}: {theirs.get(k)!r} there, {settings.get(k)!r} now" for k in diffs
            )
            raise ValueError(
                f"{directory} holds a run with other settings ({shown}): resume it with the same "
                "settings, or choose another out_dir"
            )
        recorded = {e["index"]: e["sha256"] for e in old.get("shards", []) if e.get("sha256")}
    digest = settings_digest(settings)
    done, pending, notes = {}, [], []
    for k, r in enumerate(shards):
        path = directory / shard_name(k)
        if not path.exists():
            pending.append(k)
            continue
        reason = _verify(path, r, digest, recorded.get(k), check)
        if reason is None:
            done[k] = {"sha256": file_sha256(path), "rank": None, "device": None, "seconds": None}
        else:
            pending.append(k)
            notes.append(f"{path.name} is {reason}: computing it again")
    _write_json(manifest_path, _manifest(kind, settings, source, shards, done))
    return done, pending, notes


def _manifest(kind, settings, source, shards, done, summary=None) -> dict:
    entries = []
    for k, r in enumerate(shards):
        info = done.get(k, {})
        entries.append(
            {"index": k, "file": shard_name(k), "start": r.start, "stop": r.stop,
             "sha256": info.get("sha256"), "rank": info.get("rank"),
             "device": info.get("device"), "seconds": info.get("seconds")}
        )  # fmt: skip
    out = {
        "format": FORMAT,
        "kind": kind,
        "settings": settings,
        "source": source,
        "shards": entries,
        "complete": len(done) == len(shards),
    }
    if summary is not None:
        out["summary"] = summary
    return out


def run_shards(
    directory: str | Path,
    *,
    kind: str,
    settings: dict,
    n: int,
    shard_size: int,
    compute: Callable[[range], dict[str, np.ndarray]],
    check: Callable[[dict[str, np.ndarray], int], str | None],
    summarize: Callable[[Path, list[dict]], dict] | None = None,
    source: dict | None = None,
    device: str = "cpu",
    log=None,
) -> dict:
    """The shared engine of :func:`sample_shards` and :func:`likelihood_shards` (see the module).

    ``compute(r)`` returns the arrays of the items in range ``r``; ``check(arrays, m)`` says why
    a shard's arrays are not a result of ``m`` items (``None`` if they are). Collective under a
    process group: every process calls it with the same arguments. Returns the final manifest.
    """
    log = sys.stderr if log is None else log
    directory = Path(directory)
    rank, world = _rank_world()
    shards = shard_ranges(n, shard_size)
    if world > len(shards):
        raise ValueError(
            f"{world} processes for {len(shards)} shard(s) ({n} items in shards of {shard_size}): "
            f"some would have nothing to do; use at most {len(shards)} processes, or a "
            f"shard_size of at most {max(1, n // world)}"
        )
    source = {**(source or {}), "world_size": world}
    plan: Any = None
    if rank == 0:
        try:
            plan = _prepare(directory, kind, settings, shards, check, source)
        except Exception as error:  # raised on every process, not only here (no one waits)
            plan = f"{type(error).__name__}: {error}"
    plan = all_gather_objects(plan)[0]
    if isinstance(plan, str):  # every process raises process 0's error
        raise ValueError(plan.split(": ", 1)[1])
    done, pending, notes = plan
    if rank == 0:
        for note in notes:
            print(f"sdekit {kind}: {note}", file=log, flush=True)
        if done:
            print(
                f"sdekit {kind}: {len(done)} of {len(shards)} shards already complete in "
                f"{directory}, {len(pending)} to compute",
                file=log,
                flush=True,
            )
    digest = settings_digest(settings)
    mine = pending[rank::world]
    finished: dict[int, dict] = {}
    for j, k in enumerate(mine):
        r = shards[k]
        start = time.perf_counter()
        arrays = compute(r)
        arrays = {
            "indices": np.arange(r.start, r.stop, dtype=np.int64),
            "settings_sha256": np.array(digest),
            **arrays,
        }
        reason = check(arrays, len(r))
        if reason is not None:
            raise RuntimeError(f"shard {k} computed arrays that are {reason}")
        path = directory / shard_name(k)
        _write_shard(path, arrays)
        seconds = time.perf_counter() - start
        finished[k] = {"sha256": file_sha256(path), "rank": rank, "device": device,
                       "seconds": round(seconds, 3)}  # fmt: skip
        print(
            f"sdekit {kind}: shard {k + 1}/{len(shards)} (items {r.start}..{r.stop - 1}) done "
            f"by process {rank} in {seconds:.1f} s ({len(r) / seconds:.1f} items/s); "
            f"{j + 1}/{len(mine)} of this process's shards",
            file=log,
            flush=True,
        )
    for part in all_gather_objects(finished):
        done.update(part)
    manifest = None
    if rank == 0:
        summary = summarize(directory, shards) if summarize is not None else None
        manifest = _manifest(kind, settings, source, shards, done, summary)
        _write_json(directory / MANIFEST_NAME, manifest)
    return all_gather_objects(manifest)[0]


def load_shards(directory: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a complete sharded run, concatenated in index order (``indices``,
    ``samples`` / ``labels`` or ``log_likelihood`` / ``bits_per_dim``); each shard file is
    checked against the SHA-256 in the manifest."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {MANIFEST_NAME}: not a sharded run")
    manifest = json.loads(path.read_text())
    if not manifest.get("complete"):
        missing = [e["file"] for e in manifest["shards"] if not e.get("sha256")]
        raise ValueError(
            f"{directory} is not complete ({len(missing)} shard(s) missing, e.g. {missing[0]}): "
            "run the same command again to finish it"
        )
    parts: dict[str, list[np.ndarray]] = {}
    for entry in manifest["shards"]:
        shard = directory / entry["file"]
        if not shard.is_file() or file_sha256(shard) != entry["sha256"]:
            raise ValueError(
                f"{shard} is missing or differs from the manifest's SHA-256: run the same "
                "command again to compute it afresh"
            )
        for key, value in read_shard(shard).items():
            if key != "settings_sha256":
                parts.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in parts.items()}
