r"""Sample quality of a trained 2D model against the exact law: eight Gaussians on a ring.

The data is :data:`sdekit.data.GMM_2D` (eight modes of std 0.2 at radius 2), a
:class:`~sdekit.GaussianMixture`, so the quality of the samples is measured against the *exact*
law, not a reference sample: the sliced Wasserstein-1 distance
(:func:`sdekit.metrics.sliced_w1`, the same 64 random directions for every row) between ``n``
generated points and the mixture. No sampler of ``n`` points can beat, in expectation, the
Monte-Carlo floor: the same distance for ``n`` exact samples. Both are averaged over seeds (the
floor of one seed wobbles by tens of percent).

A small MLP is trained through :class:`sdekit.training.Trainer` on CPU (the target is a training
time of at most three minutes), then sampled with DPM-Solver++(2M) at 50 steps (50 NFE) and
three other methods. The target: sliced :math:`W_1 \le 2\times` the floor at 50 NFE with 10,000
samples. The last column runs the same sampler on the mixture's exact score: the part of the
error that is the sampler's, not the network's.

    python benchmarks/quality_toy.py                 # 10,000 samples, 3 seeds
    python benchmarks/quality_toy.py --full          # 50,000 samples (a 2.2x lower floor), more rows
    python benchmarks/quality_toy.py --set hidden=128 lr=2e-3   # override TrainConfig fields

The machine's load average (``uptime``) is printed beside the training time: on a shared machine
the wall-clock time grows with the load, the number of steps does not.
"""

from __future__ import annotations

import argparse
import ast
import os
import tempfile
import time

import torch

from sdekit.data import GMM_2D
from sdekit.losses import DenoisingScoreMatching
from sdekit.metrics import sliced_w1
from sdekit.networks import MLP, EDMPrecond
from sdekit.training import SDES, TrainConfig, Trainer

#: the tuned run (see the docs page "Training quality" for what was tried)
TOY_CONFIG = dict(
    data="gmm_2d",
    toy_size=100_000,
    sde="vp",
    prediction="edm",
    t_sampling="lognormal",
    hidden=256,
    depth=3,
    batch_size=1024,
    steps=5000,
    lr=3e-3,
    warmup_steps=100,
    ema_decay=0.999,
    sample_every=0,
    checkpoint_every=0,
    log_every=500,
)
#: EDM's sigma_data, and the lognormal noise levels, for this data (std 1.43 per coordinate, modes
#: of std 0.2) rather than EDM's images (0.5; P_mean = -1.2, P_std = 1.2)
SIGMA_DATA, P_MEAN, P_STD = 1.4, -0.5, 1.5
#: (method, steps) rows: each uses 50 model calls except the 200-step Euler-Maruyama reference
METHODS = [("dpmpp_2m", 50), ("heun", 25), ("ddim", 50), ("euler_maruyama", 49)]
FULL_METHODS = [*METHODS, ("euler_maruyama", 199), ("dpmpp_2m", 20)]


def parse_overrides(items: list[str]) -> dict:
    """``["hidden=128", "lr=2e-3"]`` -> ``{"hidden": 128, "lr": 0.002}`` (Python literals, else
    strings)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes field=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def edm_model_and_loss(config: TrainConfig) -> dict:
    """``model`` and ``loss_fn`` for :class:`Trainer`: the config's MLP behind
    :class:`~sdekit.networks.EDMPrecond` and the EDM loss, both with :data:`SIGMA_DATA` (the
    config's own builders use EDM's 0.5); nothing for other predictions."""
    if config.prediction != "edm":
        return {}
    sde = SDES[config.sde]()
    torch.manual_seed(config.seed)  # as the Trainer seeds the weights it builds
    model = EDMPrecond(MLP(2, config.hidden, config.depth), sde, sigma_data=SIGMA_DATA)
    loss = DenoisingScoreMatching(
        sde, "edm", config.weighting, config.t_sampling,
        sigma_data=SIGMA_DATA, p_mean=P_MEAN, p_std=P_STD,
    )  # fmt: skip
    return {"model": model, "loss_fn": loss}


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="50,000 samples, more rows")
    parser.add_argument("--device", default="cpu", help="torch device (training and sampling)")
    parser.add_argument("--n", type=int, help="samples per seed (default 10,000; full 50,000)")
    parser.add_argument("--seeds", type=int, help="seeds averaged (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides field=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (50_000 if args.full else 10_000)
    seeds = args.seeds or 3
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as out:
        values = {**TOY_CONFIG, **parse_overrides(args.set), "device": str(device), "out": out}
        config = TrainConfig.from_dict(values)
        trainer = Trainer(config, **edm_model_and_loss(config))
        load_before = load_average()
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start
        cpu_s = time.process_time() - cpu_start
    load = max(load_before, load_average())

    def score(x: torch.Tensor) -> float:
        # the same 64 directions for every row
        return sliced_w1(x.double().cpu(), GMM_2D, generator=torch.Generator().manual_seed(0))

    floor = (
        sum(
            score(GMM_2D.sample(n, generator=torch.Generator().manual_seed(1000 + s)))
            for s in range(seeds)
        )
        / seeds
    )

    print(
        f"\n{config.steps} steps in {train_s:.1f} s on {device} (load average {load:.1f}); ", end=""
    )
    print(f"{n} samples x {seeds} seeds; config {values}\n")
    print(
        "| train time (s) | CPU time (s) | load | steps | method | NFE | sliced W1 | MC floor | ratio "
        "| exact-score W1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    mixture_score = GMM_2D.score_fn(trainer.sde)

    def exact_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # the mixture lives on the CPU in float64
        return mixture_score(x.cpu().double(), t.cpu().double()).to(x)

    for method, steps in FULL_METHODS if args.full else METHODS:
        errors, exact_errors, nfe = [], [], None
        for s in range(seeds):
            g = torch.Generator(device).manual_seed(s)
            x, info = _sample(trainer.ema.module, trainer, n, method, steps, g, trainer.config)
            errors.append(score(x))
            nfe = info.nfe
            g = torch.Generator(device).manual_seed(s)
            x, _ = _sample(exact_score, trainer, n, method, steps, g, None)
            exact_errors.append(score(x))
        w1, exact = sum(errors) / seeds, sum(exact_errors) / seeds
        print(
            f"| {train_s:.0f} | {cpu_s:.0f} | {load:.1f} | {config.steps} | {method} | {nfe} | {w1:.4f} | "
            f"{floor:.4f} | {w1 / floor:.2f} | {exact:.4f} |"
        )


def _sample(model, trainer: Trainer, n, method, steps, generator, config: TrainConfig | None):
    """Samples of the trained ``model`` (``config`` given) or of the exact score (``None``)."""
    from sdekit.sampling import sample
    from sdekit.training import sample_prediction

    with torch.no_grad():
        return sample(
            model,
            trainer.sde,
            (n, 2),
            method=method,
            steps=steps,
            prediction=sample_prediction(config) if config else "score",
            generator=generator,
            device=trainer.device,
        )


if __name__ == "__main__":
    main()
