r"""Inpainting against the exact posterior, and on the digits: every method, beside diffusers' RePaint.

**Oracle.** A 2D Gaussian mixture under the VP SDE (linear beta, T = 1, t_min = 1e-3) with its exact
score; the first coordinate is observed, :math:`x_1 = 0.6`, and the exact posterior of :math:`x_2`
is :meth:`sdekit.GaussianMixture.condition`. Each method draws ``--n`` samples; the error is
:math:`W_1` to the exact posterior, averaged over ``--seeds``, beside the Monte-Carlo floor (the
same distance for as many exact posterior samples, averaged over 20 draws). NFE is the exact number
of model calls per sample (``info.nfe``; for SMC per particle, the batch holding all particles).
Methods: replacement, RePaint (on DDIM with eta 1, its default step; ``(j, r)`` configurations,
the most grid steps whose NFE fits), SMCDiff and TDS at several particle counts, reconstruction
guidance. The peer: diffusers' ``RePaintScheduler`` on the 1000-step DDPM betas of the same SDE,
fed the exact :math:`\varepsilon` (``peers.diffusers_eps_model``), with the same ``(N, j, r)`` as
ours (same NFE), at ``eta`` 1 (DDPM, the paper's) and 0 (DDIM, diffusers' default); the ratio is
ours over theirs.

**Digits.** A UNet trained unconditionally on the scikit-learn digits' training split with
:class:`sdekit.training.Trainer` (``--minutes`` of CPU time, cached and resumed in ``--cache``) or
``--checkpoint``;
the judge CNN and the Fréchet distance of ``quality_digits.py``. Held-out digits are masked (centre
4x4 square, left half, 50% random pixels) or downsampled 2x; each method completes them at about
the same NFE, and the table gives the judge's agreement with the original digit's label and the
Fréchet distance of the completions to the held-out digits (beside the real-vs-real floor).

    python benchmarks/inpainting.py                 # quick: minutes on one core
    python benchmarks/inpainting.py --full          # N = 2000, NFE to 500, 256 particles
    python benchmarks/inpainting.py --part oracle   # or --part digits
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sdekit.inpainting import METHODS, inpaint, repaint_schedule
from sdekit.linear import VPSDE
from sdekit.measurements import Downsample, Mask, image_mask
from sdekit.metrics import w1_to_mixture
from sdekit.mixture import GaussianMixture
from sdekit.smc import ModelScore

sys.path.insert(0, str(Path(__file__).parent))
import peers as peer_lib  # noqa: E402
import quality_digits as qd  # noqa: E402

ORACLE = GaussianMixture([0.55, 0.45], [[-1.0, -1.5], [1.2, 1.5]], [[0.7, 0.5], [0.6, 0.5]])
ORACLE_MASK = torch.tensor([True, False])
ORACLE_Y = torch.tensor([0.6, float("nan")])
REPAINT = ((5, 2), (5, 5), (10, 10))  # (jump length j, resamples r)


def repaint_nfe(steps: int, j: int, r: int) -> int:
    """Model calls of RePaint's descent over ``steps`` grid steps (the same for diffusers')."""
    path = repaint_schedule(steps, j, r)
    return sum(b > a for a, b in zip(path, path[1:], strict=False))


def repaint_steps(budget: int, j: int, r: int, extra: int = 0) -> int | None:
    """The most grid steps whose RePaint NFE (+ ``extra``) fits ``budget``, if they leave room
    for a jump (``steps - 1 >= j``); else None."""
    fits = [n for n in range(j + 1, budget + 1) if repaint_nfe(n, j, r) + extra <= budget]
    return max(fits, default=None)


def diffusers_repaint(score, sde, obs, mask, steps, j, r, eta, generator):
    """diffusers' RePaint loop (its pipeline's) on the exact eps; ``(samples, model calls)``."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    scheduler = diffusers.RePaintScheduler(
        num_train_timesteps=1000, trained_betas=sde.discrete_betas(1000).numpy(), eta=eta,
        clip_sample=False,
    )  # fmt: skip
    scheduler.set_timesteps(steps, jump_length=j, jump_n_sample=r)
    model = peer_lib.diffusers_eps_model(score, sde, scheduler.alphas_cumprod)
    known = mask.to(obs.dtype).expand_as(obs)
    original = torch.nan_to_num(obs)
    x = torch.randn(obs.shape, generator=generator, dtype=obs.dtype)
    t_last, calls = scheduler.timesteps[0] + 1, 0
    for t in scheduler.timesteps:
        if t < t_last:
            eps = model(x, t)
            calls += 1
            x = scheduler.step(eps, t, x, original, known, generator=generator).prev_sample
        else:
            x = scheduler.undo_step(x, t_last, generator=generator)
        t_last = t
    return x, calls


def oracle(args) -> None:
    sde, dtype = VPSDE(), torch.float32
    score = ORACLE.score_fn(sde)
    post = ORACLE.condition(ORACLE_MASK, ORACLE_Y)
    n, seeds = args.n, range(args.seeds)
    obs = ORACLE_Y.to(dtype).expand(n, 2).clone()
    floors = [
        w1_to_mixture(post.sample(n, generator=torch.Generator().manual_seed(100 + s)), post)
        for s in range(20)
    ]
    floor = float(np.mean(floors))
    print(f"\n### Oracle: x_2 given x_1 = 0.6, N = {n}, {args.seeds} seeds, floor W1 {floor:.4f}")
    print(f"posterior weights {post.weights.numpy().round(3)} (prior {ORACLE.weights.numpy()})\n")
    print("| NFE | method | sampler | setting | NFE used | W1 | x floor | diffusers W1 | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")

    def ours(**kwargs):
        errors, nfe = [], 0
        for s in seeds:
            gen = torch.Generator().manual_seed(s)
            x, info = inpaint(score, sde, Mask(ORACLE_MASK), obs, generator=gen, dtype=dtype,
                              **kwargs)  # fmt: skip
            errors.append(w1_to_mixture(x[:, 1], post))
            nfe = info.nfe
        return float(np.mean(errors)), nfe

    def row(budget, method, sampler, setting, nfe, err, peer=None):
        peer_cols = f"{peer:.4f} | {err / peer:.2f}" if peer is not None else " | "
        print(f"| {budget} | {method} | {sampler} | {setting} | {nfe} | {err:.4f} | "
              f"{err / floor:.2f} | {peer_cols} |", flush=True)  # fmt: skip

    best = {}
    for budget in args.nfe:
        start = time.perf_counter()
        results = []
        for sampler in ("euler_maruyama", "ancestral", "dpmpp_2m"):
            steps = budget - 1 if sampler != "dpmpp_2m" else budget
            err, nfe = ours(method="replacement", sampler=sampler, steps=steps)
            results.append(("replacement", sampler, "", nfe, err, None))
        for j, r in REPAINT:
            steps = repaint_steps(budget, j, r)
            if steps is None:
                continue
            err, nfe = ours(method="repaint", sampler="ddim", eta=1.0, steps=steps, jump_length=j,
                            resamples=r)  # fmt: skip
            peer = None
            if args.peers:
                peer_errors = {}
                for eta in (1.0, 0.0):
                    errs = []
                    for s in seeds:
                        gen = torch.Generator().manual_seed(s)
                        x, _ = diffusers_repaint(score, sde, obs, ORACLE_MASK, steps, j, r, eta,
                                                 gen)  # fmt: skip
                        errs.append(w1_to_mixture(x[:, 1], post))
                    peer_errors[eta] = float(np.mean(errs))
                eta = min(peer_errors, key=peer_errors.get)
                peer = peer_errors[eta]
                best.setdefault(budget, {})["diffusers"] = min(
                    best.get(budget, {}).get("diffusers", 1e9), peer
                )
            setting = f"N={steps} j={j} r={r}" + (f", peer eta={eta:g}" if peer is not None else "")
            results.append(("repaint", "ddim, eta 1", setting, nfe, err, peer))
        for method in ("smcdiff", "tds"):
            for k in args.particles:
                if k * budget > args.max_particle_nfe:
                    continue
                err, nfe = ours(method=method, sampler="ancestral", steps=budget - 1, particles=k)
                results.append((method, "ancestral", f"K={k}", nfe, err, None))
        for scale in (1.0, 4.0):
            err, nfe = ours(method="guidance", sampler="euler_maruyama", steps=budget - 1,
                            scale=scale)  # fmt: skip
            results.append(("guidance", "euler_maruyama", f"w={scale:g}", nfe, err, None))
        for result in results:
            row(budget, *result)
        best.setdefault(budget, {})["ours"] = min(r[4] for r in results)
        print(f"<!-- NFE {budget}: {time.perf_counter() - start:.0f} s, load "
              f"{os.getloadavg()[0]:.1f} -->")  # fmt: skip
    print("\n| NFE | best of ours | best diffusers RePaint | ratio | floor |")
    print("|---|---|---|---|---|")
    for budget, b in best.items():
        peer = b.get("diffusers")
        ratio = f"{b['ours'] / peer:.2f}" if peer else ""
        peer_s = f"{peer:.4f}" if peer else ""
        print(f"| {budget} | {b['ours']:.4f} | {peer_s} | {ratio} | {floor:.4f} |")


# --- digits ----------------------------------------------------------------------------------


def add_digits_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="a trained digits checkpoint.pt")
    parser.add_argument("--minutes", type=float, help="UNet training, CPU minutes (3; full 20)")
    parser.add_argument("--cache", type=Path, help="where the trained UNet is cached",
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "sdekit" / "inpainting_digits")  # fmt: skip
    parser.add_argument("--images", type=int, help="held-out digits to complete (100; full 500)")
    parser.add_argument("--digit-nfe", type=int, help="NFE per method (default 50; full 100)")
    parser.add_argument("--digit-particles", type=int, help="SMC particles (default 4; full 8)")
    parser.add_argument("--digit-methods", nargs="+", help="only these rows (methods, diffusers)",
                        choices=(*METHODS, "diffusers"))  # fmt: skip


def digits_model(args, x_train):
    """The checkpoint's EMA model, or one trained for ``--minutes`` of this process's CPU time
    (not wall-clock: on a shared machine the same minutes of wall-clock buy fewer steps), cached
    and resumed from ``--cache``."""
    from sdekit.training import TrainConfig, Trainer, load_model

    path = args.checkpoint
    if path is None:
        out = args.cache / f"{args.minutes:g}-cpu-minutes"
        path, record = out / "checkpoint.pt", out / "cpu_seconds.json"
        spent = json.loads(record.read_text())["cpu_seconds"] if record.is_file() else 0.0
        if spent < 60 * args.minutes:
            config = TrainConfig.from_dict({**qd.DIGITS_CONFIG, "steps": 1_000_000,
                                            "out": str(out), "device": "cpu"})  # fmt: skip
            trainer = Trainer(config, data=(x_train, None))  # resumes from out/checkpoint.pt
            start, cpu0, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
            while spent + time.process_time() - cpu0 < 60 * args.minutes:
                loss = trainer.train_step()
                if (
                    trainer.step % 500 == 0
                    or spent + time.process_time() - cpu0 >= 60 * args.minutes
                ):
                    trainer.save()  # a crash keeps the progress: the next run resumes
                    now = spent + time.process_time() - cpu0
                    record.write_text(json.dumps({"cpu_seconds": now, "steps": trainer.step}))
            print(f"UNet: {trainer.step} steps, {spent + time.process_time() - cpu0:.0f} CPU s "
                  f"({time.perf_counter() - start:.0f} s wall this run, load "
                  f"{max(load, os.getloadavg()[0]):.1f}), last loss {float(loss):.4f}; cached at "
                  f"{path}")  # fmt: skip
        else:
            steps = json.loads(record.read_text())["steps"]
            print(f"UNet: cached {path} ({steps} steps, {spent:.0f} CPU s)")
    trained = load_model(path)
    if trained.num_classes is not None:
        raise ValueError(f"{path} is class-conditional; inpainting needs an unconditional model")
    return trained


def digit_operator(task: str):
    if task == "sr2":
        return Downsample((1, 8, 8), 2)
    return image_mask(task, (1, 8, 8), generator=torch.Generator().manual_seed(0))


def digits(args) -> None:
    from sdekit.data import load_digits
    from sdekit.training import sample_prediction

    images = args.images or (500 if args.full else 100)
    budget = args.digit_nfe or (100 if args.full else 50)
    particles = args.digit_particles or (8 if args.full else 4)
    args.minutes = args.minutes or (20.0 if args.full else 3.0)
    x, labels = load_digits()
    train_idx, held_idx = qd.split(labels, 500)
    x_train, y_train, x_held, y_held = (
        x[train_idx],
        labels[train_idx],
        x[held_idx],
        labels[held_idx],
    )
    start = time.perf_counter()
    judge = qd.train_classifier(x_train, y_train)
    with torch.no_grad():
        accuracy = float((judge(x_held).argmax(1) == y_held).float().mean())
        held_feat = judge.features(x_held).double().numpy()
    print(f"\n### Digits\n\njudge: {time.perf_counter() - start:.0f} s, held-out accuracy "
          f"{accuracy:.3f}")  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        floor = float(np.mean([
            qd.frechet_distance(judge.features(x_train[torch.randperm(len(x_train), generator=g)[
                :images]]).double().numpy(), held_feat) for _ in range(5)
        ]))  # fmt: skip
    trained = digits_model(args, x_train)
    model, sde, prediction = trained.model, trained.sde, sample_prediction(trained.config)
    x_eval, y_eval = x_held[:images], y_held[:images]

    def metrics(samples):
        with torch.no_grad():
            agree = float((judge(samples).argmax(1) == y_eval).float().mean())
            fd = qd.frechet_distance(judge.features(samples).double().numpy(), held_feat)
        return agree, fd

    score = ModelScore(model, sde, prediction, None)  # the peer's exact-eps adapter takes a score

    # RePaint on DDIM with eta = 1, the DDPM step with the posterior variance (diffusers' eta 1);
    # ancestral's sigma^2 = beta leaves ~sigma_{t_{N-1}} of noise at N = 10 (guide, 'Default run')
    j, r = 5, 5
    rsteps = repaint_steps(budget, j, r)
    if rsteps is None:
        raise ValueError(f"--digit-nfe {budget} leaves no room for RePaint's (j, r) = ({j}, {r})")
    configs = [
        ("replacement", "euler_maruyama", {"steps": budget - 1}),
        ("repaint", "ddim", {"steps": rsteps, "jump_length": j, "resamples": r, "eta": 1.0}),
        ("smcdiff", "ancestral", {"steps": budget - 1, "particles": particles}),
        ("tds", "ancestral", {"steps": budget - 1, "particles": particles}),
        ("guidance", "euler_maruyama", {"steps": budget - 1}),
    ]
    print(
        f"\n{images} held-out digits, about {budget} NFE per method (SMC: per particle, "
        f"{particles} particles); Fréchet floor (real vs real, {images} digits) {floor:.2f}\n"
    )
    print("| task | method | sampler | NFE | label agreement | Fréchet distance | x floor | s |")
    print("|---|---|---|---|---|---|---|---|")
    agree, fd = metrics(x_eval)
    print(f"| originals | | | | {agree:.3f} | {fd:.2f} | {fd / floor:.2f} | |")
    for task in ("centre", "left", "random", "sr2"):
        op = digit_operator(task)
        obs = op(x_eval)
        for method, sampler, options in configs:
            if args.digit_methods and method not in args.digit_methods:
                continue
            start = time.perf_counter()
            gen = torch.Generator().manual_seed(0)
            out, info = inpaint(model, sde, op, obs, method=method, sampler=sampler,
                                prediction=prediction, generator=gen, **options)  # fmt: skip
            agree, fd = metrics(out)
            label = sampler + (f", eta {options['eta']:g}" if "eta" in options else "")
            print(f"| {task} | {method} | {label} | {info.nfe} | {agree:.3f} | {fd:.2f} | "
                  f"{fd / floor:.2f} | {time.perf_counter() - start:.0f} |", flush=True)  # fmt: skip
        if (
            args.peers
            and isinstance(op, Mask)
            and "diffusers" in (args.digit_methods or ["diffusers"])
        ):
            start = time.perf_counter()
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                out, calls = diffusers_repaint(score, sde, obs, op.mask, rsteps, j, r, 1.0, gen)
            agree, fd = metrics(out.float())
            print(f"| {task} | diffusers RePaint (eta 1) | | {calls} | {agree:.3f} | {fd:.2f} | "
                  f"{fd / floor:.2f} | {time.perf_counter() - start:.0f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the long run")
    parser.add_argument("--part", choices=("oracle", "digits", "both"), default="both")
    parser.add_argument("--n", type=int, help="oracle samples (default 1000; full 2000)")
    parser.add_argument("--seeds", type=int, help="oracle seeds (default 2; full 3)")
    parser.add_argument("--nfe", type=int, nargs="+", help="oracle NFE budgets")
    parser.add_argument("--particles", type=int, nargs="+", help="SMC particle counts")
    parser.add_argument("--max-particle-nfe", type=int, default=25_600,
                        help="skip SMC runs whose particles x NFE exceed this (CPU time)")  # fmt: skip
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="skip diffusers")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    add_digits_arguments(parser)
    args = parser.parse_args()
    args.n = args.n or (2000 if args.full else 1000)
    args.seeds = args.seeds or (3 if args.full else 2)
    args.nfe = args.nfe or ([25, 50, 100, 200, 500] if args.full else [25, 50, 100])
    args.particles = args.particles or ([4, 16, 64, 256] if args.full else [4, 16, 64])
    if args.n < 2 or args.seeds < 1 or min(args.nfe) < 3 or min(args.particles) < 1:
        parser.error("need --n >= 2, --seeds >= 1, --nfe >= 3, --particles >= 1")
    torch.set_num_threads(args.threads)
    if args.peers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not installed: its RePaint is left out")
            args.peers = False
    start = time.perf_counter()
    if args.part in ("oracle", "both"):
        oracle(args)
    if args.part in ("digits", "both"):
        digits(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
