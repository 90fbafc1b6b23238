r"""Sample quality of a UNet trained on the 8×8 digits, judged by a classifier trained in the same run.

The 1797 scikit-learn digits are split once (seeded, stratified) into a training set and a
held-out set of ``--holdout`` images. On the training set the script trains

- a small CNN classifier (two convolutions, a 64-unit penultimate layer), whose held-out accuracy
  is printed: it is the judge, so it must be good;
- a UNet score model on the VP SDE through :class:`sdekit.training.Trainer`, for ``--minutes``
  of wall-clock time at most (or ``--steps``, whichever comes first).

Then it draws as many samples as there are held-out images with each sampler, and reports

- the classifier's mean max-softmax on them (confident classes: digit-like images) and the
  histogram of the predicted classes (an unconditional model should give about 10% each);
- the Fréchet distance (Heusel et al. 2017, the FID formula) between Gaussians fitted to the
  classifier's penultimate features of the samples and of the held-out digits,
  :math:`\lVert\mu_1 - \mu_2\rVert^2 + \operatorname{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})`,
  printed beside its real-vs-real floor: the same distance from held-out digits to as many
  *training* digits (two disjoint real sets of the same size), averaged over draws. A perfect
  model would reach the floor, not zero.

    python benchmarks/quality_digits.py                  # ~2 minutes of training
    python benchmarks/quality_digits.py --minutes 20     # the longest CPU setting
    python benchmarks/quality_digits.py --device cuda --minutes 5 --steps 40000

The load average (``uptime``) is printed beside the training time: on a shared machine the same
minutes buy fewer steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdekit.data import load_digits
from sdekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from judge import features, frechet_distance, load_average, real_floor, train_classifier  # noqa: E402

#: the UNet run; ``steps`` is an upper bound, ``--minutes`` usually ends training first
DIGITS_CONFIG = dict(
    data="digits",
    sde="vp",
    prediction="eps",
    channels=32,
    channel_mults=(1, 2),
    num_res_blocks=1,
    dropout=0.1,
    batch_size=128,
    lr=1e-3,
    warmup_steps=200,
    ema_decay=0.999,
    sample_every=0,
    checkpoint_every=0,
)
METHODS = [("dpmpp_2m", 20), ("euler_maruyama", 99)]


def split(labels: torch.Tensor, holdout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, held_out)``: ``holdout`` images, stratified by class, seeded."""
    from sklearn.model_selection import train_test_split

    train, held_out = train_test_split(
        np.arange(labels.numel()), test_size=holdout, stratify=labels.numpy(), random_state=0
    )
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(held_out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training wall-clock cap")
    parser.add_argument("--steps", type=int, default=100_000, help="training step cap")
    parser.add_argument("--holdout", type=int, default=500, help="held-out digits (and samples)")
    parser.add_argument("--device", default="cpu", help="torch device (UNet and sampling)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--save", help="write the EMA samples of the first method here (.pt)")
    args = parser.parse_args()
    if not args.minutes > 0 or args.steps < 1:
        parser.error(f"--minutes must be > 0 and --steps >= 1, got {args.minutes}, {args.steps}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    x, y = load_digits()
    train_idx, held_idx = split(y, args.holdout)
    x_train, y_train, x_held, y_held = x[train_idx], y[train_idx], x[held_idx], y[held_idx]
    n = x_held.shape[0]
    if train_idx.numel() < n:
        raise ValueError(f"holdout must leave at least as many training digits, got {n}")

    start = time.perf_counter()
    judge = train_classifier(x_train, y_train, channels=(32, 64), features=64, epochs=60)
    with torch.no_grad():
        accuracy = float((judge(x_held).argmax(1) == y_held).float().mean())
    held_feat = features(judge, x_held)
    print(f"classifier: {time.perf_counter() - start:.0f} s, held-out accuracy {accuracy:.3f}")

    # the floor: held-out digits against as many training digits, over draws
    floor, real = real_floor(judge, x_train, held_feat)

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_dict(
            {**DIGITS_CONFIG, "steps": args.steps, "device": str(device), "out": out}
        )
        trainer = Trainer(config, data=(x_train, None))
        load_before = load_average()
        start, cpu_start = time.perf_counter(), time.process_time()
        deadline = start + 60 * args.minutes
        while trainer.step < config.steps and time.perf_counter() < deadline:
            loss = trainer.train_step()
        final_loss = float(loss)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start
        cpu_s = time.process_time() - cpu_start
    load = max(load_before, load_average())
    print(
        f"UNet ({sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f} M parameters): "
        f"{trainer.step} steps in {train_s:.0f} s on {device} (load average {load:.1f}), "
        f"last loss {final_loss:.4f}; {n} samples per method"
    )

    def row(name: str, nfe: str, x: torch.Tensor, fd: float) -> str:
        with torch.no_grad():
            probs = F.softmax(judge(x), 1)
        conf = float(probs.max(1).values.mean())
        hist = " ".join(str(int(c)) for c in torch.bincount(probs.argmax(1), minlength=10))
        return (
            f"| {train_s:.0f} | {cpu_s:.0f} | {load:.1f} | {trainer.step} | {name} | {nfe} | {fd:.2f} | "
            f"{floor:.2f} | {fd / floor:.2f} | {conf:.3f} | {hist} |"
        )

    print(
        "\n| train time (s) | CPU time (s) | load | steps | method | NFE | Fréchet distance "
        "| real-vs-real floor | ratio | mean max-softmax | class histogram 0-9 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    real_fd = frechet_distance(features(judge, real), held_feat)
    print(row("real training digits", "", real, real_fd))
    for i, (method, steps) in enumerate(METHODS):
        samples, info = _sample(trainer, n, method, steps)
        samples = samples.float().cpu()
        if i == 0 and args.save:
            torch.save(samples, args.save)
        fd = frechet_distance(features(judge, samples), held_feat)
        print(row(method, str(info.nfe), samples, fd))


def _sample(trainer: Trainer, n: int, method: str, steps: int):
    from sdekit.sampling import sample
    from sdekit.training import sample_prediction

    with torch.no_grad():
        return sample(
            trainer.ema.module,
            trainer.sde,
            (n, *trainer.data_shape),
            method=method,
            steps=steps,
            prediction=sample_prediction(trainer.config),
            generator=torch.Generator(trainer.device).manual_seed(0),
            device=trainer.device,
        )


if __name__ == "__main__":
    main()
