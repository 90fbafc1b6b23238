"""A network as a diffusers-style model directory: ``config.json`` and safetensors weights.

The layout is diffusers' ``save_pretrained`` (no hub, no pickle)::

    directory/
        config.json                           {"_class_name": ..., "_sdekit_module": ...,
                                               "_sdekit_version": ..., "prediction": ..., **init kwargs}
        diffusion_pytorch_model.safetensors   the state dict (shared tensors stored once)

:func:`load_pretrained` rebuilds the class from its keyword arguments and loads the weights
strictly. Each file is written to a temporary name and moved into place, so an interrupted save
never leaves a half-written file; a config and weights that do not fit raise on loading.
safetensors is an optional dependency (``pip install sdekit[interop]``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..configurable import ConfigError
from ..parameterization import Prediction, check_prediction

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as error:
        raise ImportError(
            "saving and loading model directories needs safetensors: pip install 'sdekit[interop]' "
            "(or pip install safetensors)"
        ) from error
    return safetensors.torch


def _init_kwargs(net: nn.Module, config: Mapping | None) -> dict:
    if config is None:
        to_config = getattr(net, "to_config", None)
        if not callable(to_config):
            params = list(inspect.signature(type(net).__init__).parameters)[1:]
            raise ValueError(
                f"config must be given for {type(net).__name__}: the keyword arguments that rebuild "
                f"it, {type(net).__name__}(**config) (its parameters: {', '.join(params)})"
            )
        config = to_config()
    config = dict(config)
    path = f"{type(net).__module__}.{type(net).__qualname__}"
    if config.pop("class", path) != path:  # sdekit's configs name the class (sdekit.configurable)
        raise ValueError(f"config names another class than the network's, {path}")
    for key, value in config.items():
        if key.startswith("_"):
            raise ValueError(f"config keys must not start with '_' (reserved), got {key!r}")
        try:
            json.dumps(value)
        except TypeError as error:
            raise ValueError(
                f"config[{key!r}] must be JSON data (numbers, strings, lists, dicts), got "
                f"{type(value).__name__}"
            ) from error
    return config


def _build(cls: type, kwargs: dict) -> nn.Module:
    """``cls.from_config(kwargs)`` where the class has it (nested configs, e.g. EDMPrecond's network
    and SDE), else ``cls(**kwargs)``."""
    if callable(getattr(cls, "from_config", None)):
        return cls.from_config(kwargs)
    return cls(**kwargs)


def _check_rebuilds(net: nn.Module, kwargs: dict) -> None:
    """The rebuilt network (built on the meta device) must have ``net``'s tensors and shapes."""
    cls = type(net)
    try:
        with torch.device("meta"):
            clone = _build(cls, kwargs)
    except (TypeError, ConfigError) as error:
        raise ValueError(f"config does not rebuild {cls.__name__}: {error}") from error
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in clone.state_dict().items()}
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()))[:4]
        raise ValueError(
            f"config does not rebuild this {cls.__name__}: {cls.__name__}(**config) has other "
            f"tensors or shapes, e.g. {diff}"
        )


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_pretrained(
    net: nn.Module,
    directory: str | os.PathLike,
    *,
    config: Mapping | None = None,
    prediction: Prediction | None = None,
    setup: Mapping | None = None,
) -> Path:
    """Write ``net`` as a model directory (see the module); returns its path.

    Args:
        net: the network, e.g. :class:`~sdekit.networks.UNet` (its EMA copy for sampling).
        directory: created if missing; its ``config.json`` and weights are replaced.
        config: the keyword arguments that rebuild ``net`` (``type(net)(**config)``); default
            ``net.to_config()`` where the class has it. Checked to rebuild the same tensors.
        prediction: what the network predicts (``"score"``, ``"eps"``, ``"x0"``, ``"v"``), stored
            for :func:`load_pretrained`'s caller.
        setup: JSON data stored as ``_sdekit_setup`` beside the network's config: what else
            rebuilds the model's use (:func:`sdekit.inference.export_model` stores the SDE's
            config, the training config, the data shape and the number of classes).
    """
    st = _safetensors()
    if not isinstance(net, nn.Module):
        raise ValueError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    kwargs = _init_kwargs(net, config)
    _check_rebuilds(net, kwargs)
    from .. import __version__

    header = {
        "_class_name": type(net).__name__,
        "_sdekit_module": type(net).__module__,
        "_sdekit_version": __version__,
    }
    if prediction is not None:
        header["prediction"] = check_prediction(prediction)
    if setup is not None:
        try:
            header["_sdekit_setup"] = json.loads(json.dumps(dict(setup), allow_nan=False))
        except (TypeError, ValueError) as error:
            raise ValueError(f"setup must be JSON data: {error}") from error
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        directory / WEIGHTS_NAME, lambda p: st.save_model(net, str(p), metadata={"format": "pt"})
    )
    text = json.dumps({**header, **kwargs}, indent=2, sort_keys=False) + "\n"
    _write_atomic(directory / CONFIG_NAME, lambda p: p.write_text(text))
    return directory


def _resolve_class(config: dict, cls: type | None) -> type:
    name, module = config.get("_class_name"), config.get("_sdekit_module")
    if cls is not None:
        if cls.__name__ != name:
            raise ValueError(f"cls is {cls.__name__} but the directory holds a {name}")
        return cls
    if not isinstance(module, str) or not (module == "sdekit" or module.startswith("sdekit.")):
        raise ValueError(
            f"the directory holds a {name} from module {module!r}: pass cls={name} (only sdekit's "
            "own classes are imported by name)"
        )
    found = getattr(importlib.import_module(module), str(name), None)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"{module}.{name} is not an nn.Module class")
    return found


def load_weights(net: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load the weights of a model directory into ``net`` (strictly: every tensor, same shapes)."""
    st = _safetensors()
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}: not a saved model directory")
    st.load_model(net, str(weights), strict=True)
    return net


def load_pretrained(
    directory: str | os.PathLike, *, cls: type | None = None, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the network saved by :func:`save_pretrained`: ``(net, config)``.

    ``config`` is the stored ``config.json`` (``config.get("prediction")`` says what the network
    predicts). ``cls`` is needed for a class outside sdekit (say, your own network). The network is
    returned in eval mode on ``device``.
    """
    st = _safetensors()
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name}: not a saved model directory")
    config = json.loads((directory / CONFIG_NAME).read_text())
    cls = _resolve_class(config, cls)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_") and k != "prediction"}
    net = _build(cls, kwargs)
    st.load_model(net, str(directory / WEIGHTS_NAME), strict=True)
    return net.to(device).eval(), config
