r"""Sampling and likelihoods at scale: work cut into shards, spread over processes, resumable.

``torchrun --nproc_per_node W -m sdekit sample --n 50000 --out-dir samples/ ...`` (or
:func:`sample_shards`) and ``... -m sdekit likelihood`` (:func:`likelihood_shards`) cut the
:math:`n` items into shards of ``shard_size`` consecutive indices (the last one may be shorter)
and deal the shards that are not yet done to the :math:`W` processes in turn (shard :math:`k`
of the pending list to process :math:`k \bmod W`), so any :math:`n` and :math:`W` work; only
more processes than shards is refused, as a mistake.

The same set whatever :math:`W`. Sample :math:`i` is drawn from its own generator seeded by
``(seed, 5, i)`` (:func:`sdekit.seeding.sample_generators`) and shard :math:`k` always in the
same batches (``batch_size`` items from the shard's first index on), so its file is bitwise the
same whichever process draws it and however many there are (on the same device type and thread
count). The likelihood's per-batch randomness (Hutchinson probes) comes from ``(seed, 6, first
index of the batch)`` and its dequantization noise from ``(seed, 7, i)`` per item; its fixed grid
(``steps``) makes every batch the same work.

Files. ``shard_00000.npz`` ... hold ``indices`` (int64), the results (``samples`` float32
and, for a class-conditional model, ``labels``; or ``log_likelihood`` in nats and
``bits_per_dim``, float64) and ``settings_sha256``; each is written to a temporary name and
renamed, so a shard file is complete or absent. ``manifest.json`` holds the format, the
``settings`` (what was computed: checkpoint digest, method, steps, seed, n, shard and batch
size, ...), ``source`` (checkpoint path, sdekit version, processes) and one entry per shard
(index range, SHA-256 of the file, process, device, seconds) with ``complete`` and, for the
likelihood, a ``summary``. Process 0 writes it at the start and at the end.

Resume. A second run with the same settings skips every shard whose file is verified: it
reads back (the zip's CRC), has the settings' digest, the expected indices, shapes and finite
values, and the SHA-256 the manifest records for it, if any; anything else is computed again
(with a line saying why). A run with other settings in the same directory is refused, naming
the differences. Progress: one line per finished shard on stderr, from every process.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import check_choice
from .conditioning import select
from .inference import TrainedModel, class_condition
from .likelihood import (
    FIXED_GRID_METHODS,
    PROBES,
    Divergence,
    FixedGridMethod,
    Probe,
    log_likelihood,
)
from .sampling import get_sampler
from .seeding import derive_seed
from .shards import file_sha256, positive_int, read_shard, run_shards, settings_digest, shard_name

# ---------------------------------------------------------------------------------- sampling


def _check_samples(data_shape, with_labels):
    def check(arrays: dict, m: int) -> str | None:
        x = arrays.get("samples")
        if x is None or x.shape != (m, *data_shape) or x.dtype != np.float32:
            return f"not {m} float32 samples of shape {tuple(data_shape)}"
        if not np.isfinite(x).all():
            return "holding non-finite samples"
        if with_labels and arrays.get("labels", np.empty(0)).shape != (m,):
            return f"missing the labels of its {m} samples"
        return None

    return check


def sample_shards(
    trained: TrainedModel,
    out_dir: str | Path,
    *,
    n: int,
    shard_size: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    method: str = "dpmpp_2m",
    steps: int = 20,
    label: int | None = None,
    threshold: str | None = None,
    checkpoint: str | Path | None = None,
    ema: bool = True,
    guidance: dict[str, Any] | None = None,
    log=None,
) -> dict:
    r"""Draw ``n`` samples of ``trained`` (:func:`~sdekit.inference.load_model`) into sharded
    ``.npz`` files in ``out_dir`` with a manifest, over the processes of the current process
    group (one without it), resuming a partly finished run (see the module).

    ``checkpoint`` is the file ``trained`` came from: its SHA-256 is a setting, so a resume with
    other weights is refused. ``threshold``: the bound on :math:`\hat x_0`
    (:meth:`~sdekit.inference.TrainedModel.sample_batched`; default: the run's). ``guidance``:
    what a guided ``trained.model`` applies (:mod:`sdekit.guidance`; e.g. ``{"w": 2.0}``, or a
    classifier's path, SHA-256 and scale), recorded as a setting so that a resume with other
    guidance is refused; a classifier's file path in it is hashed like ``checkpoint``. Returns
    the manifest.
    """
    positive_int("batch_size", batch_size)
    positive_int("steps", steps)
    get_sampler(method)
    class_condition(1, trained.num_classes, label, "cpu")  # checks label
    settings = {
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "checkpoint_sha256": _source_digest(checkpoint),
        "ema": ema, "method": method, "steps": steps, "seed": seed, "n": n,
        "shard_size": shard_size, "batch_size": batch_size, "label": label,
        "threshold": threshold or trained.config.sample_threshold,
        "data_shape": list(trained.data_shape), "num_classes": trained.num_classes,
    }  # fmt: skip
    if guidance is not None:  # absent otherwise: unguided manifests stay as they were
        settings["guidance"] = dict(guidance)
        if guidance.get("classifier") is not None:
            path = Path(guidance["classifier"]).resolve()
            settings["guidance"].update(classifier=str(path), classifier_sha256=file_sha256(path))
    device = next(trained.model.parameters()).device
    with_labels = trained.num_classes is not None

    def compute(r: range) -> dict[str, np.ndarray]:
        x = trained.sample_batched(len(r), batch_size=batch_size, seed=seed, method=method,
                                   steps=steps, label=label, start=r.start,
                                   threshold=threshold)  # fmt: skip
        out = {"samples": x.float().numpy()}
        if with_labels:
            labels = class_condition(len(r), trained.num_classes, label, "cpu", r.start)
            out["labels"] = labels.numpy()
        return out

    return run_shards(
        out_dir, kind="samples", settings=settings, n=n, shard_size=shard_size, compute=compute,
        check=_check_samples(trained.data_shape, with_labels), source=_source(device),
        device=str(device), log=log,
    )  # fmt: skip


def _source_digest(checkpoint: str | Path | None) -> str | None:
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if path.is_dir():  # an exported model directory: its config and weights
        return settings_digest(
            {p.name: file_sha256(p) for p in sorted(path.iterdir()) if p.is_file()}
        )
    return file_sha256(path)


def _source(device) -> dict:
    from . import __version__

    return {"sdekit_version": __version__, "device_type": torch.device(device).type}


# ---------------------------------------------------------------------------------- likelihood


def _check_likelihood(arrays: dict, m: int) -> str | None:
    for key in ("log_likelihood", "bits_per_dim"):
        v = arrays.get(key)
        if v is None or v.shape != (m,) or v.dtype != np.float64:
            return f"missing {m} float64 values of {key}"
        if not np.isfinite(v).all():
            return f"holding non-finite {key}"
    return None


def _summarize_likelihood(directory: Path, shards: list[range]) -> dict:
    values: dict[str, list[float]] = {"log_likelihood": [], "bits_per_dim": []}
    for k in range(len(shards)):
        arrays = read_shard(directory / shard_name(k))
        for key in values:
            values[key].extend(arrays[key].tolist())
    n = len(values["log_likelihood"])
    out: dict[str, Any] = {"n": n}
    for key, v in values.items():
        mean = math.fsum(v) / n
        var = math.fsum((a - mean) ** 2 for a in v) / max(n - 1, 1)
        out[f"mean_{key}"] = mean
        out[f"sem_{key}"] = math.sqrt(var / n)  # the standard error of the mean
    return out


def likelihood_shards(
    trained: TrainedModel,
    x: torch.Tensor,
    out_dir: str | Path,
    *,
    labels: torch.Tensor | None = None,
    method: FixedGridMethod = "rk4",
    steps: int = 20,
    divergence: Divergence = "exact",
    probes: int = 1,
    probe: Probe = "rademacher",
    pixel_max: float | None = None,
    dequantize: bool = True,
    seed: int = 0,
    shard_size: int = 1000,
    batch_size: int = 256,
    data: str | None = None,
    checkpoint: str | Path | None = None,
    ema: bool = True,
    log=None,
) -> dict:
    r"""Per-item log-likelihoods of ``x`` (model range, ``(N, *data_shape)``) under ``trained``'s
    probability-flow ODE (:func:`~sdekit.likelihood.log_likelihood` on the fixed grid of ``steps``
    steps of ``method``), sharded like :func:`sample_shards`; the manifest's ``summary`` holds
    the means and their standard errors.

    ``log_likelihood`` is :math:`\log p(x)` in nats in the model range. Without ``pixel_max``,
    ``bits_per_dim`` is :math:`-\log p(x)/(D\ln 2)` there. With ``pixel_max`` :math:`m`, ``x``
    holds images on the lattice :math:`2p/m - 1` of integer pixels :math:`p \in [0, m]`
    (:func:`sdekit.data.to_model_range`); with ``dequantize`` each is moved to
    :math:`p + u`, :math:`u \sim \mathcal U[0, 1)^D` drawn from ``(seed, 7, i)``, and
    ``bits_per_dim`` is :math:`-(\log p(x) + D\log(2/m))/(D\ln 2)`, the pixels' bits per dimension,
    whose mean bounds the discrete model's from above (Theis et al. 2016; see
    :func:`sdekit.likelihood.bits_per_dim`). ``labels`` condition a class-conditional model.
    ``data`` names the data set in the settings; the data's SHA-256 is one too.
    """
    check_choice("method", method, FIXED_GRID_METHODS)
    check_choice("divergence", divergence, ("exact", "hutchinson"))
    check_choice("probe", probe, PROBES)
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor (N, *data_shape), got {got}")
    if tuple(x.shape[1:]) != tuple(trained.data_shape):
        raise ValueError(
            f"x holds examples of shape {tuple(x.shape[1:])}, the model's are "
            f"{tuple(trained.data_shape)}: evaluate the data set the model was trained on"
        )
    if (trained.num_classes is None) != (labels is None):
        raise ValueError(
            "labels must be given exactly for a class-conditional model: "
            f"num_classes={trained.num_classes}, labels {'missing' if labels is None else 'given'}"
        )
    x = x.detach().cpu()
    D = x[0].numel()
    log_det = 0.0
    if pixel_max is not None:
        pixels = (x.double() + 1) * (pixel_max / 2)
        off = (pixels - pixels.round()).abs().max()
        if not float(off) < 1e-3:
            raise ValueError(
                f"x must be images on the pixel lattice 2p/{pixel_max} - 1 for pixel_max="
                f"{pixel_max} (a value is {float(off):.3g} off it); pass pixel_max=None for "
                "continuous data"
            )
        pixels = pixels.round()
        log_det = D * math.log(2 / pixel_max)
    h = hashlib.sha256(x.numpy().tobytes())
    if labels is not None:
        h.update(labels.cpu().numpy().astype(np.int64).tobytes())
    settings = {
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "checkpoint_sha256": _source_digest(checkpoint), "ema": ema, "data": data,
        "data_sha256": h.hexdigest(), "n": x.shape[0], "method": method, "steps": steps,
        "divergence": divergence, "probes": probes, "probe": probe, "pixel_max": pixel_max,
        "dequantize": dequantize and pixel_max is not None, "seed": seed,
        "shard_size": shard_size, "batch_size": batch_size,
    }  # fmt: skip
    device = next(trained.model.parameters()).device
    from .builders import sample_prediction

    prediction = sample_prediction(trained.config)

    def batch_input(first: int, stop: int) -> torch.Tensor:
        if pixel_max is None:
            return x[first:stop].to(device)
        p = pixels[first:stop]
        if settings["dequantize"]:
            gens = [
                torch.Generator().manual_seed(derive_seed(seed, 7, i)) for i in range(first, stop)
            ]
            p = p + torch.stack([torch.rand(p.shape[1:], generator=g, dtype=p.dtype) for g in gens])
        return (p * (2 / pixel_max) - 1).to(device, x.dtype)

    def compute(r: range) -> dict[str, np.ndarray]:
        log_p = []
        for first in range(r.start, r.stop, batch_size):
            stop = min(r.stop, first + batch_size)
            cond = None if labels is None else select(labels, torch.arange(first, stop)).to(device)
            g = torch.Generator(device).manual_seed(derive_seed(seed, 6, first))
            value, _ = log_likelihood(
                trained.model, trained.sde, batch_input(first, stop), prediction=prediction,
                method=method, steps=steps, divergence=divergence, probes=probes, probe=probe,
                generator=g, cond=cond,
            )  # fmt: skip
            log_p.append(value.detach().double().cpu())
        lp = torch.cat(log_p)
        return {
            "log_likelihood": lp.numpy(),
            "bits_per_dim": (-(lp + log_det) / (D * math.log(2))).numpy(),
        }

    return run_shards(
        out_dir, kind="likelihood", settings=settings, n=x.shape[0], shard_size=shard_size,
        compute=compute, check=_check_likelihood, summarize=_summarize_likelihood,
        source=_source(device), device=str(device), log=log,
    )  # fmt: skip
