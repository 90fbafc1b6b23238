r"""Sampling a trained network: :func:`load_model` rebuilds it from a checkpoint as a
:class:`TrainedModel`, :func:`sample_from` draws from it, :func:`export_model` writes it as a
model directory.

The set-up. A checkpoint holds the configs (:mod:`sdekit.configurable`) of its SDE and network
(:func:`describe_setup`), so :func:`load_model` rebuilds any SDE, a user's own included (its class
is imported by its path), and any network that describes itself: the built-in ones, and a user's
network that derives from :class:`~sdekit.configurable.Configurable` or has ``to_config()``. A
network that does not is saved by its weights only; :func:`load_model` then asks for it
(``model=``), and likewise ``sde=`` for an SDE whose class cannot be imported where the checkpoint
is loaded. Checkpoints written before set-ups were recorded rebuild their SDE and network from
their :class:`~sdekit.config.TrainConfig` as before.

A class-conditional network draws the classes :math:`0, 1, \dots, K - 1` in turn, or one class
``label``; the labels go to :func:`sdekit.sample` as its ``cond``. Large draws run in batches
(:meth:`TrainedModel.sample_batched`) with one generator per sample, seeded by
``(seed, 5, i)`` for sample :math:`i` (:func:`sdekit.seeding.sample_generators`): sample :math:`i`
is the same whatever the batch size, up to floating-point round-off in the network's batched
arithmetic.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .builders import build_model, build_sde, sample_prediction
from .checkpoint import CheckpointError, check_finite_parameters, load_checkpoint, require_keys
from .checks import check_choice
from .conditioning import Cond
from .config import SAMPLE_THRESHOLDS, TrainConfig
from .configurable import ConfigError, class_path, from_config, import_class, to_config
from .linear import LinearSDE
from .parameterization import Prediction
from .seeding import sample_generators
from .thresholding import thresholded

Generator = torch.Generator | list[torch.Generator] | None


def class_condition(
    n: int, num_classes: int | None, label: int | None, device: torch.device | str, offset: int = 0
) -> torch.Tensor | None:
    """The labels of samples ``offset, ..., offset + n - 1`` of a class-conditional network:
    ``label`` for all, or the classes in turn (:math:`i \\bmod K`); ``None`` when unconditional."""
    if num_classes is None:
        if label is not None:
            raise ValueError("label needs a class-conditional model")
        return None
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
            raise ValueError(f"label must be an integer in [0, {num_classes}), got {label!r}")
        return torch.full((n,), label, device=device)
    return torch.arange(offset, offset + n, device=device) % num_classes


def sample_from(
    model: nn.Module,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    prediction: Prediction,
    num_classes: int | None = None,
    label: int | None = None,
    cond: Cond = None,
    method: str = "dpmpp_2m",
    steps: int = 20,
    generator: Generator = None,
    threshold: str = "none",
) -> torch.Tensor:
    r"""Samples of a trained model with :func:`sdekit.sampling.sample`, without gradients.

    A class-conditional model (``num_classes`` given) draws class ``label``, or the classes
    ``0, 1, ..., K-1`` in turn; any other condition is passed as ``cond`` (per sample).
    ``threshold`` ``"clip"`` or ``"dynamic"`` bounds :math:`\hat x_0` to :math:`[-1, 1]` at every
    model call (:func:`sdekit.thresholding.thresholded`) and ends with the denoising step, so the
    samples are the last bounded estimate; ``"none"`` leaves the model as it is.
    """
    from .sampling import sample

    check_choice("threshold", threshold, SAMPLE_THRESHOLDS)
    device = next(model.parameters()).device
    labels = class_condition(shape[0], num_classes, label, device)
    if labels is not None and cond is not None:
        raise ValueError("pass either cond or the class labels (num_classes, label), not both")
    bounded = threshold != "none"
    if bounded:
        model = thresholded(model, sde, prediction, method=threshold)
    with torch.no_grad():
        x, _ = sample(
            model, sde, shape, method=method, steps=steps, prediction=prediction,
            generator=generator, cond=labels if cond is None else cond, device=device,
            denoise_final=True if bounded else None,
        )  # fmt: skip
    return x


class TrainedModel(NamedTuple):
    """A trained network and what is needed to sample from it (see :func:`load_model`)."""

    model: nn.Module
    sde: LinearSDE
    config: TrainConfig
    data_shape: tuple[int, ...]
    num_classes: int | None

    def sample(
        self,
        n: int,
        *,
        method: str = "dpmpp_2m",
        steps: int = 20,
        label: int | None = None,
        generator: Generator = None,
        threshold: str | None = None,
    ) -> torch.Tensor:
        """``n`` samples in one batch with :func:`sample_from` (``threshold``: default the run's
        ``sample_threshold``)."""
        return sample_from(
            self.model,
            self.sde,
            (n, *self.data_shape),
            prediction=sample_prediction(self.config),
            num_classes=self.num_classes,
            label=label,
            method=method,
            steps=steps,
            generator=generator,
            threshold=threshold or self.config.sample_threshold,
        )

    def sample_batched(
        self,
        n: int,
        *,
        batch_size: int = 256,
        seed: int = 0,
        method: str = "dpmpp_2m",
        steps: int = 20,
        label: int | None = None,
        start: int = 0,
        threshold: str | None = None,
    ) -> torch.Tensor:
        """Samples ``start, ..., start + n - 1`` drawn ``batch_size`` at a time, gathered on the
        CPU; sample ``i`` has its own generator (see the module docs), so the result does not
        depend on ``batch_size`` (nor on ``start``: a draw may be split into parts).
        ``threshold``: see :func:`sample_from` (default: the run's ``sample_threshold``)."""
        for name, value, low in (("n", n, 1), ("batch_size", batch_size, 1), ("start", start, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        device = next(self.model.parameters()).device
        class_condition(1, self.num_classes, label, device)  # check label before any work
        parts = []
        for first in range(start, start + n, batch_size):
            stop = min(start + n, first + batch_size)
            x = sample_from(
                self.model,
                self.sde,
                (stop - first, *self.data_shape),
                prediction=sample_prediction(self.config),
                cond=class_condition(stop - first, self.num_classes, label, device, first),
                method=method,
                steps=steps,
                generator=sample_generators(seed, range(first, stop), device),
                threshold=threshold or self.config.sample_threshold,
            )
            parts.append(x.cpu())
        return torch.cat(parts)


def describe_setup(sde: LinearSDE, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records of a run's set-up: ``{"sde": config, "sde_class": path,
    "model": config, "model_class": path}``; a config is ``None`` (with a warning saying what
    :func:`load_model` will then need) where the object cannot describe itself, and a class that
    only the script that defined it can import is warned about."""
    setup: dict[str, Any] = {}
    for key, obj, what, arg in (("sde", sde, "SDE", "sde"), ("model", model, "network", "model")):
        path = class_path(type(obj))
        setup[f"{key}_class"] = path
        try:
            setup[key] = to_config(obj, what)
        except ConfigError as error:
            setup[key] = None
            warnings.warn(
                f"{error}. The checkpoint holds the {what} without its config: "
                f"load_model(path, {arg}=...) will need the {what}",
                stacklevel=3,
            )
            continue
        if path.startswith("__main__.") or "<locals>" in path:
            warnings.warn(
                f"the {what} class {path!r} is defined in the running script or inside a function, "
                "so only this script can rebuild it from the checkpoint: define it in a module "
                f"(importable where you load the model), or pass load_model(path, {arg}=...)",
                stacklevel=3,
            )
    return setup


def _arguments(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "class"}, sort_keys=True)


def _rebuild(
    setup: dict | None, key: str, given: Any, base: type, what: str, path: Path, fallback
) -> Any:
    """The checkpoint's SDE or network: ``given`` (checked against the recorded config where it
    describes itself), else rebuilt from the config, else (no set-up recorded) ``fallback()``."""
    arg = "sde" if key == "sde" else "model"
    if given is not None:
        if not isinstance(given, base):
            raise ValueError(f"{arg} must be a {base.__name__}, got {type(given).__name__}")
        recorded = setup.get(key) if setup else None
        if recorded is not None and callable(getattr(given, "to_config", None)):
            # the arguments must agree; the class path may differ (a module renamed since)
            ours = to_config(given, what)
            if _arguments(ours) != _arguments(recorded):
                raise ValueError(
                    f"{arg} is not the {what} of checkpoint {path}: it is {json.dumps(ours)}, the "
                    f"checkpoint's is {json.dumps(recorded)}"
                )
        return given
    if setup is None:
        return fallback()
    if setup.get(key) is None:
        raise CheckpointError(
            f"checkpoint {path} holds no config of its {what} (a {setup.get(f'{key}_class')} that "
            f"could not describe itself when it was trained): build it and pass "
            f"load_model(path, {arg}=...)"
        )
    try:
        return from_config(setup[key], base, f"the checkpoint's {what}")
    except ConfigError as error:
        raise ConfigError(
            f"checkpoint {path}: {error} (or pass load_model(path, {arg}=...))"
        ) from error


def load_model(
    path: str | Path,
    *,
    ema: bool = True,
    device: str | torch.device = "cpu",
    sde: LinearSDE | None = None,
    model: nn.Module | None = None,
) -> TrainedModel:
    """The trained network of a checkpoint (the EMA weights by default) in eval mode, with its
    SDE, config, data shape and number of classes (``None`` if unconditional).

    The SDE and network are rebuilt from the configs the checkpoint records (see the module):
    ``sde`` and ``model`` replace them, for a class that cannot be imported here or a network
    saved without its config (the weights are loaded into ``model``). ``path`` may also be a
    directory written by :func:`export_model`.

    The checkpoint is verified (see :func:`sdekit.checkpoint.load_checkpoint`) and its weights
    must be finite.
    """
    path = Path(path)
    if path.is_dir() and (path / "diffusion_pytorch_model.safetensors").is_file():
        return _load_exported(path, device, sde, model)
    state = load_checkpoint(path, map_location=device)
    if "control" in state:
        raise CheckpointError(
            f"{path} is a ControlNet checkpoint (a control branch of the base "
            f"{state['control']['base']}): load it with sdekit.control.load_controlled, or sample "
            "it with sample --hint-from IMAGES"
        )
    if "kind" in state:  # e.g. a noise-conditional classifier's (sdekit.classifier)
        raise CheckpointError(
            f"{path} is the checkpoint of a {state['kind']}, not of a score network"
        )
    require_keys(state, ("config", "data_shape", "num_classes", "model", "ema"), path)
    config = TrainConfig.from_dict(state["config"])
    shape = tuple(state["data_shape"])
    setup = state.get("setup")  # absent in checkpoints from before set-ups were recorded
    sde = _rebuild(setup, "sde", sde, LinearSDE, "SDE", path, lambda: build_sde(config))
    model = _rebuild(
        setup, "model", model, nn.Module, "network", path,
        lambda: build_model(config, shape, state["num_classes"], sde),
    )  # fmt: skip
    model.load_state_dict(state["ema"]["module"] if ema else state["model"])
    check_finite_parameters(model, "EMA" if ema else "model", path)
    return TrainedModel(model.to(device).eval(), sde, config, shape, state["num_classes"])


def export_model(trained: TrainedModel, directory: str | Path) -> Path:
    """Write ``trained`` (e.g. ``load_model(checkpoint)``, the EMA weights) as a model directory
    with :func:`sdekit.interop.save_pretrained`: ``config.json`` (the network's config, its
    prediction, and under ``_sdekit_setup`` the SDE's config, the run's config, the data shape
    and the number of classes) and ``diffusion_pytorch_model.safetensors``.

    :func:`load_model` reads the directory back; :func:`sdekit.interop.load_pretrained` reads the
    network alone.
    """
    from .interop.export import save_pretrained

    setup = {
        "sde": to_config(trained.sde, "SDE"),
        "config": trained.config.to_dict(),
        "data_shape": list(trained.data_shape),
        "num_classes": trained.num_classes,
    }
    return save_pretrained(
        trained.model, directory, prediction=sample_prediction(trained.config), setup=setup
    )


def _load_exported(
    directory: Path, device: str | torch.device, sde: LinearSDE | None, model: nn.Module | None
) -> TrainedModel:
    from .interop.export import load_pretrained, load_weights

    stored = json.loads((directory / "config.json").read_text())
    setup = stored.get("_sdekit_setup")
    if not isinstance(setup, dict):
        raise ValueError(
            f"{directory} is a model directory without a training set-up (_sdekit_setup): load "
            "the network with sdekit.interop.load_pretrained"
        )
    sde = _rebuild(setup, "sde", sde, LinearSDE, "SDE", directory, None)
    if model is None:
        path = f"{stored.get('_sdekit_module')}.{stored.get('_class_name')}"
        model, _ = load_pretrained(directory, cls=import_class(path, "the network class"))
    else:
        load_weights(model, directory)
    config = TrainConfig.from_dict(setup["config"])
    shape = tuple(setup["data_shape"])
    check_finite_parameters(model, "exported", directory)
    return TrainedModel(model.to(device).eval(), sde, config, shape, setup["num_classes"])
