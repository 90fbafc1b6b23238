r"""
ControlNet: steering a trained digits model with a hint
=======================================================

A ControlNet (Zhang, Rao & Agrawala 2023; :mod:`sdekit.networks.controlnet`) conditions a trained,
locked U-Net on a hint image. Here a tiny unconditional U-Net is trained on the 8×8 digits, then a
ControlNet on its 2× downsampled copies (:func:`sdekit.hints.downsample`: the 2×2 block means),
both through :class:`sdekit.training.Trainer`. The script shows

1. the controlled model at initialisation is the base network bit for bit, whatever the hint
   (the zero convolutions);
2. after training, the branch reads the hint: on held-out digits the denoising loss with each
   digit's own hint is well below the base's, and with another digit's hint (shuffled) above it;
3. the conditioning scale 0 gives the base model back exactly;
4. the hint RMSE (between the hint of a sample and the hint it was drawn with) of the controlled
   samples beside the base's, whose samples ignore the hint.

The default run trains the base for 250 steps and the ControlNet for 150 (about 45 CPU-seconds):
enough to show the mechanism, not for good digits, and at 150 steps the samples follow the hint
only a little (the loss already shows the branch uses it); ``--full`` trains ten times longer.
``benchmarks/controlnet.py`` measures it properly (and against a U-Net trained from scratch on the
hint).
"""

import argparse
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from sdekit.control import control_trainer
from sdekit.data import load_digits
from sdekit.hints import downsample, hint_error
from sdekit.inference import sample_from
from sdekit.training import TrainConfig, Trainer

parser = argparse.ArgumentParser(description="ControlNet on the digits")
parser.add_argument("--full", action="store_true", help="train ten times longer")
args = parser.parse_args()
torch.set_num_threads(1)
scale = 10 if args.full else 1

x, _ = load_digits()
held, train = x[:64], x[64:]  # hints from digits the models never saw
work_dir = tempfile.TemporaryDirectory()  # removed when the script ends
work = Path(work_dir.name)
tiny = dict(data="digits", channels=16, channel_mults=(1, 2), num_res_blocks=1, dropout=0.0,
            batch_size=64, lr=2e-3, warmup_steps=20, sample_every=0, checkpoint_every=0,
            log_every=10**6, device="cpu")  # fmt: skip
base_config = TrainConfig(**tiny, steps=250 * scale, out=str(work / "base"))
Trainer(base_config, data=(train, None), sample_grid=False).train()

# %%
# The ControlNet: the copy of the base's encoder starts at the base's weights, its residuals at 0.
trainer = control_trainer(work / "base" / "checkpoint.pt", "downsample", data=(train, None),
                          steps=150 * scale, out=str(work / "control"), lr=5e-3, warmup_steps=20,
                          log_every=10**6, sample_grid=False)  # fmt: skip
model = trainer.model
hints = downsample(held)
t = torch.full((64,), 0.5)
with torch.no_grad():
    same = torch.equal(model(held, t, {"hint": hints}), model.base(held, t))
print(f"at initialisation the controlled model equals the base bit for bit: {same}")
trainer.train()

# %%
# The denoising loss on the held-out digits (the same noise and times for every line): with their
# own hints, with the hints of other digits, and the base's.
ema = trainer.ema.module.eval()
shuffled = hints[torch.randperm(64, generator=torch.Generator().manual_seed(1))]


def held_out_loss(net, cond):
    with torch.no_grad():
        return float(
            trainer.loss_fn(net, held, cond=cond, generator=torch.Generator().manual_seed(2))
        )


base_loss = held_out_loss(model.base, None)
print(
    f"held-out loss: own hint {held_out_loss(ema, {'hint': hints}):.3f}, "
    f"shuffled hint {held_out_loss(ema, {'hint': shuffled}):.3f}, base {base_loss:.3f}"
)

# %%
# Samples of the base and of the controlled model (its EMA weights) from the same noise.


def draw(net, cond):
    generator = torch.Generator().manual_seed(0)
    return sample_from(net, trainer.sde, (64, 1, 8, 8), prediction="eps", cond=cond,
                       generator=generator).clamp(-1, 1)  # fmt: skip


base_samples = draw(model.base, None)
controlled = draw(ema, {"hint": hints})
ema.scale = 0.0
unscaled = draw(ema, {"hint": hints})
ema.scale = 1.0
print(f"scale 0 gives the base's samples bit for bit: {torch.equal(unscaled, base_samples)}")
for name, samples in [("base (no control)", base_samples), ("ControlNet", controlled)]:
    rmse = float(hint_error("downsample", samples, hints).mean().sqrt())
    print(f"hint RMSE of the {name} samples: {rmse:.3f}")

rows = [("digit", held), ("hint", hints), ("base", base_samples), ("ControlNet", controlled),
        ("its hint", downsample(controlled))]  # fmt: skip
fig, axes = plt.subplots(len(rows), 16, figsize=(9, 3.2))
for r, (name, images) in enumerate(rows):
    for i in range(16):
        axes[r, i].imshow(images[i, 0], cmap="gray", vmin=-1, vmax=1)
        axes[r, i].set_xticks([])
        axes[r, i].set_yticks([])
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
fig.suptitle("hints (2x downsampled held-out digits) and samples drawn with them")
out = Path("outputs")
out.mkdir(exist_ok=True)
fig.savefig(out / "plot_controlnet.png", dpi=110)
