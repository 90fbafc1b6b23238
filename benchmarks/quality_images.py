r"""Sample quality on Fashion-MNIST (28×28) with the settings a user gets from the command line.

The run is what ``python -m sdekit train --data fashion_mnist`` does: the IDX files read by
:func:`sdekit.data.load_mnist` (the Debian package ``dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist``; without them the script says so and exits cleanly), the
command line's preset for 28×28 data (:func:`sdekit.presets.preset`, through
:func:`sdekit.cli.train.train_config`) and its sampler, with :math:`\hat x_0` bounded as the preset's
``sample_threshold`` says (:meth:`sdekit.training.Trainer.sample`, as the grids are drawn). Training runs for
``--minutes`` of process CPU time (one thread; on CUDA: wall time), and at every checkpoint in
``--minutes`` the EMA weights are judged by the classifier of ``judge.py``, trained on the 60,000
training images (its test accuracy is printed):

- the Fréchet distance in its 64 penultimate features between ``--n`` samples and ``--n`` test
  images, beside the real-vs-real floor (``--n`` training images against the same test images,
  mean of five draws);
- its mean max-softmax and the histogram of its classes (an unconditional model should give
  about 10% each);
- the fraction of saturated pixels, outside the data range :math:`[-1, 1]`, and of those more than
  one 8-bit grey level outside (:math:`\lvert x\rvert > 1 + 2/255`), with the preset's bound and
  without it (``sample_threshold none``: the model as it is, ending at :math:`x_{t_\min}`).

``--also-steps`` judges the preset's sampler at other numbers of steps too, ``--save`` keeps the
final checkpoint. ``--ema-decays`` adds moving averages of other lengths to the same run (the
preset's warm-up; an average never changes the trained weights, so each row is what that
``ema_decay`` would give), judged with the preset's bound.

Targets (issue 9): after 30 CPU-minutes a distance of at most 5 times the floor with under 1% of
the pixels saturated, and samples recognisable in the grid (written to ``--grid``).

    python benchmarks/quality_images.py                          # 10 and 30 CPU-minutes
    python benchmarks/quality_images.py --minutes 2 --n 200      # a quick look
    python benchmarks/quality_images.py --ema-decays 0.999 0.9995  # EMA lengths, same run
    python benchmarks/quality_images.py --device cuda --minutes 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from sdekit.checkpoint import save_checkpoint
from sdekit.cli import train_config
from sdekit.data import FASHION_MNIST_DEBIAN, load_dataset
from sdekit.ema import EMA
from sdekit.figures import save_samples
from sdekit.training import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from judge import cached_classifier, features, judge_samples, load_average, real_floor  # noqa: E402


def row(r: tuple, floor: float) -> str:
    """One line of the results' table (a row is the head's cells, then the scores)."""
    *head, s = r
    hist = " ".join(map(str, s["histogram"]))
    return (
        f"| {' | '.join(map(str, head))} | {s['fd']:.2f} | {floor:.2f} | {s['fd'] / floor:.2f} "
        f"| {100 * s['saturated']:.2f}% | {100 * s['visibly_saturated']:.2f}% | "
        f"{s['max_abs']:.2f} | {s['confidence']:.3f} | {hist} |"
    )


def sample_average(trainer: Trainer, average: EMA, n: int, threshold: str) -> torch.Tensor:
    """``trainer.sample`` (the run's sampler and seed) from another moving average."""
    kept, trainer.ema = trainer.ema, average
    try:
        return trainer.sample(n, threshold=threshold).cpu()
    finally:
        trainer.ema = kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 30], help="budgets")
    parser.add_argument("--n", type=int, default=1000, help="samples and test images")
    parser.add_argument("--data-root", default=FASHION_MNIST_DEBIAN, help="the IDX files")
    parser.add_argument("--device", default="cpu", help="torch device (UNet and sampling)")
    parser.add_argument("--judge-cache", help="save/load the judge's weights here (.pt)")
    parser.add_argument("--grid", default="outputs/quality_images_{minutes}.png")
    parser.add_argument("--ema-decays", type=float, nargs="*", default=[], help="extra EMAs")
    parser.add_argument("--also-steps", type=int, nargs="*", default=[], help="sampler steps")
    parser.add_argument("--save", type=Path, help="write the final checkpoint here")
    args = parser.parse_args()
    if min(args.minutes) <= 0 or args.n < 10:
        parser.error(f"--minutes must be > 0 and --n >= 10, got {args.minutes}, {args.n}")
    try:
        x, y = load_dataset("fashion_mnist", root=args.data_root)
        xr, yr = load_dataset("fashion_mnist", root=args.data_root, split="test")
    except FileNotFoundError as e:
        print(f"skipped: Fashion-MNIST not found ({e})")
        return 0
    torch.set_num_threads(1)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    judge, judge_s = cached_classifier(x, y, (32, 64, 64), 64, epochs=3, cache=args.judge_cache)
    with torch.no_grad():
        accuracy = float((judge(xr).argmax(1) == yr).float().mean())
    reference = features(judge, xr[: args.n])
    floor, real = real_floor(judge, x, reference)
    print(f"judge: {judge_s:.0f} CPU s to train, test accuracy {accuracy:.3f}")

    rows = [("real training images", "", "", "", "", judge_samples(judge, real, reference))]
    with tempfile.TemporaryDirectory() as out:
        flags = {"data": "fashion_mnist", "device": args.device, "out": out, "steps": 10**9}
        if args.data_root != FASHION_MNIST_DEBIAN:
            flags["data_root"] = args.data_root
        trainer = Trainer(train_config(flags))
        cfg = trainer.config
        params = sum(p.numel() for p in trainer.model.parameters())
        print(
            f"UNet {params / 1e6:.2f} M parameters, {cfg.prediction} on {cfg.sde}, batch "
            f"{cfg.batch_size}, lr {cfg.lr:g}, EMA {cfg.ema_decay:g}; sampler {cfg.sample_method} "
            f"at {cfg.sample_steps} steps, x0-hat bound {cfg.sample_threshold}; {args.n} samples; "
            f"device {device}"
        )
        averages = [EMA(trainer.model, d, warmup=cfg.ema_warmup) for d in args.ema_decays]
        clock = time.perf_counter if cuda else time.process_time
        start, wall, loads = clock(), time.perf_counter(), [load_average()]
        for minutes in sorted(args.minutes):
            while clock() - start < 60 * minutes:
                trainer.train_step()
                tick = clock()
                for average in averages:
                    average.update(trainer.model)
                start += clock() - tick  # the extra averages are not the run's training time
            if cuda:
                torch.cuda.synchronize()
            used, loads = clock() - start, [*loads, load_average()]
            head = (f"{used / 60:.1f}", f"{(time.perf_counter() - wall) / 60:.0f}", trainer.step)
            for threshold in dict.fromkeys((cfg.sample_threshold, "none")):
                samples = trainer.sample(args.n, threshold=threshold).cpu()
                scores = judge_samples(judge, samples, reference)
                nfe = cfg.sample_steps + (threshold != "none")  # + the final denoising step
                rows.append((*head, f"{cfg.ema_decay:g}", f"{nfe}, {threshold}", scores))
                print(row(rows[-1], floor), flush=True)
                if threshold == cfg.sample_threshold:
                    grid = Path(args.grid.format(minutes=f"{minutes:g}"))
                    save_samples(samples[:64], grid)
                    print(f"grid after {minutes:g} minutes: {grid}", flush=True)
            for steps in args.also_steps:
                threshold = cfg.sample_threshold
                samples = trainer.sample(args.n, steps=steps, threshold=threshold).cpu()
                nfe = steps + (threshold != "none")
                scores = judge_samples(judge, samples, reference)
                rows.append((*head, f"{cfg.ema_decay:g}", f"{nfe}, {threshold}", scores))
                print(row(rows[-1], floor), flush=True)
            for average in averages:
                threshold = cfg.sample_threshold
                scores = judge_samples(
                    judge, sample_average(trainer, average, args.n, threshold), reference
                )
                nfe = cfg.sample_steps + (threshold != "none")
                rows.append((*head, f"{average.decay:g}", f"{nfe}, {threshold}", scores))
                print(row(rows[-1], floor), flush=True)
            start += clock() - start - used  # sampling and judging are not training time
        if args.save:
            save_checkpoint(trainer.state_dict(), args.save)

    unit = "GPU wall" if cuda else "CPU"
    print(
        f"\n| {unit} min | wall min | steps | EMA | NFE, threshold | Fréchet distance | floor | "
        "ratio | saturated | > 1 grey level | max abs | mean max-softmax | class histogram 0-9 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(row(r, floor))
    print(f"\nload average {min(loads):.1f}-{max(loads):.1f} (uptime) during training")
    nfe = cfg.sample_steps + (cfg.sample_threshold != "none")
    preset = f"{cfg.ema_decay:g}", f"{nfe}, {cfg.sample_threshold}"
    last = [s for *h, s in rows if (h[3], h[4]) == preset][-1]
    ok = last["fd"] <= 5 * floor and last["saturated"] < 0.01
    print(
        f"target after {max(args.minutes):g} minutes (FD <= 5x floor, < 1% saturated): "
        f"{'met' if ok else 'missed'} ({last['fd'] / floor:.2f}x, {100 * last['saturated']:.2f}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
