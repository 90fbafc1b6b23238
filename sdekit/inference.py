r"""Sampling a trained network: :func:`load_model` rebuilds it from a checkpoint as a
:class:`TrainedModel`, :func:`sample_from` draws from it.

A class-conditional network draws the classes :math:`0, 1, \dots, K - 1` in turn, or one class
``label``; the labels go to :func:`sdekit.sample` as its ``cond``. Large draws run in batches
(:meth:`TrainedModel.sample_batched`) with one generator per sample, seeded by
``(seed, 5, i)`` for sample :math:`i` (:func:`sdekit.seeding.sample_generators`): sample :math:`i`
is the same whatever the batch size, up to floating-point round-off in the network's batched
arithmetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .builders import build_model, build_sde, sample_prediction
from .checkpoint import check_finite_parameters, load_checkpoint, require_keys
from .conditioning import Cond
from .config import TrainConfig
from .linear import LinearSDE
from .seeding import sample_generators

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
    prediction: str,
    num_classes: int | None = None,
    label: int | None = None,
    cond: Cond = None,
    method: str = "dpmpp_2m",
    steps: int = 20,
    generator: Generator = None,
) -> torch.Tensor:
    """Samples of a trained model with :func:`sdekit.sampling.sample`, without gradients.

    A class-conditional model (``num_classes`` given) draws class ``label``, or the classes
    ``0, 1, ..., K-1`` in turn; any other condition is passed as ``cond`` (per sample).
    """
    from .sampling import sample

    device = next(model.parameters()).device
    labels = class_condition(shape[0], num_classes, label, device)
    if labels is not None and cond is not None:
        raise ValueError("pass either cond or the class labels (num_classes, label), not both")
    with torch.no_grad():
        x, _ = sample(
            model, sde, shape, method=method, steps=steps, prediction=prediction,
            generator=generator, cond=labels if cond is None else cond, device=device,
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
    ) -> torch.Tensor:
        """``n`` samples in one batch with :func:`sample_from`."""
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
    ) -> torch.Tensor:
        """``n`` samples drawn ``batch_size`` at a time, gathered on the CPU; sample ``i`` has its
        own generator (see the module docs), so the result does not depend on ``batch_size``."""
        for name, value in (("n", n), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        device = next(self.model.parameters()).device
        class_condition(1, self.num_classes, label, device)  # check label before any work
        parts = []
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            x = sample_from(
                self.model,
                self.sde,
                (stop - start, *self.data_shape),
                prediction=sample_prediction(self.config),
                cond=class_condition(stop - start, self.num_classes, label, device, start),
                method=method,
                steps=steps,
                generator=sample_generators(seed, range(start, stop), device),
            )
            parts.append(x.cpu())
        return torch.cat(parts)


def load_model(
    path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> TrainedModel:
    """The trained network of a checkpoint (the EMA weights by default) in eval mode, with its
    SDE, config, data shape and number of classes (``None`` if unconditional).

    The checkpoint is verified (see :func:`sdekit.checkpoint.load_checkpoint`) and its weights
    must be finite.
    """
    state = load_checkpoint(path, map_location=device)
    require_keys(state, ("config", "data_shape", "num_classes", "model", "ema"), path)
    config = TrainConfig.from_dict(state["config"])
    sde = build_sde(config)
    shape = tuple(state["data_shape"])
    model = build_model(config, shape, state["num_classes"], sde)
    model.load_state_dict(state["ema"]["module"] if ema else state["model"])
    check_finite_parameters(model, "EMA" if ema else "model", path)
    return TrainedModel(model.to(device).eval(), sde, config, shape, state["num_classes"])
