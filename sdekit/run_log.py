r"""What a training run reports while it runs: a JSON-lines log, progress on the terminal or in a
redirected log, and the loss curve.

:class:`RunLog` writes one JSON object per line to ``<out>/log.jsonl`` every ``log_every`` steps,
at every sample grid and at the end::

    {"step": 100, "loss": 0.512, "lr": 0.0002, "grad_norm": 1.7, "steps_per_s": 4.1,
     "examples_per_s": 1050.0, "elapsed_s": 24.3, "samples": "samples_0000100.png"}

``loss`` and ``grad_norm`` (before clipping; ``null`` when not finite, an fp16 step the loss
scaler skipped) are means over the steps since the previous line, ``lr`` the learning rate after
the step, ``steps_per_s`` and ``examples_per_s`` the throughput since the previous line,
``elapsed_s`` the training time summed over every run of this directory, ``samples`` the grid
written at that step (only then). A resumed run first drops the lines past its checkpoint's step
(written after the last checkpoint by the run that was interrupted), so the log reads as one run.

On a terminal the progress is tqdm's bar; where the output is redirected to a file (a batch job,
``nohup``) a plain line is printed instead at every log line, e.g.
``step 100/2000  loss 0.512  lr 2.00e-04  grad norm 1.7  4.1 steps/s  elapsed 24s  ETA 7m43s``.
:meth:`RunLog.save_curve` draws ``<out>/loss.png`` from the log.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .figures import save_loss_curve

LOG_NAME = "log.jsonl"
CURVE_NAME = "loss.png"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``log.jsonl`` (a line cut short by a killed process is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


class RunLog:
    """The log of one :meth:`~sdekit.training.Trainer.train` call (a context manager).

    Args:
        out: the run directory, or ``None`` for a process that reports nothing (DDP rank > 0).
        start_step: the step the run starts (or resumes) from.
        total_steps: the step it runs to.
        batch_size: examples per step (for ``examples_per_s``).
    """

    def __init__(self, out: Path | None, *, start_step: int, total_steps: int, batch_size: int):
        self.path = None if out is None else Path(out) / LOG_NAME
        self.start_step, self.total_steps, self.batch_size = start_step, total_steps, batch_size
        self.records = self._resume() if self.path is not None else []
        self._elapsed_before = self.records[-1].get("elapsed_s", 0.0) if self.records else 0.0
        self._t0 = self._t_last = time.monotonic()
        self._step_last = start_step
        # disable=None: tqdm shows a bar only on a terminal (and honours TQDM_DISABLE)
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=None if self.path is not None else True,
            desc="train",
            unit="step",
        )
        self._lines = self.path is not None and self._bar.disable

    def _resume(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = read_log(self.path)
        kept = [r for r in records if r["step"] <= self.start_step]
        if len(kept) != len(self.path.read_text().splitlines()):
            tmp = self.path.with_name(f".{LOG_NAME}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        return kept

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()

    def elapsed(self) -> float:
        """Seconds since this log started (this call's training time)."""
        return time.monotonic() - self._t0

    def advance(self) -> None:
        """One more step done (moves the bar)."""
        self._bar.update(1)

    def record(
        self, step: int, loss: float, lr: float, grad_norm: float, samples: str | None = None
    ) -> dict:
        """Write the line of ``step`` (means since the previous line) and report progress."""
        now = time.monotonic()
        rate = (step - self._step_last) / max(now - self._t_last, 1e-9)
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": _finite_or_none(grad_norm),
            "steps_per_s": round(rate, 4),
            "examples_per_s": round(rate * self.batch_size, 2),
            "elapsed_s": round(self._elapsed_before + now - self._t0, 3),
        }
        if samples is not None:
            record["samples"] = samples
        self._t_last, self._step_last = now, step
        if self.path is None:
            return record
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}")
        if self._lines:
            print(self._progress_line(record, now), file=sys.stderr, flush=True)
        return record

    def _progress_line(self, record: dict, now: float) -> str:
        step, gn = record["step"], record["grad_norm"]
        overall = (step - self.start_step) / max(now - self._t0, 1e-9)
        eta = (self.total_steps - step) / overall if overall > 0 else math.inf
        parts = [
            f"step {step}/{self.total_steps}",
            f"loss {record['loss']:.4g}",
            f"lr {record['lr']:.2e}",
            f"grad norm {gn:.3g}" if gn is not None else "grad norm inf",
            f"{record['steps_per_s']:.3g} steps/s",
            f"elapsed {_duration(record['elapsed_s'])}",
            f"ETA {_duration(eta)}" if math.isfinite(eta) else "ETA ?",
        ]
        if "samples" in record:
            parts.append(f"samples {record['samples']}")
        return "  ".join(parts)

    def save_curve(self) -> None:
        """Draw ``loss.png`` beside the log from every line so far."""
        if self.path is None or not self.records:
            return
        steps = [r["step"] for r in self.records]
        save_loss_curve(steps, [r["loss"] for r in self.records], self.path.parent / CURVE_NAME)
