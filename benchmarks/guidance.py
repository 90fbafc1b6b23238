r"""Guidance on the embedded digits, and guided sampling against peers on the exact oracle.

**Digits.** The 1797 scikit-learn digits are split as in ``quality_digits.py`` (its split and run
configuration are imported from there, the judge CNN and the Fréchet distance from ``judge.py``).
On the training digits the script trains, through :class:`sdekit.training.Trainer`,

- a class-conditional UNet with the command line's settings for the digits
  (:func:`sdekit.presets.preset`: EDM preconditioning on the VP SDE, log-normal noise levels,
  :math:`\hat x_0` clipped to [-1, 1] while sampling; what ``sdekit train --data digits
  --class-conditional --p-uncond 0.1`` trains) with label dropout ``--p-uncond`` to a learned null
  label, so that it also predicts the unconditional model (Ho & Salimans 2022);
- a noise-conditional classifier of the same size (:class:`sdekit.classifier.ClassifierTrainer`:
  :class:`~sdekit.networks.UNetClassifier`, the UNet's encoder with a pooled head) on :math:`x_t`
  of the same SDE at :math:`t \sim U[t_{\min}, T]`, as Dhariwal & Nichol
  (:class:`~sdekit.classifier.NoisyClassifierLoss`).

Guidance acts on the network's output, then :math:`\hat x_0` is clipped (the preset's bound;
:func:`sdekit.thresholding.thresholded`) and the samplers end with the denoising step, as
``sdekit sample`` does.

It then draws ``--n`` samples, the classes in turn, with DPM-Solver++(2M) (20 steps) and
Euler-Maruyama (100 steps, then Tweedie's denoising step), with classifier-free guidance at
``w`` in {0, 0.5, 1, 2, 4} (w = 0: the conditional model) and with classifier guidance of the
*unconditional* model (the null label) at ``s`` in {1, 2, 5} (the quick run: Euler-Maruyama only at
w = 0, w = 2 and s = 2). Per row:

- judge accuracy: the fraction of samples the judge classifies as the requested label;
- per-class Fréchet distance: between the judge's penultimate features of the samples of class
  ``c`` and those of the held-out digits of class ``c``, averaged over classes, beside its
  real-vs-real floor (as many training digits of class ``c`` against the same held-out ones);
- the pooled Fréchet distance of all samples against all held-out digits (as in
  ``quality_digits.py``), beside its floor.

Targets: accuracy >= 0.95 at w = 0; >= 0.99 with guidance at a per-class Fréchet distance at most
1.5x that of w = 0.

**Oracle.** A labelled 2D :class:`~sdekit.GaussianMixture` with narrow modes, the exact scores
(float64), the same ``x_T``: sdekit's ``dpmpp_2m``, diffusers' ``DPMSolverMultistepScheduler``
(DPM-Solver++(2M), linspace and trailing spacing) and k-diffusion's ``sample_dpmpp_2m`` (Karras
sigmas), all fed the same guided model through ``peers.py``:

- exact classifier guidance at s = 1, whose law is the class's own mixture: sliced :math:`W_1` to
  it, beside the Monte-Carlo floor;
- exact classifier-free guidance at w = 3 (no closed-form law): the mean distance of each sample
  from the same ``x_T``'s solution by the adaptive ODE solver at rtol = atol = 1e-8.

sdekit runs on its default grid (uniform in log-SNR) and on the grid uniform in :math:`t` (the
continuous counterpart of diffusers' spacings); ratios are to the default.

NFE is the number of guided-model calls (each one batched network call of 2B samples for CFG).

    python benchmarks/guidance.py            # quick: 4 + 1 CPU-minutes of training, 200 samples
    python benchmarks/guidance.py --full     # 8000 + 4000 steps, 500 samples, oracle N = 20,000

The load average (``uptime``) is printed beside the training times.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import sdekit
from sdekit.builders import sample_prediction
from sdekit.classifier import ClassifierTrainer
from sdekit.cli import train_config
from sdekit.data import load_digits
from sdekit.guidance import NULL_LABEL, classifier_free_guidance, classifier_guidance
from sdekit.metrics import sliced_w1
from sdekit.parameterization import from_score
from sdekit.sampling import fit_grid, sample
from sdekit.sde import broadcast_to_data
from sdekit.thresholding import thresholded
from sdekit.training import Trainer

sys.path.insert(0, str(Path(__file__).parent))
import peers as peer_lib  # noqa: E402
import quality_digits as qd  # noqa: E402
from judge import features, frechet_distance, load_average, train_classifier  # noqa: E402

OUT = Path("outputs")
METHODS = [("dpmpp_2m", 20), ("euler_maruyama", 100)]
CFG_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
CG_SCALES = (1.0, 2.0, 5.0)
UNET = dict(base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


# --- digits ---------------------------------------------------------------------------------------


def train(trainer: Trainer, minutes: float) -> tuple[float, float]:
    """Train until ``config.steps`` or ``minutes`` of this process's CPU time (so the result does
    not depend on the load of a shared machine); returns (CPU seconds, last loss)."""
    start = time.process_time()
    deadline = start + 60 * minutes
    loss = torch.zeros(())
    while trainer.step < trainer.config.steps and time.process_time() < deadline:
        loss = trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.process_time() - start, float(loss)


class DigitsJudge:
    """The judge CNN, the held-out features per class, and the real-vs-real floors."""

    def __init__(self, x_train, y_train, x_held, y_held, n: int, draws: int = 5):
        self.judge = train_classifier(x_train, y_train, channels=(32, 64), features=64, epochs=60)
        with torch.no_grad():
            self.accuracy = float((self.judge(x_held).argmax(1) == y_held).float().mean())
        self.held = features(self.judge, x_held)
        self.held_by_class = [features(self.judge, x_held[y_held == c]) for c in range(10)]
        # the floors: as many real training digits as samples (per class: as many of the class)
        labels = torch.arange(n) % 10
        g = torch.Generator().manual_seed(1)
        pooled, per_class = [], []
        for _ in range(draws):
            real = x_train[torch.randperm(x_train.shape[0], generator=g)[:n]]
            pooled.append(frechet_distance(features(self.judge, real), self.held))
            fds = []
            for c in range(10):
                pool = x_train[y_train == c]
                pick = pool[torch.randperm(pool.shape[0], generator=g)[: int((labels == c).sum())]]
                fds.append(frechet_distance(features(self.judge, pick), self.held_by_class[c]))
            per_class.append(float(np.mean(fds)))
        self.pooled_floor, self.class_floor = float(np.mean(pooled)), float(np.mean(per_class))

    def score(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
        """(judge accuracy on the requested labels, per-class FD, pooled FD)."""
        x, labels = x.float().cpu(), labels.cpu()
        with torch.no_grad():
            accuracy = float((self.judge(x).argmax(1) == labels).float().mean())
        feats = features(self.judge, x)
        fds = [
            frechet_distance(feats[(labels == c).numpy()], self.held_by_class[c]) for c in range(10)
        ]
        return accuracy, float(np.mean(fds)), frechet_distance(feats, self.held)


def digits(args, device) -> list[dict]:
    x, y = load_digits()
    train_idx, held_idx = qd.split(y, 500)
    x_train, y_train, x_held, y_held = x[train_idx], y[train_idx], x[held_idx], y[held_idx]
    start = time.perf_counter()
    judge = DigitsJudge(x_train, y_train, x_held, y_held, args.n)
    print(
        f"judge: {time.perf_counter() - start:.0f} s, held-out accuracy {judge.accuracy:.3f}; "
        f"floors: per-class FD {judge.class_floor:.2f}, pooled FD {judge.pooled_floor:.2f} "
        f"({args.n} samples)"
    )

    with tempfile.TemporaryDirectory() as out:
        common = {
            "data": "digits", "class_conditional": True, "device": str(device),
            "sample_every": 0, "checkpoint_every": 0,
        }  # fmt: skip
        config = train_config(
            {**common, "p_uncond": args.p_uncond, "steps": args.steps, "out": f"{out}/model"}
        )
        trainer = Trainer(config, data=(x_train, y_train))
        load_before = load_average()
        model_s, model_loss = train(trainer, args.minutes)
        clf_config = train_config(
            {**common, "t_sampling": "uniform", "steps": args.classifier_steps,
             "out": f"{out}/classifier"}
        )  # fmt: skip
        clf_trainer = ClassifierTrainer(clf_config, data=(x_train, y_train))
        clf_s, clf_loss = train(clf_trainer, args.classifier_minutes)
    load = max(load_before, load_average())
    print(
        f"UNet: {trainer.step} steps in {model_s:.0f} CPU s (last loss {model_loss:.4f}); classifier: "
        f"{clf_trainer.step} steps in {clf_s:.0f} CPU s (last cross-entropy {clf_loss:.3f}); "
        f"load average {load:.1f}, device {device}"
    )

    net, clf, sde = trainer.ema.module.eval(), clf_trainer.ema.module.eval(), trainer.sde
    prediction, bound = sample_prediction(trainer.config), trainer.config.sample_threshold
    print(f"UNet predicts {prediction}; x0-hat bound {bound}")
    labels = torch.arange(args.n, device=device) % 10

    def unconditional(x, t):
        return net(x, t, torch.full((x.shape[0],), NULL_LABEL, device=x.device))

    rows, gallery = [], {}
    guided_models = [("CFG", w, classifier_free_guidance(net, w=w)) for w in CFG_WEIGHTS]
    guided_models += [
        ("CG", s, classifier_guidance(unconditional, clf, scale=s, prediction=prediction, sde=sde))
        for s in CG_SCALES
    ]
    for method, steps in METHODS:
        for kind, weight, model in guided_models:
            if (kind, weight) not in args.em_rows and method == "euler_maruyama":
                continue
            start = time.process_time()
            x, info = draw(model, sde, labels, method, steps, prediction, bound)
            accuracy, class_fd, pooled_fd = judge.score(x, labels)
            if method == METHODS[0][0] and kind == "CFG":
                gallery[weight] = x.float().cpu()
            rows.append(
                dict(method=method, nfe=info.nfe, kind=kind, weight=weight, accuracy=accuracy,
                     class_fd=class_fd, pooled_fd=pooled_fd, seconds=time.process_time() - start)
            )  # fmt: skip
            print(
                f"  {method} {kind} {weight:g}: {time.process_time() - start:.0f} s CPU",
                file=sys.stderr,
            )

    print(
        "\n| method | NFE | guidance | weight | judge accuracy | per-class FD | floor | ratio "
        "| pooled FD | floor | sampling (CPU s) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['nfe']} | {r['kind']} | {r['weight']:g} | {r['accuracy']:.3f} | "
            f"{r['class_fd']:.2f} | {judge.class_floor:.2f} | {r['class_fd'] / judge.class_floor:.2f} "
            f"| {r['pooled_fd']:.2f} | {judge.pooled_floor:.2f} | {r['seconds']:.0f} |"
        )
    print()
    for method, _ in METHODS:
        base = next(
            r for r in rows if r["method"] == method and r["kind"] == "CFG" and not r["weight"]
        )
        fits = [
            r for r in rows
            if r["method"] == method and r is not base and r["class_fd"] <= 1.5 * base["class_fd"]
        ]  # fmt: skip
        best = max(fits, key=lambda r: r["accuracy"], default=None)
        verdict = "none within 1.5x FD" if best is None else (
            f"best {best['kind']} {best['weight']:g}: accuracy {best['accuracy']:.3f} at FD "
            f"{best['class_fd'] / base['class_fd']:.2f}x"
        )  # fmt: skip
        print(
            f"{method}: w = 0 accuracy {base['accuracy']:.3f} (target >= 0.95); guided, FD <= "
            f"1.5x that of w = 0: {verdict} (target >= 0.99)"
        )
    diffusers_peer(net, sde, labels, judge, prediction, bound)
    for r in rows:
        r.update(class_floor=judge.class_floor)
    save_gallery(gallery, labels.cpu(), args.plot.with_name(args.plot.stem + "_samples.png"))
    return rows


def draw(model, sde, labels: torch.Tensor, method: str, steps: int, prediction: str, bound: str):
    r"""Digits of ``labels`` from noise seed 0, as ``sdekit sample`` draws them: :math:`\hat x_0`
    bounded as the preset says, then the denoising step after a bound. Returns ``(x, info)``."""
    if bound != "none":
        model = thresholded(model, sde, prediction, method=bound)
    device = labels.device
    with torch.no_grad():
        return sample(
            model, sde, (labels.shape[0], 1, 8, 8), method=method, steps=steps,
            prediction=prediction, cond=labels, device=device,
            generator=torch.Generator(device).manual_seed(0),
            denoise_final=True if bound != "none" else None,
        )  # fmt: skip


def diffusers_peer(net, sde, labels, judge, prediction, bound) -> None:
    """The same network and sampler guided by diffusers' ``ClassifierFreeGuidance`` guider
    (``guidance_scale`` = 1 + w, ``guidance_rescale`` = phi) and by sdekit's, from the same noise."""
    try:
        from diffusers.guiders import ClassifierFreeGuidance
    except ImportError as e:
        print(f"\ndiffusers' guider: not installed ({e}); left out")
        return
    method, steps = METHODS[0]
    print(f"\n### The same network through diffusers' CFG guider ({method}, {steps} steps)")
    print("| w | phi | sdekit accuracy | diffusers accuracy | sdekit FD | diffusers FD "
          "| max abs sample difference |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for w, phi in ((2.0, 0.0), (2.0, 0.7)):
        guider = ClassifierFreeGuidance(guidance_scale=1 + w, guidance_rescale=phi)

        def theirs(x, t, cond, guider=guider):
            null = torch.full_like(cond, NULL_LABEL)
            return guider.forward(net(x, t, cond), net(x, t, null)).pred

        ours = classifier_free_guidance(net, w=w, rescale_phi=phi)
        out = []
        for model in (ours, theirs):
            x, _ = draw(model, sde, labels, method, steps, prediction, bound)
            out.append((x, judge.score(x, labels)))
        (xa, (acc_a, fd_a, _)), (xb, (acc_b, fd_b, _)) = out
        print(
            f"| {w:g} | {phi:g} | {acc_a:.3f} | {acc_b:.3f} | {fd_a:.2f} | {fd_b:.2f} "
            f"| {float((xa - xb).abs().max()):.1e} |"
        )


def save_gallery(samples: dict[float, torch.Tensor], labels: torch.Tensor, path: Path) -> None:
    """Rows: the digits; columns: the CFG weights; four samples of each digit per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(2.2 * len(samples), 5.6))
    for ax, (w, x) in zip(axes, samples.items(), strict=True):
        canvas = torch.full((10 * 9 + 1, 4 * 9 + 1), -1.0)
        for d in range(10):
            for k, img in enumerate(x[labels == d][:4]):
                canvas[1 + 9 * d : 9 + 9 * d, 1 + 9 * k : 9 + 9 * k] = img[0].clamp(-1, 1)
        ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"w = {w:g}")
        ax.set_yticks(5 + 9 * np.arange(10), [str(d) for d in range(10)])
        ax.set_xticks([])
    fig.suptitle(f"{METHODS[0][0]}, {METHODS[0][1]} steps: rows = requested digit")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"samples: {path}")


# --- oracle: guided sampling against peers --------------------------------------------------------

ORACLE = sdekit.GaussianMixture(
    [0.2, 0.3, 0.15, 0.35],
    [[-1.5, 0.5], [1.0, 1.2], [0.6, -1.2], [-0.4, -0.2]],
    [0.08, 0.12, 0.1, 0.06],
    labels=[0, 1, 0, 1],
)
CLASS = 1


def oracle_models(sde):
    """The two guided score functions of the comparison, as ``score(x, t)`` with the class fixed."""
    cg = classifier_guidance(ORACLE.score_fn(sde), ORACLE.classifier_fn(sde), scale=1.0)

    def conditional_eps(x, t, labels):
        alpha, sigma = (broadcast_to_data(c, x) for c in sde.marginal(t.to(torch.float64)))
        return from_score(ORACLE.class_score(x, labels, t, sde), "eps", x, alpha, sigma)

    cfg = classifier_free_guidance(conditional_eps, w=3.0)

    def fixed(model, to_score):
        def score(x, t):
            return to_score(model(x, t, torch.full((x.shape[0],), CLASS, device=x.device)), x, t)

        return score

    def eps_to_score(eps, x, t):
        return -eps / broadcast_to_data(sde.sigma(t.to(torch.float64)), x)

    return {
        "CG s=1 (exact law)": fixed(cg, lambda out, x, t: out),
        "CFG w=3": fixed(cfg, eps_to_score),
    }


def oracle(args, device) -> dict:
    sde = sdekit.VPSDE()
    runners = [
        p for p in peer_lib.peers(sde, spacings=("linspace", "trailing"))
        if p.name in ("k:dpmpp_2m", "d:DPM++2M[linspace]", "d:DPM++2M[trailing]")
    ]  # fmt: skip

    def ours(grid, method="dpmpp_2m"):
        def run(score, x_T, nfe, generator):
            x, info = sample(score, sde, x_T, method=method, steps=nfe, grid=grid)
            return x, info.nfe

        return run

    fits: dict = {}

    def fitted(method):
        # fit_grid on the guided model alone, from x_T draws other than the measured ones
        def run(score, x_T, nfe, generator):
            key = (id(score), method, nfe)
            if key not in fits:
                x_fit = torch.randn(args.fit_n, 2, generator=torch.Generator().manual_seed(77 + nfe),
                                    dtype=torch.float64).to(x_T.device)  # fmt: skip
                fits[key] = fit_grid(score, sde, x_fit, nfe, method=method)
            x, info = sample(score, sde, x_T, method=method, grid=fits[key].ts)
            return x, info.nfe

        return run

    # its default grid (uniform in log-SNR), the grid uniform in t that diffusers' spacing is, UniPC
    # and grids fitted to the guided model (sdekit.sampling.fit_grid)
    runners[:0] = [
        peer_lib.Peer("sdekit:dpmpp_2m", ours(None)),
        peer_lib.Peer("sdekit:dpmpp_2m[uniform t]", ours("uniform")),
        peer_lib.Peer("sdekit:unipc_2", ours(None, "unipc_2")),
        peer_lib.Peer("sdekit:dpmpp_2m[fitted]", fitted("dpmpp_2m")),
        peer_lib.Peer("sdekit:unipc_2[fitted]", fitted("unipc_2")),
    ]
    target = ORACLE.class_mixture(CLASS)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(args.oracle_n, 2, generator=g, dtype=torch.float64).to(device)
    floor = float(
        np.mean([
            sliced_w1(target.sample(args.oracle_n, generator=torch.Generator().manual_seed(10 + s)),
                      target, args.directions, generator=torch.Generator().manual_seed(7))
            for s in range(3)
        ])
    )  # fmt: skip
    results = {}
    for title, score in oracle_models(sde).items():
        exact_law = title.startswith("CG")
        if not exact_law:
            reference, _ = sample(score, sde, x_T, method="ode", rtol=1e-8, atol=1e-8)
        table = {}
        for runner in runners:
            for nfe in args.nfe:
                out = runner.run(score, x_T, nfe, torch.Generator(device).manual_seed(4))
                if out is None:
                    continue
                x, used = out
                if exact_law:
                    err = sliced_w1(
                        x, target, args.directions, generator=torch.Generator().manual_seed(7)
                    )
                else:
                    err = float((x - reference).norm(dim=1).mean())
                table.setdefault(runner.name, {})[nfe] = (err, used)
        results[title] = table
        metric = "sliced W1 to the class law" if exact_law else "mean |x - x_ref| (same x_T)"
        print(f"\n### Oracle, {title}: {metric}, N = {args.oracle_n}" + (
            f", Monte-Carlo floor {floor:.4f}" if exact_law else ""))  # fmt: skip
        names = list(table)
        print(
            "| NFE | "
            + " | ".join(names)
            + " | "
            + " | ".join(f"{n} / sdekit" for n in names[1:])
            + " |"
        )
        print("|---:|" + "---:|" * (2 * len(names) - 1))
        for nfe in args.nfe:
            ours_err = table["sdekit:dpmpp_2m"].get(nfe, (math.nan,))[0]
            errs = [table[n].get(nfe, (math.nan,))[0] for n in names]
            ratios = [e / ours_err for e in errs[1:]]
            print(
                f"| {nfe} | " + " | ".join(f"{e:.4f}" for e in errs) + " | "
                + " | ".join(f"{r:.2f}" for r in ratios) + " |"
            )  # fmt: skip
        print("\n| NFE | best sdekit | best peer | sdekit / peer |\n|---:|---|---|---:|")
        for nfe in args.nfe:
            best = {
                side: min((row[nfe][0], name) for name, row in table.items()
                          if name.startswith("sdekit:") == (side == "sdekit") and nfe in row)
                for side in ("sdekit", "peer")
            }  # fmt: skip
            (a, a_name), (b, b_name) = best["sdekit"], best["peer"]
            print(f"| {nfe} | {a:.4f} ({a_name}) | {b:.4f} ({b_name}) | {a / b:.2f} |")
        cost = [f"{k[1]} at NFE {k[2]}: {f.nfe} NFE, {f.seconds:.1f} s" for k, f in fits.items()
                if k[0] == id(score)]  # fmt: skip
        print(f"grids fitted on {args.fit_n} other x_T (one-off cost): "
              + "; ".join(cost))  # fmt: skip
    results["floor"] = floor
    return results


def plot(rows: list[dict], oracle_results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for method, _ in METHODS:
        for kind, marker in (("CFG", "o"), ("CG", "s")):
            sel = [r for r in rows if r["method"] == method and r["kind"] == kind]
            if not sel:
                continue
            fd = [r["class_fd"] / r["class_floor"] for r in sel]
            acc = [r["accuracy"] for r in sel]
            label = f"{method} {kind}"
            axes[0].plot([r["weight"] for r in sel], acc, marker=marker, label=label)
            axes[1].plot(fd, acc, marker=marker, label=label)
            for r, a, b in zip(sel, fd, acc, strict=True):
                axes[1].annotate(f"{r['weight']:g}", (a, b), fontsize=7)
    axes[0].set(xlabel="guidance weight (CFG: w, CG: s)", ylabel="judge accuracy on the label")
    axes[1].set(xlabel="per-class Fréchet distance / real-vs-real floor", ylabel="judge accuracy")
    axes[0].axhline(0.99, color="0.7", lw=0.8)
    axes[1].axhline(0.99, color="0.7", lw=0.8)
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    title = "CG s=1 (exact law)"
    for name, row in oracle_results.get(title, {}).items():
        nfes = sorted(row)
        axes[2].loglog(nfes, [row[n][0] for n in nfes], marker="o", label=name)
    if "floor" in oracle_results:
        axes[2].axhline(oracle_results["floor"], color="0.5", ls="--", label="Monte-Carlo floor")
    axes[2].set(xlabel="NFE (guided-model calls)", ylabel="sliced W1 to the class law",
                title="oracle: exact classifier guidance, s = 1")  # fmt: skip
    axes[2].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nfigure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the long run (see the module doc)")
    parser.add_argument("--minutes", type=float, help="UNet training, CPU minutes (quick 4)")
    parser.add_argument(
        "--classifier-minutes", type=float, help="classifier, CPU minutes (quick 1)"
    )
    parser.add_argument(
        "--steps", type=int, help="UNet training step cap (quick 100000, full 8000)"
    )
    parser.add_argument("--classifier-steps", type=int, help="classifier cap (full 4000)")
    parser.add_argument("--p-uncond", type=float, default=0.1, help="label-dropout probability")
    parser.add_argument("--n", type=int, help="digit samples per row (quick 200, full 500)")
    parser.add_argument("--oracle-n", type=int, help="oracle samples (quick 4000, full 20000)")
    parser.add_argument("--nfe", type=int, nargs="+", help="oracle NFE budgets")
    parser.add_argument("--directions", type=int, default=64, help="sliced-W1 directions")
    parser.add_argument("--fit-n", type=int, default=512, help="x_T draws the grids are fitted on")
    parser.add_argument("--skip-digits", action="store_true", help="only the oracle comparison")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--plot", type=Path, default=OUT / "guidance.png", help="figure path")
    args = parser.parse_args()
    full = args.full
    # quick: a CPU-time budget; full: a step budget
    args.minutes = args.minutes or (240.0 if full else 4.0)
    args.classifier_minutes = args.classifier_minutes or (120.0 if full else 1.0)
    args.steps = args.steps or (8000 if full else 100_000)
    args.classifier_steps = args.classifier_steps or (4000 if full else 100_000)
    args.n = args.n or (500 if full else 200)
    args.oracle_n = args.oracle_n or (20000 if full else 4000)
    # Euler-Maruyama's 100 steps cost 5x DPM-Solver++'s 20: the quick run samples three of its rows
    args.em_rows = (
        [("CFG", w) for w in CFG_WEIGHTS] + [("CG", s) for s in CG_SCALES]
        if full
        else [("CFG", 0.0), ("CFG", 2.0), ("CG", 2.0)]
    )
    args.nfe = args.nfe or ([5, 8, 10, 15, 20, 50] if full else [5, 10, 20])
    if not (args.minutes > 0 and args.classifier_minutes > 0) or args.n < 10:
        parser.error("--minutes and --classifier-minutes must be > 0 and --n >= 10")
    if min(args.steps, args.classifier_steps) < 1:
        parser.error("--steps and --classifier-steps must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    rows = [] if args.skip_digits else digits(args, device)
    oracle_results = oracle(args, device)
    plot(rows, oracle_results, args.plot)
    print(
        f"total {time.perf_counter() - start:.0f} s wall, "
        f"{time.process_time() - cpu_start:.0f} s CPU, load average {load_average():.1f}"
    )


if __name__ == "__main__":
    main()
