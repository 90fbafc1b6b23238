r"""The parts of a training run, each built from a :class:`~sdekit.config.TrainConfig` by one function.

:class:`~sdekit.training.Trainer` calls these in order; a trainer of another kind of model (a
noise-conditional classifier, a ControlNet, a learned-variance network) passes its own model, loss
or data to the Trainer and gets the rest from here:

1. :func:`load_data` and :func:`check_data`: the examples ``x`` and their condition ``cond``;
2. :func:`build_sde`: the forward SDE;
3. :func:`build_model`: the network (an MLP for vectors, a U-Net for images);
4. :func:`build_loss`: denoising score matching for the config's prediction and weighting;
5. :func:`trainable_parameters`, :func:`build_optimizer`: AdamW with a linear warm-up, over the
   parameters that require grad (a frozen base network is neither optimised nor averaged);
6. :func:`build_grad_scaler`, :func:`with_precision`: loss scaling and autocast for bf16/fp16.

:func:`sample_prediction` says what the built network's output is, as the samplers name it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .conditioning import Cond, check_cond
from .config import SDES, TrainConfig
from .data import load_dataset
from .linear import LinearSDE
from .losses import DenoisingScoreMatching
from .seeding import data_generator


def load_data(config: TrainConfig) -> tuple[torch.Tensor, Cond]:
    """``(x, cond)`` of ``config.data``: the labels are the condition when ``class_conditional``,
    else ``cond`` is ``None`` (a generated data set is drawn from ``(seed, 1)``)."""
    x, labels = load_dataset(
        config.data,
        root=config.data_root,
        n=config.toy_size,
        image_size=config.image_size,
        generator=data_generator(config.seed),
    )
    if config.class_conditional and labels is None:
        raise ValueError(f"class_conditional needs labels, data {config.data!r} has none")
    return x, labels if config.class_conditional else None


def check_data(x: torch.Tensor, cond: Cond) -> None:
    """Training data must be a floating-point ``(N, *data_shape)`` tensor of finite values, and
    ``cond`` ``None`` or per example (see :mod:`sdekit.conditioning`); ``ValueError`` otherwise,
    saying how many values are bad (one host sync, once)."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"data x must be a tensor (N, *data_shape), got {got}")
    if not x.is_floating_point():
        raise ValueError(
            f"data x must be a floating-point tensor, got {x.dtype}: convert it, e.g. x.float(), "
            "or for 8-bit images sdekit.data.to_model_range(x) (to [-1, 1])"
        )
    nan, inf = (int(v) for v in torch.stack([x.isnan().sum(), x.isinf().sum()]).tolist())
    if nan or inf:
        rows = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        raise ValueError(
            f"data x holds {nan} NaN and {inf} infinite values (in {rows} of {x.shape[0]} "
            "examples): remove or repair those examples before training"
        )
    check_cond(cond, x.shape[0])


def class_labels(cond: Cond) -> torch.Tensor | None:
    """The class labels of a condition: ``cond`` itself if a tensor, ``cond["labels"]`` in a
    mapping, else ``None``."""
    if isinstance(cond, Mapping):
        return cond.get("labels")
    return cond


def num_classes(config: TrainConfig, cond: Cond) -> int | None:
    """The number of classes a class-conditional run's network embeds (``max label + 1``);
    ``None`` unless ``class_conditional``."""
    if not config.class_conditional:
        return None
    labels = class_labels(cond)
    if labels is None or labels.is_floating_point() or labels.ndim != 1:
        raise ValueError(
            "class_conditional needs integer class labels (N,) as the condition, or under "
            f"cond['labels']; got {type(cond).__name__}"
        )
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    return int(labels.max()) + 1


def check_cond_for_built_model(config: TrainConfig, cond: Cond) -> None:
    """The networks of :func:`build_model` take class labels (``class_conditional``) or nothing."""
    if config.class_conditional:
        if not isinstance(cond, torch.Tensor):
            raise ValueError(
                "the network built for class_conditional takes a tensor of class labels as its "
                f"condition, got {type(cond).__name__}: pass data=(x, labels), or your own model"
            )
    elif cond is not None:
        raise ValueError(
            "data has a condition but the config's network is unconditional: set "
            "class_conditional=True for class labels, pass data=(x, None), or your own model"
        )


def build_sde(config: TrainConfig) -> LinearSDE:
    """The forward SDE ``config.sde``, with its default parameters."""
    return SDES[config.sde]()


def _unet_levels(side: int) -> int:
    """The most U-Net levels an image of this side allows (each level below the first halves it)."""
    levels = 1
    while side % 2**levels == 0:
        levels += 1
    return levels


def build_model(
    config: TrainConfig, data_shape: tuple[int, ...], num_classes: int | None, sde: LinearSDE
) -> nn.Module:
    """The network of ``config``: an :class:`~sdekit.networks.MLP` for vectors, a
    :class:`~sdekit.networks.UNet` for square images (attention at the lowest resolution),
    behind :class:`~sdekit.networks.EDMPrecond` for ``prediction="edm"``."""
    from .networks import MLP, EDMPrecond, UNet

    if len(data_shape) == 1:
        net = MLP(
            data_shape[0], config.hidden, config.depth, num_classes=num_classes,
            p_uncond=config.p_uncond,
        )  # fmt: skip
    elif len(data_shape) == 3 and data_shape[1] == data_shape[2]:
        side, levels = data_shape[1], len(config.channel_mults)
        if side % 2 ** (levels - 1):
            most = _unet_levels(side)
            raise ValueError(
                f"channel_mults {config.channel_mults} has {levels} levels, which halve the "
                f"images {levels - 1} times; the data's {side}x{side} images allow at most "
                f"{most} levels (e.g. channel_mults {config.channel_mults[:most]})"
            )
        net = UNet(
            data_shape[0],
            side,
            config.channels,
            config.channel_mults,
            config.num_res_blocks,
            attn_resolutions=(side // 2 ** (levels - 1),),
            dropout=config.dropout,
            num_classes=num_classes,
            p_uncond=config.p_uncond,
        )
    else:
        raise ValueError(f"data must be vectors (d,) or square images (C, H, H), got {data_shape}")
    if config.prediction == "edm":
        return EDMPrecond(net, sde, sigma_data=config.sigma_data)
    return net


def build_loss(config: TrainConfig, sde: LinearSDE) -> DenoisingScoreMatching:
    """Denoising score matching with the config's prediction, weighting and time sampling."""
    return DenoisingScoreMatching(
        sde,
        config.prediction,
        config.weighting,
        config.t_sampling,
        sigma_data=config.sigma_data,
        p_mean=config.p_mean,
        p_std=config.p_std,
    )


def sample_prediction(config: TrainConfig) -> str:
    """What the trained model predicts, as :func:`sdekit.sampling.sample` names it."""
    return "x0" if config.prediction == "edm" else config.prediction


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that require grad, the ones trained (raises if there are none)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameter that requires grad: there is nothing to train")
    return params


def build_optimizer(
    config: TrainConfig, params: list[nn.Parameter]
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (Loshchilov & Hutter 2019) over ``params`` and its schedule: the learning rate rises
    linearly to ``lr`` over ``warmup_steps``, :math:`\\eta_k = \\eta\\min(1, (k + 1)/K_w)`, then
    stays.

    The fused implementation (one kernel for all parameters, its step counter on the device, no
    host read of it) when every parameter is a floating-point tensor on a CPU or CUDA device, which
    torch (>= 2.4) fuses, else the default; the update is the same formula either way."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None
    )
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup else 1.0
    )
    return optimizer, scheduler


def build_grad_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for ``precision="fp16"`` (a no-op for fp32 and bf16)."""
    return torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")


class Autocast(nn.Module):
    """Runs ``net`` under autocast and hands float32 back, so the loss's arithmetic stays fp32."""

    def __init__(self, net: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.net, self.device_type, self.dtype = net, device_type, dtype

    def forward(self, x, t, *cond):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(x, t, *cond)
        return out.float()


def with_precision(net: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """``net`` itself for ``"fp32"``, else behind :class:`Autocast` in bf16 or fp16."""
    if precision == "fp32":
        return net
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return Autocast(net, device.type, dtype)
