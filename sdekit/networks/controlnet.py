r"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding conditional control to text-to-image diffusion
models", §3): spatial control of a trained, locked :class:`~sdekit.networks.UNet`.

The trained U-Net :math:`F(x, t, y)` is frozen. Its input convolution, encoder, middle block and
time/label embedding are copied (a deep copy of the current weights) into a trainable branch
:math:`\mathcal C`, which also receives the hint :math:`c` (an edge map, a low-resolution copy, a
masked image) through a small hint encoder :math:`E` whose last convolution is zero-initialised.
Every output of the copy that the locked decoder concatenates (the skips :math:`s_i`) and the
middle block's output :math:`m` pass through their own zero-initialised :math:`1\times1`
convolution :math:`Z` and are added to the locked network's:

.. math:: \hat s_i = s_i + \lambda\,Z_i\bigl(s_i^{\mathcal C}\bigr), \qquad
          \hat m = m + \lambda\,Z_\text{mid}\bigl(m^{\mathcal C}\bigr), \qquad
          h^{\mathcal C}_0 = \operatorname{conv_{in}}^{\mathcal C}(x) + E(c),

and the locked decoder runs on :math:`(\hat m, \hat s)` (paper eq. 2 with the copy's input
:math:`x + Z(c)`; here the hint enters after the copy's input convolution, as in the reference
code). :math:`\lambda` is the conditioning scale; :math:`\lambda = 0` is the base model exactly.

*Why training starts at the base model.* Every :math:`Z` has weight and bias zero, so every
residual is exactly zero and the output equals the base's bit for bit, whatever the hint.

*Why it still learns.* For a :math:`1\times1` convolution :math:`Z(u) = Wu + b`,
:math:`\partial L/\partial W = \sum_\text{pixels} (\partial L/\partial Z)\,u^\top` and
:math:`\partial L/\partial b = \sum_\text{pixels} \partial L/\partial Z`: neither involves
:math:`W`, so both are non-zero although :math:`W = 0` (the copy's features :math:`u` are the base's,
non-zero). What is zero at the first step is the gradient that flows *through* :math:`Z` into the
copy and the hint encoder, :math:`W^\top\,\partial L/\partial Z`; after one optimiser step
:math:`W \neq 0` and it flows. No random noise is ever added to the locked network's features.

*The locked base.* :class:`ControlledUNet` requires a base whose parameters do not require grad,
and keeps it in eval mode whatever the mode of the controlled model (``.train()`` reaches only the
control branch): the base's dropout is off, so it computes the same function in training and at
sampling, the function it was trained to be. Its state dict holds the control branch alone, with
the fingerprint of the base it belongs to (:func:`fingerprint`); loading it onto another base
raises :class:`BaseMismatchError`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from ..checkpoint import state_digest
from .preconditioning import EDMPrecond
from .unet import UNet, embed, run_encoder

#: the entries a controlled model's condition may hold
COND_KEYS = ("hint", "labels")


class BaseMismatchError(ValueError):
    """A control branch was given a base network other than the one it was trained on."""


def fingerprint(module: nn.Module) -> str:
    """The SHA-256 digest of ``module.state_dict()``: every tensor's key, dtype, shape and bytes, in
    key order (:func:`sdekit.checkpoint.state_digest`). Two bases with the same fingerprint compute
    the same function."""
    return state_digest(dict(module.state_dict()))


def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _skip_channels(unet: UNet) -> list[int]:
    """The channels of every tensor the decoder concatenates, in the encoder's order."""
    channels = [unet.conv_in.out_channels]
    for layer in unet.down:
        resblock = isinstance(layer, nn.ModuleList)
        channels.append(layer[0].conv2.out_channels if resblock else layer.out_channels)
    return channels


class ControlNet(nn.Module):
    r"""The trainable branch of a ControlNet (module docs): a copy of ``unet``'s embedding, input
    convolution, encoder and middle block, a hint encoder and the zero convolutions.

    Build it with :meth:`from_unet`. Called as ``control(x, hint, t, labels)``, it returns
    ``(skip_residuals, mid_residual)``: one tensor per skip of ``unet`` (shaped like that skip)
    and one for the middle block's output, all zero at initialisation.

    Args:
        unet: the trained base network; its current weights are copied (the base is not modified
            and not kept).
        hint_channels: channels of the hint image.
        hint_size: side of the (square) hint: ``unet.image_size`` times a power of two; the hint
            encoder halves it with stride-2 convolutions down to the first feature resolution, the
            image's (default: ``unet.image_size``).
        hint_hidden: channels of the hint encoder's first layers, doubled at every halving (16 in
            the paper, which halves a 512-pixel hint three times).
    """

    def __init__(
        self,
        unet: UNet,
        hint_channels: int,
        *,
        hint_size: int | None = None,
        hint_hidden: int = 16,
    ):
        super().__init__()
        if not isinstance(unet, UNet):
            raise TypeError(
                f"unet must be a sdekit.networks.UNet, got {type(unet).__name__} (for a network "
                "behind EDMPrecond pass its .net, see sdekit.networks.controlnet.base_unet)"
            )
        for name, value in (("hint_channels", hint_channels), ("hint_hidden", hint_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        size = unet.image_size if hint_size is None else hint_size
        ratio = 0
        if isinstance(size, int) and not isinstance(size, bool) and size % unet.image_size == 0:
            ratio = size // unet.image_size
        if ratio < 1 or ratio & (ratio - 1):
            raise ValueError(
                f"hint_size must be the image size {unet.image_size} times a power of two "
                f"(1, 2, 4, ...), got {hint_size!r}"
            )
        halvings = ratio.bit_length() - 1
        self.in_channels, self.image_size = unet.in_channels, unet.image_size
        self.hint_channels, self.hint_size = hint_channels, size
        self.skip_channels = _skip_channels(unet)

        # the trainable copy: the base's current weights, whatever their requires_grad
        for name in ("time", "label", "conv_in", "down", "mid"):
            setattr(self, name, copy.deepcopy(getattr(unet, name)).requires_grad_(True))

        layers: list[nn.Module] = [nn.Conv2d(hint_channels, hint_hidden, 3, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(hint_hidden, hint_hidden, 3, padding=1), nn.SiLU()]
        width = hint_hidden
        for _ in range(halvings):
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU()]
            width *= 2
        layers.append(_zero(nn.Conv2d(width, unet.conv_in.out_channels, 3, padding=1)))
        self.hint_encoder = nn.Sequential(*layers)
        self.zero_convs = nn.ModuleList(_zero(nn.Conv2d(c, c, 1)) for c in self.skip_channels)
        mid_channels = unet.mid[2].conv2.out_channels
        self.mid_out = _zero(nn.Conv2d(mid_channels, mid_channels, 1))
        w = unet.conv_in.weight
        for module in (self.hint_encoder, self.zero_convs, self.mid_out):
            module.to(device=w.device, dtype=w.dtype)
        digest = bytes.fromhex(fingerprint(unet))
        self.register_buffer(
            "base_sha256", torch.tensor(list(digest), dtype=torch.uint8, device=w.device)
        )
        self.train()

    @classmethod
    def from_unet(
        cls,
        unet: UNet,
        hint_channels: int,
        *,
        hint_size: int | None = None,
        hint_hidden: int = 16,
    ) -> ControlNet:
        """The control branch of ``unet`` (see the class docs for the arguments)."""
        return cls(unet, hint_channels, hint_size=hint_size, hint_hidden=hint_hidden)

    @property
    def base_fingerprint(self) -> str:
        """The :func:`fingerprint` of the base this branch was copied from (hex)."""
        return bytes(self.base_sha256.tolist()).hex()

    def check_hint(self, hint: torch.Tensor, batch: int) -> None:
        """``hint`` must be a floating-point ``(batch, hint_channels, hint_size, hint_size)``
        tensor (``ValueError`` naming the expected shape otherwise)."""
        expected = (batch, self.hint_channels, self.hint_size, self.hint_size)
        if not isinstance(hint, torch.Tensor):
            raise ValueError(
                f"hint must be a tensor of shape {expected}, got {type(hint).__name__}"
            )
        if tuple(hint.shape) != expected:
            raise ValueError(
                f"hint must have shape (batch, hint_channels, hint_size, hint_size) = {expected}, "
                f"got {tuple(hint.shape)}"
            )
        if not hint.is_floating_point():
            raise ValueError(f"hint must be a floating-point tensor, got {hint.dtype}")

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        self.check_hint(hint, x.shape[0])
        emb = embed(self.time, self.label, t, labels)
        h = self.conv_in(x) + self.hint_encoder(hint.to(x.dtype))
        h, skips = run_encoder(h, emb, self.down, self.mid)
        return [z(s) for z, s in zip(self.zero_convs, skips, strict=True)], self.mid_out(h)


def _check_frozen(base: nn.Module) -> None:
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(
            f"base must be frozen, but {len(trainable)} of its parameters require grad (first: "
            f"{trainable[0]!r}): call base.requires_grad_(False) (a ControlNet trains its control "
            "branch only; an unfrozen base would be changed by the optimiser)"
        )


def _state_without_base(module, state, prefix, local_metadata) -> None:
    for key in [k for k in state if k.startswith(prefix + "base.")]:
        del state[key]
    metadata = getattr(state, "_metadata", {})
    for key in [k for k in metadata if k == prefix + "base" or k.startswith(prefix + "base.")]:
        del metadata[key]


def _load_onto_base(module, state, prefix, *_) -> None:
    held = [k for k in state if k.startswith(prefix + "base.")]
    if held:
        raise ValueError(
            f"the state to load holds base weights ({held[0]!r}, ...); a controlled model's "
            "state dict is its control branch alone: build the base from its own checkpoint"
        )
    key = prefix + "control.base_sha256"
    if key in state:
        saved, current = bytes(state[key].tolist()).hex(), fingerprint(module.base)
        if saved != current:
            raise BaseMismatchError(
                f"this control branch belongs to the base with fingerprint {saved[:16]}..., but "
                f"the base it is loaded onto has {current[:16]}...: load it onto the base it was "
                "trained on (same checkpoint, same EMA/raw weights)"
            )
    # the locked base keeps its own tensors (copied onto themselves: nothing changes)
    for name, value in module.base.state_dict(keep_vars=True).items():
        state[prefix + "base." + name] = value


class ControlledUNet(nn.Module):
    r"""A locked :class:`~sdekit.networks.UNet` steered by a :class:`ControlNet` (module docs):
    ``model(x, t, cond)`` with ``cond = {"hint": (batch, C, H, W), "labels": (batch,)}``
    (``"labels"`` only for a class-conditional base).

    The condition takes the same path as class labels through :func:`sdekit.sample`, the losses
    and the :class:`~sdekit.training.Trainer`, so every sampler drives it. Its ``state_dict`` is
    the control branch's (keys ``control.*``), checked against the base on load.

    Args:
        base: the trained network the control branch was copied from, frozen
            (``base.requires_grad_(False)``); kept in eval mode.
        control: its :class:`ControlNet`.
        scale: the conditioning scale :math:`\lambda \ge 0` (0: the base model exactly, 1: as
            trained); the attribute :attr:`scale` may be changed between calls.
    """

    def __init__(self, base: UNet, control: ControlNet, scale: float = 1.0):
        super().__init__()
        if not isinstance(base, UNet):
            raise TypeError(
                f"base must be a sdekit.networks.UNet, got {type(base).__name__} (a base behind "
                "EDMPrecond: use sdekit.networks.controlnet.controlled)"
            )
        if not isinstance(control, ControlNet):
            raise TypeError(f"control must be a ControlNet, got {type(control).__name__}")
        _check_frozen(base)
        if control.base_fingerprint != fingerprint(base):
            raise BaseMismatchError(
                f"control was copied from the base with fingerprint "
                f"{control.base_fingerprint[:16]}..., this base has {fingerprint(base)[:16]}...: "
                "give it the base it was built and trained on"
            )
        self.base = base.eval()
        self.control = control
        self.scale = scale
        self.register_state_dict_post_hook(_state_without_base)
        self.register_load_state_dict_pre_hook(_load_onto_base)

    @property
    def scale(self) -> float:
        """The conditioning scale :math:`\\lambda`."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else math.nan  # fmt: skip
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {value!r}")
        self._scale = number

    def train(self, mode: bool = True) -> ControlledUNet:
        """Sets the control branch's mode; the locked base stays in eval mode (module docs)."""
        super().train(mode)
        self.base.eval()
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]):
        hint, labels = _hint_and_labels(cond)
        self.control.check_hint(hint, x.shape[0])
        if self.training and torch.is_grad_enabled():
            _check_frozen(self.base)
        h, skips, emb = self.base.encode(x, t, labels)
        if self._scale == 0:
            return self.base.decode(h, skips, emb)
        residuals, mid = self.control(x, hint, t, labels)
        if self._scale != 1:
            residuals, mid = [self._scale * r for r in residuals], self._scale * mid
        skips = [s + r for s, r in zip(skips, residuals, strict=True)]
        return self.base.decode(h + mid, skips, emb)


def _hint_and_labels(cond) -> tuple[torch.Tensor, torch.Tensor | None]:
    usage = (
        "cond must be a mapping {'hint': (batch, C, H, W)} (plus 'labels' for a "
        "class-conditional base)"
    )
    if not isinstance(cond, Mapping):
        got = "a tensor: pass cond={'hint': hint}" if isinstance(cond, torch.Tensor) else (
            type(cond).__name__)  # fmt: skip
        raise ValueError(f"{usage}, got {got}")
    unknown = sorted(set(cond) - set(COND_KEYS))
    if unknown or "hint" not in cond:
        raise ValueError(f"{usage}; got the keys {sorted(cond)}")
    return cond["hint"], cond.get("labels")


def base_unet(model: nn.Module) -> UNet:
    """The :class:`~sdekit.networks.UNet` of a trained model: the model itself, or the network
    inside :class:`~sdekit.networks.EDMPrecond`."""
    net = model.net if isinstance(model, EDMPrecond) else model
    if not isinstance(net, UNet):
        raise TypeError(f"a ControlNet controls a sdekit UNet (images), got {type(net).__name__}")
    return net


def controlled(model: nn.Module, control: ControlNet, scale: float = 1.0) -> nn.Module:
    """``model`` (a frozen UNet, or one behind :class:`~sdekit.networks.EDMPrecond`) steered by
    ``control``: a :class:`ControlledUNet`, behind the same preconditioning if ``model`` has one
    (its scale is then ``result.net.scale``)."""
    net = ControlledUNet(base_unet(model), control, scale)
    if isinstance(model, EDMPrecond):
        return EDMPrecond(net, model.sde, model.sigma_data)
    return net
