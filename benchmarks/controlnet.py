r"""ControlNet on the 8×8 digits: does a control branch make a trained model follow a hint, and how does
it compare with a U-Net trained from scratch on the hint at the same training compute?

The digits are split as in ``quality_digits.py`` (seeded, stratified; ``--holdout`` held out) and
its judge (the same classifier, trained on the training split) is reused. The script

1. trains the unconditional base U-Net (``quality_digits.DIGITS_CONFIG``) on the training split
   for ``--base-cpu`` CPU-seconds, or loads ``--base`` (a run's ``checkpoint.pt``; if that run saw
   every digit, the held-out hints are not held out from the base);
2. for each hint, edges (Sobel) and 2x-downsampled (2x2 block means; :mod:`sdekit.hints`), trains
   for ``--train-cpu`` CPU-seconds each

   - a ControlNet on the base (:func:`sdekit.control.control_trainer`; the base locked), and
   - the paper's baseline (Zhang et al. 2023): the same U-Net trained from scratch with the
     hint concatenated to its input channels, at the same CPU budget (the two are trained a step
     of each in turn, so that both see the same load);

3. draws one sample per held-out hint (DPM-Solver++(2M), 20 steps; clipped to the data range
   [-1, 1], as for display) and reports, per model:
   **hint consistency** (the RMSE between the hint computed from the sample and the given hint,
   in the hint's [-1, 1] units) and **judge agreement** (how often the judge's class of the sample
   is the class of the digit the hint was made from), beside the base without control (the upper
   line: its samples ignore the hint), a real training digit of the same class (class right, shape
   not), the nearest training digit in hint space (a floor for a model that reproduces real digits)
   and the held-out digit itself (consistency 0 by construction; agreement = the judge's accuracy).

Budgets are CPU time of this process (``time.process_time``, one thread), so a shared machine buys
the same steps, only later; the load average is printed.

    python benchmarks/controlnet.py           # base 120 CPU-s, each model 45 CPU-s (5.6 CPU-minutes)
    python benchmarks/controlnet.py --full    # base 600 CPU-s, each model 240 CPU-s
    python benchmarks/controlnet.py --base runs/digits/checkpoint.pt --train-cpu 120
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_digits import DIGITS_CONFIG, load_average, split, train_classifier  # noqa: E402

from sdekit.control import control_trainer  # noqa: E402
from sdekit.data import load_digits  # noqa: E402
from sdekit.figures import save_image_rows  # noqa: E402
from sdekit.hints import hint_error, make_hints  # noqa: E402
from sdekit.inference import load_model, sample_from  # noqa: E402
from sdekit.networks import UNet  # noqa: E402
from sdekit.training import TrainConfig, Trainer, sample_prediction  # noqa: E402

HINTS = ("edges", "downsample")
#: what every trained model shares: optimiser, batch, EMA (the base's own settings)
TRAIN = dict(batch_size=128, lr=1e-3, warmup_steps=50, ema_decay=0.999, sample_every=0,
             checkpoint_every=0, log_every=10**9, device="cpu")  # fmt: skip
SAMPLER = ("dpmpp_2m", 20)


class HintConcatUNet(nn.Module):
    """The from-scratch baseline: a U-Net on the channels ``[x, hint]``, its first ``C`` outputs."""

    def __init__(self, channels: int, hint_channels: int):
        super().__init__()
        self.channels = channels
        arch = {k: DIGITS_CONFIG[k] for k in ("channel_mults", "num_res_blocks", "dropout")}
        self.net = UNet(channels + hint_channels, 8, DIGITS_CONFIG["channels"],
                        attn_resolutions=(4,), **arch)  # fmt: skip

    def forward(self, x, t, cond):
        return self.net(torch.cat([x, cond["hint"]], 1), t)[:, : self.channels]


def train_for(trainer: Trainer, cpu_seconds: float) -> tuple[int, float]:
    """Train steps until ``cpu_seconds`` of CPU time are spent; ``(steps, CPU seconds)``."""
    start = time.process_time()
    while time.process_time() - start < cpu_seconds:
        trainer.train_step()
    return trainer.step, time.process_time() - start


def train_side_by_side(trainers: list[Trainer], cpu_seconds: float) -> list[tuple[int, float]]:
    """Train each trainer for ``cpu_seconds`` of CPU time, one step of each in turn, so that all
    run under the same load (on a shared machine a CPU-second buys less work when it is busy)."""
    spent = [0.0] * len(trainers)
    while min(spent) < cpu_seconds:
        for i, trainer in enumerate(trainers):
            if spent[i] < cpu_seconds:
                start = time.process_time()
                trainer.train_step()
                spent[i] += time.process_time() - start
    return [(trainer.step, s) for trainer, s in zip(trainers, spent, strict=True)]


def draw(model: nn.Module, sde, cond, n: int, prediction: str) -> torch.Tensor:
    """``n`` samples, clipped to the data range [-1, 1] as they would be to be shown or saved."""
    method, steps = SAMPLER
    x = sample_from(model, sde, (n, 1, 8, 8), prediction=prediction, cond=cond, method=method,
                    steps=steps, generator=torch.Generator().manual_seed(0))  # fmt: skip
    return x.clamp(-1, 1)


def same_class_digits(x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """For each class in ``classes``, a random digit of ``x`` of that class (seeded)."""
    g = torch.Generator().manual_seed(2)
    picks = []
    for c in classes.tolist():
        pool = (y == c).nonzero()[:, 0]
        picks.append(pool[torch.randint(len(pool), (1,), generator=g)])
    return x[torch.cat(picks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="a trained digits run's checkpoint.pt")
    parser.add_argument("--base-cpu", type=float, default=120.0, help="base training CPU-s")
    parser.add_argument("--train-cpu", type=float, default=45.0, help="CPU-s per hint model")
    parser.add_argument("--full", action="store_true", help="base 600 CPU-s, models 240 CPU-s")
    parser.add_argument("--holdout", type=int, default=300, help="held-out digits (and samples)")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--grid", type=Path, default=Path("controlnet_digits.png"))
    args = parser.parse_args()
    if args.full:
        args.base_cpu, args.train_cpu = 600.0, 240.0
    if not (args.base_cpu > 0 and args.train_cpu > 0 and args.holdout >= 10):
        parser.error("--base-cpu and --train-cpu must be > 0 and --holdout >= 10")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.work or Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    load = [load_average()]
    wall = time.perf_counter()
    x, y = load_digits()
    train_idx, held_idx = split(y, args.holdout)
    x_train, y_train, x_held, y_held = x[train_idx], y[train_idx], x[held_idx], y[held_idx]
    n = x_held.shape[0]
    start = time.process_time()
    judge = train_classifier(x_train, y_train)
    with torch.no_grad():
        accuracy = float((judge(x_held).argmax(1) == y_held).float().mean())
    print(f"judge: {time.process_time() - start:.0f} CPU-s, held-out accuracy {accuracy:.3f}")

    if args.base is None:
        config = TrainConfig(**{**DIGITS_CONFIG, **TRAIN, "steps": 10**9,
                                "out": str(work / "base")})  # fmt: skip
        base_trainer = Trainer(config, data=(x_train, None))
        base_steps, base_cpu = train_for(base_trainer, args.base_cpu)
        base_trainer.save()
        base_path = work / "base" / "checkpoint.pt"
        print(f"base: {base_steps} steps in {base_cpu:.0f} CPU-s (training split only)")
    else:
        base_path, base_steps, base_cpu = args.base, None, None
        print(f"base: {base_path} (its training data may include the held-out digits)")
    base = load_model(base_path)
    prediction = sample_prediction(base.config)
    load.append(load_average())

    def scores(hint: str, samples: torch.Tensor, hints: torch.Tensor) -> tuple[float, float]:
        rmse = float(hint_error(hint, samples, hints).mean().sqrt())
        with torch.no_grad():
            agree = float((judge(samples).argmax(1) == y_held).float().mean())
        return rmse, agree

    base_samples = draw(base.model, base.sde, None, n, prediction)
    same_class = same_class_digits(x_train, y_train, y_held)
    rows, grid = [], [x_held[:16]]
    for hint in HINTS:
        held_hints = make_hints(hint, x_held)
        train_hints = make_hints(hint, x_train)
        nearest = torch.cdist(held_hints.flatten(1), train_hints.flatten(1)).argmin(1)
        reference = [
            ("base, no control (upper line)", base_samples, "", "", ""),
            ("real digit of the same class", same_class, "", "", ""),
            ("nearest training digit in hint space", x_train[nearest], "", "", ""),
            ("held-out digit itself", x_held, "", "", ""),
        ]
        for name, samples, *_ in reference:
            rows.append((hint, name, "", "", "", *scores(hint, samples, held_hints)))
        grid.append(held_hints[:16])

        settings = {**TRAIN, "steps": 10**9, "out": str(work / f"control_{hint}")}
        control = control_trainer(base_path, hint, data=(x_train, None), sample_grid=False,
                                  **settings)  # fmt: skip
        config = TrainConfig(**{**DIGITS_CONFIG, **TRAIN, "steps": 10**9,
                                "out": str(work / f"concat_{hint}")})  # fmt: skip
        torch.manual_seed(0)
        concat = HintConcatUNet(1, held_hints.shape[1])
        scratch = Trainer(config, model=concat, data=(x_train, {"hint": train_hints}),
                          sample_grid=False)  # fmt: skip
        spent = train_side_by_side([control, scratch], args.train_cpu)
        names = ("ControlNet on the base", "U-Net from scratch, hint concatenated")
        for name, trainer, (steps, cpu) in zip(names, (control, scratch), spent, strict=True):
            params = sum(p.numel() for p in trainer.trainable)
            samples = draw(trainer.ema.module, base.sde, {"hint": held_hints}, n, prediction)
            rows.append((hint, name, steps, f"{cpu:.0f}", params,
                         *scores(hint, samples, held_hints)))  # fmt: skip
            grid.append(samples[:16])
        load.append(load_average())

    base_note = f"{base_steps} steps / {base_cpu:.0f} CPU-s" if base_steps else str(base_path)
    print(
        f"\nbase: {base_note}; {n} held-out hints, {SAMPLER[0]} {SAMPLER[1]} steps; wall "
        f"{time.perf_counter() - wall:.0f} s, load average {min(load):.1f}-{max(load):.1f} on "
        "this machine\n"
    )
    print("| hint | model | steps | train CPU-s | trained params | hint RMSE | judge agreement |")
    print("|---|---|---|---|---|---|---|")
    for hint, name, steps, cpu, params, rmse, agree in rows:
        print(f"| {hint} | {name} | {steps} | {cpu} | {params} | {rmse:.3f} | {agree:.3f} |")
    names = ["digit"]
    for hint in HINTS:
        names += [f"{hint} hint", "ControlNet", "from scratch"]
    save_image_rows(grid, args.grid, names=names)
    print(f"\ngrid: {args.grid}")


if __name__ == "__main__":
    main()
