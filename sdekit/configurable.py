r"""Objects that describe themselves: ``obj.to_config()`` and ``cls.from_config(config)``.

A *config* is a plain dict of JSON data that names the object's class by its import path and holds
the arguments of its constructor::

    {"class": "sdekit.linear.VPSDE", "beta_min": 0.1, "beta_max": 20.0, "schedule": None,
     "T": 1.0, "t_min": 0.001}

Arguments that are themselves objects with a config nest (a schedule inside an SDE, a network and
an SDE inside :class:`~sdekit.networks.EDMPrecond`); tuples become lists; a tensor becomes
``{"class": "torch.Tensor", "dtype": "float64", "data": [...]}`` (exact: floats are written with
Python's round-trip ``repr``). Checkpoints store the configs of their SDE and network, so
:func:`sdekit.inference.load_model` rebuilds a run's set-up whole.

:class:`Configurable` (the base of every SDE, schedule and built-in network) records the arguments
each object was constructed with, so a subclass, a user's own SDE or network included, describes
itself without writing anything. A class may instead write its own ``to_config()`` (returning the
keyword arguments that rebuild it, with or without the ``"class"`` entry) and optionally a
``from_config(config)`` classmethod; without one it is rebuilt as ``cls(**arguments)``.

Rebuilding imports the named module, which must be importable where the config is loaded (not a
class defined in ``__main__``, the script that ran, nor inside a function), and calls only classes
that describe themselves (that have ``to_config``) and derive from the base the caller expects
(:class:`~sdekit.linear.LinearSDE` for an SDE, :class:`torch.nn.Module` for a network): a config
cannot make the loader call anything else. Every failure is a :class:`ConfigError` naming the
class path and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

#: the key of the class's import path in a config
CLASS_KEY = "class"
#: the class path that marks an encoded tensor
TENSOR_CLASS = "torch.Tensor"

T = TypeVar("T")


class ConfigError(ValueError):
    """An object that cannot be described, or a config that cannot be rebuilt."""


def class_path(cls: type) -> str:
    """The import path ``module.QualifiedName`` of ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str, what: str = "class") -> type:
    """The class at import path ``path`` (``package.module.Name``); :class:`ConfigError` naming
    the path, the reason and the fix when it cannot be imported."""
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"{what} must be named by an import path 'module.Class', got {path!r}")
    fix = (
        "make the module that defines it importable here (install it, or add its directory to "
        "PYTHONPATH), or pass the object itself to the loader"
    )
    if "<locals>" in path:
        raise ConfigError(
            f"{what} {path!r} cannot be imported: it was defined inside a function; define it at "
            "the top level of a module, or pass the object itself to the loader"
        )
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # a shorter prefix may be the module (a nested class); a missing dependency of an
            # existing module is that module's error
            if error.name is not None and module_name.startswith(error.name):
                continue
            raise ConfigError(f"{what} {path!r} cannot be imported: {error}; {fix}") from error
        for name in parts[i:]:
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, type):
            return obj
        where = (
            " (__main__ is the script being run, not the one that defined it: move the class "
            "into a module)"
            if module_name == "__main__"
            else ""
        )
        raise ConfigError(
            f"{what} {path!r} cannot be imported: module {module_name!r} has no class "
            f"{'.'.join(parts[i:])!r}{where}; {fix}"
        )
    raise ConfigError(f"{what} {path!r} cannot be imported: no module {parts[0]!r}; {fix}")


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} is {value}: a config holds finite numbers only")
        return value
    if isinstance(value, list | tuple):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor):
        if value.is_complex() or (value.is_floating_point() and not bool(value.isfinite().all())):
            raise ConfigError(f"{where} must be a finite real tensor to be stored in a config")
        data = value.detach().cpu().tolist()
        return {
            CLASS_KEY: TENSOR_CLASS,
            "dtype": str(value.dtype).removeprefix("torch."),
            "data": data,
        }
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where} has a key {key!r}: config keys must be strings")
            out[key] = _encode(v, f"{where}[{key!r}]")
        return out
    if callable(getattr(value, "to_config", None)):
        return to_config(value, where)
    raise ConfigError(
        f"{where} is a {type(value).__name__}, which a config cannot hold (it holds numbers, "
        "strings, None, lists, dicts, tensors and objects with to_config()): give "
        f"{type(value).__name__} a to_config(), or write a to_config() for the object holding it"
    )


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        if value.get(CLASS_KEY) == TENSOR_CLASS:
            try:
                dtype = getattr(torch, value["dtype"])
                # on the CPU whatever the default device (a meta-device rebuild included)
                return torch.tensor(value["data"], dtype=dtype, device="cpu")
            except (KeyError, AttributeError, TypeError) as error:
                raise ConfigError(f"{where} is not a valid encoded tensor: {error}") from None
        if CLASS_KEY in value:
            return from_config(value, what=where)
        return {key: _decode(v, f"{where}[{key!r}]") for key, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def to_config(obj: Any, what: str = "object") -> dict:
    """The config of ``obj`` (see the module): its ``to_config()`` with the class path added and
    every value checked to be JSON data. ``what`` names the object in errors."""
    method = getattr(obj, "to_config", None)
    name = type(obj).__name__
    if not callable(method):
        raise ConfigError(
            f"{what} (a {name}) cannot describe itself: its class has no to_config(); derive it "
            "from sdekit.configurable.Configurable (which records the constructor's arguments) "
            "or write to_config()/from_config()"
        )
    config = method()
    if not isinstance(config, Mapping):
        raise ConfigError(f"{name}.to_config() must return a dict, got {type(config).__name__}")
    path = class_path(type(obj))
    if config.get(CLASS_KEY, path) != path:
        raise ConfigError(
            f"{name}.to_config() names class {config[CLASS_KEY]!r}, but the object is a {path}"
        )
    params = {k: _encode(v, f"{what}.{k}") for k, v in config.items() if k != CLASS_KEY}
    return {CLASS_KEY: path, **params}


def from_config(config: Mapping, base: type[T] = object, what: str = "object") -> T:
    """Rebuild the object a config describes; it must be an instance of ``base``.

    The class is imported by its path and must describe itself (have ``to_config``); it is rebuilt
    by its ``from_config(config)`` if it has one, else as ``cls(**arguments)``. Raises
    :class:`ConfigError` naming ``what``, the class path and the fix.
    """
    if not isinstance(config, Mapping) or not isinstance(config.get(CLASS_KEY), str):
        raise ConfigError(
            f"{what} config must be a dict with a {CLASS_KEY!r} entry naming the class, got "
            f"{type(config).__name__}"
        )
    path = config[CLASS_KEY]
    cls = import_class(path, f"{what} class")
    if not issubclass(cls, base):
        raise ConfigError(f"{what} class {path!r} is not a {base.__name__}")
    if not callable(getattr(cls, "to_config", None)):
        raise ConfigError(
            f"{what} class {path!r} does not describe itself (it has no to_config()): a config "
            "rebuilds only such classes"
        )
    builder = getattr(cls, "from_config", None)
    try:
        if callable(builder):
            return builder(config)
        params = {k: _decode(v, f"{what}.{k}") for k, v in config.items() if k != CLASS_KEY}
        return cls(**params)
    except TypeError as error:
        raise ConfigError(f"{what} config does not rebuild {path}: {error}") from error


def _simple_attributes(obj: Any) -> dict:
    return {
        k: v for k, v in vars(obj).items() if isinstance(v, bool | int | float | str | type(None))
    }


def _recording(init):
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        # only the constructor of the object's own class records (not the super().__init__ calls)
        record = type(self).__init__ is __init__
        if record:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments: dict | None = {}
            for name, param in list(signature.parameters.items())[1:]:
                value = bound.arguments.get(name)
                if param.kind is param.VAR_KEYWORD:
                    arguments.update(value)
                elif param.kind is param.VAR_POSITIONAL:
                    if value:
                        arguments = None  # positional-only extras cannot be given by keyword
                        break
                else:
                    arguments[name] = value
            if arguments is not None:
                arguments = {
                    k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                    for k, v in arguments.items()
                }
        init(self, *args, **kwargs)
        if record:
            object.__setattr__(self, "_config_arguments", arguments)

    __init__.__wrapped_init__ = init
    return __init__


class Configurable:
    """Mixin: the object records its constructor's arguments and describes itself by them.

    ``to_config()`` is ``{"class": import path, **arguments}`` (see the module) and the classmethod
    ``from_config(config)`` calls the constructor with them. An object of a class that keeps other
    state than its arguments, or changes them after construction, describes itself wrongly; for
    objects that are not networks :meth:`to_config` checks that a rebuilt one has the same number
    and string attributes, and raises if not.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__init__
        cls.__init__ = _recording(getattr(init, "__wrapped_init__", init))

    def to_config(self) -> dict:
        """``{"class": import path, **constructor arguments}`` as JSON data."""
        name = type(self).__name__
        arguments = self.__dict__.get("_config_arguments")
        if arguments is None:
            raise ConfigError(
                f"{name} cannot describe itself: its constructor was given extra positional "
                "arguments (*args), or it was not built by its constructor; write its to_config()"
            )
        config = {
            CLASS_KEY: class_path(type(self)),
            **{k: _encode(v, f"{name}.{k}") for k, v in arguments.items()},
        }
        if not isinstance(self, nn.Module):
            rebuilt = type(self).from_config(config)
            ours, theirs = _simple_attributes(self), _simple_attributes(rebuilt)
            changed = sorted(k for k in ours if theirs.get(k, ours[k]) != ours[k])
            if changed:
                k = changed[0]
                raise ConfigError(
                    f"{name}.{k} is {ours[k]!r}, but its constructor's arguments give "
                    f"{theirs[k]!r}: it was changed after construction; build a new {name} with "
                    "the value instead, so that the config describes it"
                )
        return config

    @classmethod
    def from_config(cls: type[T], config: Mapping) -> T:
        """The object ``config`` describes (the ``"class"`` entry, if present, must name ``cls``
        or a subclass of it, which is then built)."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"config must be a dict, got {type(config).__name__}")
        path = config.get(CLASS_KEY)
        target = cls
        if path is not None and path != class_path(cls):
            target = import_class(path, f"{cls.__name__} config's class")
            if not issubclass(target, cls):
                raise ConfigError(f"the config describes a {path}, which is not a {cls.__name__}")
            if target.from_config.__func__ is not Configurable.from_config.__func__:
                return target.from_config(config)
        name = target.__name__
        params = {k: _decode(v, f"{name}.{k}") for k, v in config.items() if k != CLASS_KEY}
        # an SDE or schedule keeps its constants on the CPU even when a network is rebuilt on the
        # meta device around it (sdekit.interop.save_pretrained checks shapes that way)
        place = contextlib.nullcontext() if issubclass(target, nn.Module) else torch.device("cpu")
        try:
            with place:
                return target(**params)
        except TypeError as error:
            raise ConfigError(f"config does not rebuild {class_path(target)}: {error}") from error
