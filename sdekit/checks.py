"""Argument checks shared by the public API.

Every check raises ``ValueError`` naming the argument and the allowed range. Checks on tensor
*values* force a host synchronisation on an accelerator, so there they are enqueued with
``torch._assert_async`` instead: the program still stops on bad input, without a sync per step.
"""

from __future__ import annotations

import math

import torch


def _check_values(ok: torch.Tensor, message: str) -> None:
    if ok.device.type == "cpu":
        if not bool(ok.all()):
            raise ValueError(message)
    else:
        torch._assert_async(ok.all(), message)


def check_choice(name: str, value, allowed) -> str:
    """``value`` must be one of ``allowed`` (e.g. the arguments of a ``Literal`` type)."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_positive(name: str, value: float) -> float:
    """A finite scalar strictly greater than zero."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_probability(name: str, value: float, *, open_right: bool = False) -> float:
    """A scalar in [0, 1] (or [0, 1) with ``open_right``)."""
    upper_ok = value < 1 if open_right else value <= 1
    if not (math.isfinite(value) and value >= 0 and upper_ok):
        bracket = ")" if open_right else "]"
        raise ValueError(f"{name} must lie in [0, 1{bracket}, got {value}")
    return float(value)


def check_less(name_low: str, low: float, name_high: str, high: float) -> None:
    if not low < high:
        raise ValueError(
            f"{name_low} must be < {name_high}, got {name_low}={low}, {name_high}={high}"
        )


def check_time(t: torch.Tensor, T: float, name: str = "t") -> None:
    """Times must be finite and lie in the SDE's domain [0, T]."""
    ok = torch.isfinite(t) & (t >= 0) & (t <= T)
    if t.device.type == "cpu" and not bool(ok.all()):
        raise ValueError(
            f"{name} must lie in [0, T] = [0, {T}], got {t[~ok].flatten()[:4].tolist()}"
        )
    _check_values(ok, f"{name} must lie in [0, T] = [0, {T}]")


def check_batch_time(t: torch.Tensor, x: torch.Tensor, name: str = "t") -> None:
    """``t`` must be a ``(batch,)`` tensor matching ``x.shape[0]``."""
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must have shape (batch,) = ({x.shape[0]},) to match x of shape "
            f"{tuple(x.shape)}, got {tuple(t.shape)}"
        )


def check_finite(name: str, x: torch.Tensor) -> None:
    """No NaN or inf: raise instead of returning them silently."""
    _check_values(torch.isfinite(x), f"{name} contains NaN or inf")
