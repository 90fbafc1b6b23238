r"""Which training settings give the best images for a fixed CPU budget: the sweep behind the CLI's
image presets.

Each run trains a UNet through :class:`sdekit.training.Trainer` for ``--budget`` minutes of
*process CPU time* (not wall time: the machine is shared, and CPU time is what a run costs), one
thread, then draws ``--n`` samples with DPM-Solver++(2M) at 20 steps and a final denoising step,
:math:`\hat x_0` clipped to :math:`[-1, 1]` at every step (``--threshold``; the base run is judged
with clipping, dynamic thresholding and neither, see :mod:`sdekit.thresholding`), and judges them with the
classifier of ``judge.py`` trained on the real training set: the Fréchet distance in its features
to ``--n`` held-out images beside the real-vs-real floor, its mean max-softmax and class histogram,
and the fraction of saturated pixels (outside :math:`[-1, 1]`).

The design is a screening, not a grid: one base setting per data set and runs that each change one
factor of it (prediction and preconditioning, learning rate, warm-up, network width, batch size,
dropout, :math:`\sigma_\text{data}`). The EMA length needs no runs of its own: every run keeps
moving averages of several decays side by side (an EMA is a function of the trained weights only)
and the base run is judged with each. ``--snapshots`` judges a run at intermediate budgets too, so
one 30-minute run also gives the 10-minute result (the learning rate is constant after warm-up).

Data sets: ``fashion_mnist`` (28×28, the installed IDX files), ``fashion_mnist32`` (the same padded
to 32×32 with background, a stand-in for a 32×32 data set: there is no CIFAR-10 on this machine;
the judge sees the central 28×28) and ``digits`` (8×8, scikit-learn's). Results are appended to a
JSON-lines file, so an interrupted sweep resumes where it stopped, and the markdown table of all
rows is printed at the end.

    python benchmarks/sweep_images.py --data fashion_mnist --budget 6                 # the screen
    python benchmarks/sweep_images.py --data fashion_mnist --runs base --budget 30 --snapshots 10
    python benchmarks/sweep_images.py --data digits --budget 2
    python benchmarks/sweep_images.py --table                                        # print only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sdekit.data import load_dataset, load_digits
from sdekit.ema import EMA
from sdekit.sampling import sample
from sdekit.thresholding import thresholded
from sdekit.training import TrainConfig, Trainer, sample_prediction

sys.path.insert(0, str(Path(__file__).parent))
from judge import (  # noqa: E402
    ROUND_OFF,
    cached_classifier,
    features,
    judge_samples,
    load_average,
    real_floor,
)

#: every base setting: EDM preconditioning on the VP SDE, log-normal noise levels, no dropout
COMMON = dict(
    sde="vp",
    prediction="edm",
    t_sampling="lognormal",
    sigma_data=0.5,
    num_res_blocks=1,
    dropout=0.0,
    warmup_steps=100,
    ema_decay=0.995,
    sample_every=0,
    checkpoint_every=0,
    device="cpu",
)
BASES = {
    "fashion_mnist": dict(COMMON, channels=32, channel_mults=(1, 2, 2), batch_size=64, lr=2e-3),
    "fashion_mnist32": dict(COMMON, channels=32, channel_mults=(1, 2, 2), batch_size=64, lr=2e-3),
    "digits": dict(COMMON, channels=32, channel_mults=(1, 2), batch_size=128, lr=2e-3),
}
DATA_NAMES = {
    "fashion_mnist": "fashion_mnist",
    "fashion_mnist32": "fashion_mnist",
    "digits": "digits",
}
#: one factor changed per run (the classical settings: uniform t, each prediction's default loss)
UNIFORM = dict(t_sampling="uniform", weighting="default")
SCREEN = {
    "base": {},
    "eps": dict(UNIFORM, prediction="eps"),
    "v": dict(UNIFORM, prediction="v"),
    "x0": dict(UNIFORM, prediction="x0"),
    "sigma_data=0.7": dict(sigma_data=0.7),
    "lr=1e-3": dict(lr=1e-3),
    "lr=4e-3": dict(lr=4e-3),
    "warmup=400": dict(warmup_steps=400),
    "width 16": dict(channels=16),
    "width 48": dict(channels=48),
    "batch 32": dict(batch_size=32),
    "batch 128": dict(batch_size=128),
    "dropout 0.1": dict(dropout=0.1),
}
#: EMA decays kept beside every run; the base run is judged with each (and the raw weights), the
#: others with their own. With the EMA's warm-up, d_n = min(d, (1 + n)/(10 + n)), the decays
#: differ only after 10/(1 - d) - 9 updates (891 for 0.99, 8991 for 0.999)
EMA_DECAYS = (0.99, 0.995, 0.999)


def load(data: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_reference, y_reference)``: the training set and held-out images."""
    if data == "digits":
        sys.path.insert(0, str(Path(__file__).parent))
        from quality_digits import split

        x, y = load_digits()
        train, held = split(y, 500)
        return x[train], y[train], x[held], y[held]
    x, y = load_dataset("fashion_mnist")
    xr, yr = load_dataset("fashion_mnist", split="test")
    if data == "fashion_mnist32":
        x, xr = (F.pad(v, (2, 2, 2, 2), value=-1.0) for v in (x, xr))
    return x, y, xr, yr


def judge_view(data: str, x: torch.Tensor) -> torch.Tensor:
    """What the judge sees: the central 28×28 of the padded set."""
    return x[..., 2:30, 2:30] if data == "fashion_mnist32" else x


def make_judge(data: str, x: torch.Tensor, y: torch.Tensor, cache_dir: Path):
    if data == "digits":
        return cached_classifier(x, y, (32, 64), 64, epochs=60, cache=None)
    return cached_classifier(
        judge_view(data, x), y, (32, 64, 64), 64, epochs=3, cache=str(cache_dir / "judge_fmnist.pt")
    )


def draw(model, trainer: Trainer, n: int, threshold: str, seed: int = 0) -> torch.Tensor:
    r"""``n`` samples, ending with the denoising step at t_min: the images are the estimate
    :math:`\hat x_0` (thresholded when asked), not :math:`x_{t_\min}` with its noise of level
    :math:`\sigma(t_\min)`, which alone would put background pixels outside [-1, 1]."""
    prediction = sample_prediction(trainer.config)
    if threshold != "off":
        model = thresholded(model, trainer.sde, prediction, method=threshold)
    with torch.no_grad():
        x, _ = sample(
            model, trainer.sde, (n, *trainer.data_shape), method="dpmpp_2m", steps=20,
            prediction=prediction, denoise_final=True, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
    return x


def run(data, name, overrides, args, judge, reference, floor, x_train) -> list[dict]:
    budgets = sorted({*args.snapshots, args.budget})
    rows = []
    with tempfile.TemporaryDirectory() as out:
        fixed = {"data": DATA_NAMES[data], "steps": 10**9, "out": out}
        config = TrainConfig.from_dict({**BASES[data], **overrides, **fixed})
        trainer = Trainer(config, data=(x_train, None))
        emas = {d: EMA(trainer.model, d) for d in EMA_DECAYS if d != config.ema_decay}
        emas[config.ema_decay] = trainer.ema
        weights = {**emas, 0.0: None}  # 0: the raw weights
        params = sum(p.numel() for p in trainer.model.parameters())
        start, wall, loads = time.process_time(), time.perf_counter(), [load_average()]
        for minutes in budgets:
            while time.process_time() - start < 60 * minutes:
                loss = float(trainer.train_step())
                for ema in emas.values():
                    if ema is not trainer.ema:
                        ema.update(trainer.model)
            loads.append(load_average())
            cpu, steps = time.process_time() - start, trainer.step
            # decays whose cap min(d, ...) was never reached are the same average: judge one
            uncapped = [d for d in sorted(emas) if steps <= 10 / (1 - d) - 9]
            judged = [d for d in sorted(weights) if d not in uncapped[1:]]
            if name != "base":
                judged = [config.ema_decay if config.ema_decay not in uncapped else uncapped[0]]
            for d in judged:
                model = trainer.model.eval() if d == 0 else emas[d].module
                both = name == "base" and d in (config.ema_decay, *uncapped[:1])
                for threshold in ("clip", "dynamic", "off") if both else (args.threshold,):
                    samples = draw(model, trainer, args.n, threshold)
                    scores = judge_samples(judge, judge_view(data, samples), reference)
                    scores["saturated"] = float((samples.abs() > 1 + ROUND_OFF).float().mean())
                    scores["max_abs"] = float(samples.abs().max())
                    rows.append(
                        dict(
                            data=data, run=name, ema=d, threshold=threshold, cpu_min=minutes,
                            same_ema=uncapped if d in uncapped else [d] if d else [],
                            steps=steps, loss=loss, params=params, floor=floor, n=args.n,
                            load=max(loads), wall_s=time.perf_counter() - wall, cpu_s=cpu,
                            **scores,
                        )
                    )  # fmt: skip
                    print(table_row(rows[-1]), flush=True)
            trainer.model.train()
            judging = time.process_time() - start - cpu
            start += judging  # judging is not training time
    return rows


HEADER = (
    "| data | run | CPU min | steps | params (M) | EMA | threshold | FD | floor | ratio | "
    "saturated | max abs | confidence | class histogram 0-9 | load |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(r: dict) -> str:
    hist = " ".join(map(str, r["histogram"]))
    ema = "/".join(f"{d:g}" for d in r["same_ema"]) or "raw"
    threshold = {True: "dynamic", False: "off"}.get(r["threshold"], r["threshold"])
    return (
        f"| {r['data']} | {r['run']} | {r['cpu_min']:g} | {r['steps']} | {r['params'] / 1e6:.2f} | "
        f"{ema} | {threshold} | {r['fd']:.2f} | {r['floor']:.2f} | {r['fd'] / r['floor']:.1f} | "
        f"{100 * r['saturated']:.2f}% | {r.get('max_abs', float('nan')):.2f} | "
        f"{r['confidence']:.3f} | {hist} | {r['load']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(BASES), default="fashion_mnist")
    parser.add_argument("--runs", nargs="+", choices=sorted(SCREEN), help="default: all")
    parser.add_argument("--budget", type=float, default=6.0, help="CPU minutes per run")
    parser.add_argument("--snapshots", type=float, nargs="*", default=[], help="CPU minutes")
    parser.add_argument("--n", type=int, default=500, help="samples and held-out images")
    parser.add_argument(
        "--threshold", choices=("clip", "dynamic", "off"), default="clip", help="x0-hat bound"
    )
    parser.add_argument("--results", type=Path, default=Path("runs/sweep_images.jsonl"))
    parser.add_argument("--table", action="store_true", help="only print the results' table")
    args = parser.parse_args()
    if not args.budget > 0 or any(not 0 < s < args.budget for s in args.snapshots):
        parser.error("--budget must be > 0 and every snapshot in (0, budget)")
    torch.set_num_threads(1)
    done = []
    if args.results.is_file():
        done = [json.loads(line) for line in args.results.read_text().splitlines() if line]
    if not args.table:
        x, y, xr, yr = load(args.data)
        judge, judge_s = make_judge(args.data, x, y, args.results.parent)
        with torch.no_grad():
            accuracy = float((judge(judge_view(args.data, xr)).argmax(1) == yr).float().mean())
        reference = features(judge, judge_view(args.data, xr[: args.n]))
        floor, _ = real_floor(judge, judge_view(args.data, x), reference)
        print(f"judge: {judge_s:.0f} CPU s, held-out accuracy {accuracy:.3f}; floor {floor:.2f}")
        key = {(r["data"], r["run"], r["cpu_min"]) for r in done}
        for name in args.runs or list(SCREEN):
            if (args.data, name, args.budget) in key:
                continue
            rows = run(args.data, name, SCREEN[name], args, judge, reference, floor, x)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with args.results.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            done += rows
    print(HEADER)
    for r in done:
        print(table_row(r))


if __name__ == "__main__":
    main()
