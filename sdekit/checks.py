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


# --- user functions' outputs, input tensors, and non-finite results (issue 8) ---------------------


def check_output(name: str, out, x: torch.Tensor, *, per_sample_ok: bool = False) -> torch.Tensor:
    """``out``, the value a user's ``name`` returned for ``x``, must be a tensor shaped like ``x``.

    With ``per_sample_ok`` a ``(batch,)`` tensor is allowed too (a diffusion :math:`g(t)`). Nothing
    is broadcast: a ``(batch, 1)`` output for ``(batch, 2)`` data is an error, not a copy. Shapes
    are metadata, so the check costs no host synchronisation. Returns ``out``.
    """
    shapes = f"{tuple(x.shape)} (like x)"
    if per_sample_ok:
        shapes += f" or ({x.shape[0]},) (one value per sample)"
    if not isinstance(out, torch.Tensor):
        kind = f"{type(out).__module__}.{type(out).__qualname__}".removeprefix("builtins.")
        if isinstance(out, tuple | list):
            fix = "return the tensor itself, not a tuple or list"
        elif type(out).__module__.startswith("numpy"):
            fix = "compute it with torch operations on x, on x's device (autograd goes through it)"
        else:
            fix = "return a torch.Tensor"
        raise TypeError(f"{name} must return a torch.Tensor of shape {shapes}, got {kind}: {fix}")
    if out.shape != x.shape and not (per_sample_ok and out.shape == x.shape[:1]):
        raise ValueError(
            f"{name} must return a tensor of shape {shapes}, got {tuple(out.shape)}; "
            "outputs are not broadcast"
        )
    return out


def check_float_input(name: str, x, *, fix: str = "") -> torch.Tensor:
    """``x`` must be a floating-point tensor with finite values; returns it.

    An integer tensor is refused rather than cast (``x.float()`` or ``x.double()`` is the fix).
    The finiteness check runs once, up front: on an accelerator it is enqueued without a host
    sync (see :func:`check_finite`). ``fix`` is appended to the non-finite message.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got {x.dtype}; convert it first, e.g. "
            f"{name}.float() or {name}.double()"
        )
    if x.device.type == "cpu":
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ValueError(
                f"{name} contains NaN or inf ({int(bad.sum())} of {x.numel()} values)"
                + (f"; {fix}" if fix else "")
            )
    else:
        _check_values(
            torch.isfinite(x), f"{name} contains NaN or inf" + (f"; {fix}" if fix else "")
        )
    return x


NONFINITE_HINT = (
    "try smaller steps (more of them, or tighter tolerances), and check that the model, drift and "
    "diffusion return finite values for these inputs and times"
)


class FiniteWatch:
    """Where a loop's state first stopped being finite, recorded on the device: no host sync per step.

    ``watch.update(i, x)`` after step ``i`` keeps, as a device tensor, the first ``i`` whose state
    held a NaN or inf (a ``torch.where``, no ``.item()``); ``watch.check()`` reads it once, at the
    end, and raises ``FloatingPointError`` naming ``what``, the step and its times (when ``ts`` is
    given: step ``i`` goes from ``ts[i]`` to ``ts[i + 1]``), and ``hint``. Use
    :func:`check_result_finite` when only the final state is at hand.
    """

    def __init__(self, what: str, ts: torch.Tensor | None = None, hint: str = NONFINITE_HINT):
        self.what, self.ts, self.hint = what, ts, hint
        self.first: torch.Tensor | None = None
        self.steps = 0

    def update(self, step: int, x: torch.Tensor) -> None:
        bad = ~torch.isfinite(x).all()
        if self.first is None:
            self.first = torch.full((), -1, dtype=torch.int64, device=x.device)
        self.first = torch.where(bad & (self.first < 0), step, self.first)
        self.steps = max(self.steps, step + 1)

    def check(self) -> None:
        if self.first is None:
            return
        step = int(self.first)  # the one host sync
        if step < 0:
            return
        where = f"at step {step} of {self.steps}"
        if self.ts is not None and step + 1 < len(self.ts):
            where += f" (t = {float(self.ts[step]):.6g} -> {float(self.ts[step + 1]):.6g})"
        raise FloatingPointError(f"{self.what} became non-finite (NaN or inf) {where}; {self.hint}")


def check_result_finite(what: str, x: torch.Tensor, hint: str = NONFINITE_HINT) -> None:
    """One check of a final result (one host sync): raise ``FloatingPointError`` on NaN or inf."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise FloatingPointError(
            f"{what} is non-finite (NaN or inf in {int(bad.sum())} of {x.numel()} values); {hint}"
        )


def check_time_tensor(name: str, t) -> torch.Tensor:
    """Times are a ``(batch,)`` tensor; a Python number is refused with the call that makes one."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"{name} must be a (batch,) tensor of times, got {type(t).__name__} {t!r}; pass e.g. "
            f"torch.full((batch,), {t!r}, dtype=torch.float64)"
        )
    return t
