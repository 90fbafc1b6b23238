r"""Training settings per kind of data, the defaults of ``sdekit train``.

:class:`~sdekit.config.TrainConfig`'s own defaults suit the 2D toy sets. Image data gets the
fields of :func:`preset`: the base setting of the screening sweep ``benchmarks/sweep_images.py``
(EDM preconditioning, log-normal noise levels, :math:`\hat x_0` clipped while sampling), which beat
:math:`\varepsilon`-prediction at equal CPU time on the digits; for 28×28 images a 16-channel
network, which beat the 32-channel one at equal CPU time on Fashion-MNIST, and an EMA decay of
0.999, which beat 0.995 after 30 CPU-minutes there (5.04 against 5.28 times the Fréchet floor,
from the same run). Their quality after
10 and 30 CPU-minutes is what ``benchmarks/quality_images.py`` measures; the tables are on the
docs page "Training quality". A config file and explicit flags override them: values come from
the TrainConfig defaults, then the preset of ``data``, then ``--config``, then the flags.
"""

from __future__ import annotations

from .data import IMAGE_DATASETS, TOY_DATASETS

#: what every image preset shares: EDM preconditioning on the VP SDE with log-normal noise levels,
#: x0-hat clipped to [-1, 1] while sampling
_IMAGES = dict(
    sde="vp",
    prediction="edm",
    t_sampling="lognormal",
    sigma_data=0.5,
    num_res_blocks=1,
    dropout=0.0,
    warmup_steps=100,
    ema_decay=0.995,
    sample_threshold="clip",
)
#: the preset of each image size
PRESETS: dict[str, dict] = {
    "8x8": dict(_IMAGES, channels=32, channel_mults=(1, 2), batch_size=128, lr=2e-3),
    "28x28": dict(
        _IMAGES, channels=16, channel_mults=(1, 2, 2), batch_size=64, lr=2e-3, ema_decay=0.999
    ),
    "32x32": dict(_IMAGES, channels=32, channel_mults=(1, 2, 2), batch_size=64, lr=2e-3),
}
#: the preset each data set uses (folders of images: the 32x32 one)
DATA_PRESETS: dict[str, str] = {
    "digits": "8x8",
    "mnist": "28x28",
    "fashion_mnist": "28x28",
    "cifar10": "32x32",
    "folder": "32x32",
}


def preset(data: str) -> dict:
    """The :class:`~sdekit.config.TrainConfig` fields tuned for the data set ``data`` (none for
    the toy sets, whose settings are TrainConfig's defaults)."""
    if data in TOY_DATASETS:
        return {}
    if data not in IMAGE_DATASETS:
        names = [*TOY_DATASETS, *IMAGE_DATASETS]
        raise ValueError(f"data must be one of {names}, got {data!r}")
    return dict(PRESETS[DATA_PRESETS[data]])
