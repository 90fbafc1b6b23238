"""ControlNet: the U-Net split, the copy, the zero convolutions, the locked base, hints, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sdekit.control import (
    control_trainer,
    load_controlled,
    read_images,
    with_hint_dropout,
    zero_hint,
)
from sdekit.hints import downsample, hint_error, make_hints, random_mask, sobel_edges
from sdekit.inference import load_model
from sdekit.linear import VPSDE
from sdekit.losses import DenoisingScoreMatching
from sdekit.networks import EDMPrecond, UNet
from sdekit.networks.controlnet import (
    BaseMismatchError,
    ControlledUNet,
    ControlNet,
    controlled,
    fingerprint,
)
from sdekit.training import TrainConfig, Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def unet(seed=0, **kw) -> UNet:
    torch.manual_seed(seed)
    config = dict(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
                  num_res_blocks=1, attn_resolutions=(4,))  # fmt: skip
    return UNet(**{**config, **kw})


def frozen(seed=0, **kw) -> UNet:
    return unet(seed, **kw).requires_grad_(False).eval()


def batch(n=4, c=1, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), 0.01 + 0.99 * torch.rand(n, generator=g)


def trained_like(control: ControlNet, seed=3) -> ControlNet:
    """Give every parameter of the branch random values (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in control.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return control


def monolithic_forward(net: UNet, x, t, labels=None):
    """UNet.forward as it was written before the encode/decode split (one loop)."""
    emb = F.silu(net.label(net.time(t), labels))
    h = net.conv_in(x)
    skips = [h]
    for layer in net.down:
        h = layer[1](layer[0](h, emb)) if isinstance(layer, nn.ModuleList) else layer(h)
        skips.append(h)
    h = net.mid[2](net.mid[1](net.mid[0](h, emb)), emb)
    for layer in net.up:
        if isinstance(layer, nn.ModuleList):
            h = layer[1](layer[0](torch.cat([h, skips.pop()], dim=1), emb))
        else:
            h = layer(h)
    return net.conv_out(F.silu(net.norm_out(h)))


# --- the U-Net split


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(
            in_channels=3,
            image_size=16,
            channel_mults=(1, 2, 2),
            num_classes=5,
            attn_resolutions=(8, 4),
            num_res_blocks=2,
        ),
    ],  # fmt: skip
)
def test_unet_encode_decode_is_the_forward_bitwise(kw):
    net = unet(**kw).eval()
    x, t = batch(c=net.in_channels, size=net.image_size)
    labels = torch.arange(4) % 5 if kw else None
    out = net(x, t, labels)
    assert torch.equal(out, monolithic_forward(net, x, t, labels))
    h, skips, emb = net.encode(x, t, labels)
    kept = list(skips)
    assert torch.equal(net.decode(h, skips, emb), out) and skips == kept  # skips not consumed
    keys = list(net.state_dict())
    assert keys[:4] == ["time.0.freqs", "time.1.weight", "time.1.bias", "time.3.weight"]
    assert {"conv_in.weight", "down.0.0.conv1.weight", "mid.1.qkv.weight", "conv_out.bias"} <= set(
        keys
    )


# --- the network at initialisation


def test_the_copy_holds_the_base_weights_exactly_in_its_own_tensors():
    base = frozen()
    control = ControlNet.from_unet(base, hint_channels=2)
    for name in ("time", "label", "conv_in", "down", "mid"):
        ours, theirs = getattr(control, name).state_dict(), getattr(base, name).state_dict()
        assert list(ours) == list(theirs)
        for key in theirs:
            assert torch.equal(ours[key], theirs[key])
            assert ours[key].data_ptr() != theirs[key].data_ptr()  # a copy, not the same tensor
    assert all(p.requires_grad for p in control.parameters()) and control.training
    assert not any(p.requires_grad for p in base.parameters())
    assert control.base_fingerprint == fingerprint(base)
    # one zero 1x1 convolution per skip the decoder concatenates, one for the middle block
    _, skips, _ = base.encode(*batch())
    assert [z.in_channels for z in control.zero_convs] == [s.shape[1] for s in skips]
    for conv in [*control.zero_convs, control.mid_out, control.hint_encoder[-1]]:
        assert not conv.weight.any() and not conv.bias.any()
    assert control.hint_encoder[0].weight.any()  # only the last hint layer is zero


BASE_WITH_LABELS = frozen(num_classes=4)


@settings(max_examples=15, deadline=None)
@given(
    hint_seed=st.integers(0, 2**31 - 1),
    magnitude=st.sampled_from([0.0, 1.0, 1e4]),
    scale=st.sampled_from([0.5, 1.0, 3.0]),
    train_mode=st.booleans(),
)
def test_at_initialisation_the_output_is_the_base_bitwise_for_any_hint(
    hint_seed, magnitude, scale, train_mode
):
    base = BASE_WITH_LABELS
    model = ControlledUNet(base, ControlNet.from_unet(base, hint_channels=2), scale=scale)
    model.train(train_mode)
    x, t = batch()
    g = torch.Generator().manual_seed(hint_seed)
    cond = {"hint": magnitude * torch.randn(4, 2, 8, 8, generator=g), "labels": torch.arange(4)}
    assert torch.equal(model(x, t, cond), base(x, t, cond["labels"]))
    assert not base.training  # the locked base stays in eval mode


def test_zero_convolutions_get_gradients_at_once_the_rest_one_step_later():
    """dL/dW = sum over pixels of dL/dout x input: non-zero although W = 0; what flows back
    through a zero convolution (W^T dL/dout) is zero, so the copy waits one step."""
    base = frozen()
    control = ControlNet.from_unet(base, hint_channels=1)
    model = ControlledUNet(base, control)
    x, t = batch(8)
    hint = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    seen = {}
    control.mid_out.register_forward_hook(lambda m, inp, out: seen.update(u=inp[0], out=out))

    def grads():
        control.zero_grad(set_to_none=True)
        out = model(x, t, {"hint": hint})
        seen["out"].retain_grad()
        out.square().mean().backward()
        return {n: p.grad for n, p in control.named_parameters()}

    g = grads()
    zero_conv = {n for n in g if n.startswith(("zero_convs.", "mid_out."))}
    assert all(g[n].abs().sum() > 0 for n in zero_conv)
    assert all(not g[n].any() for n in g if n not in zero_conv)  # copy and hint encoder: 0
    u, dout = seen["u"], seen["out"].grad
    expected = torch.einsum("bchw,bdhw->cd", dout, u)[:, :, None, None]
    assert torch.allclose(g["mid_out.weight"], expected, rtol=1e-5, atol=1e-9)
    assert torch.allclose(g["mid_out.bias"], dout.sum((0, 2, 3)), rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in base.parameters())

    opt = torch.optim.SGD(control.parameters(), lr=0.1)
    opt.step()
    g = grads()
    assert g["down.0.0.conv1.weight"].abs().sum() > 0  # the copy learns from the second step
    assert g["hint_encoder.4.weight"].abs().sum() > 0  # and the hint encoder's last layer
    assert not g["hint_encoder.0.weight"].any()  # whose input layers wait one more step
    opt.step()
    assert grads()["hint_encoder.0.weight"].abs().sum() > 0


def test_scale_multiplies_the_residuals_and_zero_is_the_base():
    base = frozen()
    control = trained_like(ControlNet.from_unet(base, hint_channels=1))
    x, t = batch()
    hint = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    model = ControlledUNet(base, control, scale=0.0).eval()  # no dropout in the copy
    assert torch.equal(model(x, t, {"hint": hint}), base(x, t))
    residuals, mid = control(x, hint, t)
    h, skips, emb = base.encode(x, t)
    for s in (1.0, 2.5):
        model.scale = s
        expected = base.decode(
            h + s * mid, [a + s * r for a, r in zip(skips, residuals, strict=True)], emb
        )
        assert torch.allclose(model(x, t, {"hint": hint}), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(model(x, t, {"hint": hint}), base(x, t), atol=1e-3)
    for bad in (-1.0, math.nan, "1"):
        with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
            model.scale = bad


def test_hint_encoder_halves_a_larger_hint_to_the_first_feature_resolution():
    base = frozen()
    control = trained_like(ControlNet.from_unet(base, hint_channels=3, hint_size=32))
    strided = [m.stride for m in control.hint_encoder if isinstance(m, nn.Conv2d)]
    assert strided.count((2, 2)) == 2
    residuals, mid = control(*batch()[:1], torch.randn(4, 3, 32, 32), batch()[1])
    assert residuals[0].shape == (4, 8, 8, 8) and mid.shape == (4, 16, 4, 4)
    for size in (12, 4, 0):
        with pytest.raises(ValueError, match="hint_size must be the image size 8 times a power"):
            ControlNet.from_unet(base, 1, hint_size=size)


# --- the state dict holds the control branch and belongs to one base


def test_state_dict_is_the_control_branch_and_round_trips_bitwise():
    base = frozen()
    model = ControlledUNet(base, trained_like(ControlNet.from_unet(base, 1))).eval()
    state = model.state_dict()
    assert state and all(k.startswith("control.") for k in state)
    assert "control.base_sha256" in state
    torch.manual_seed(99)  # another random hint encoder, overwritten by the load
    fresh = ControlledUNet(base, ControlNet.from_unet(base, 1)).eval()
    fresh.load_state_dict(state)
    x, t = batch()
    cond = {"hint": torch.randn(4, 1, 8, 8)}
    assert torch.equal(fresh(x, t, cond), model(x, t, cond))
    # the same behind EDM preconditioning: the hooks see the prefix
    edm = controlled(EDMPrecond(base, VPSDE()), trained_like(ControlNet.from_unet(base, 1))).eval()
    state = edm.state_dict()
    assert all(k.startswith("net.control.") for k in state)
    other = controlled(EDMPrecond(base, VPSDE()), ControlNet.from_unet(base, 1)).eval()
    other.load_state_dict(state)
    assert torch.equal(other(x, t, cond), edm(x, t, cond))


def test_a_control_branch_refuses_another_base():
    base, other = frozen(0), frozen(1)
    control = ControlNet.from_unet(base, 1)
    with pytest.raises(BaseMismatchError, match="this base has"):
        ControlledUNet(other, control)
    state = ControlledUNet(base, control).state_dict()
    target = ControlledUNet(other, ControlNet.from_unet(other, 1))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(BaseMismatchError, match="the base it is loaded onto has"):
        target.load_state_dict(state)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    # the same base in another precision is another base
    with pytest.raises(BaseMismatchError):
        ControlledUNet(frozen(0).double(), control)
    with pytest.raises(ValueError, match="holds base weights"):
        ControlledUNet(base, control).load_state_dict(
            {**state, **{"base." + k: v for k, v in base.state_dict().items()}}
        )


# --- what the controlled model refuses


def test_bad_hints_and_conditions_are_clear_errors():
    base = frozen()
    model = ControlledUNet(base, ControlNet.from_unet(base, 2))
    x, t = batch()
    cases = [
        (
            {"hint": torch.zeros(4, 1, 8, 8)},
            r"hint must have shape .* = \(4, 2, 8, 8\), got \(4, 1",
        ),
        ({"hint": torch.zeros(4, 2, 16, 16)}, r"= \(4, 2, 8, 8\), got \(4, 2, 16, 16\)"),
        ({"hint": torch.zeros(3, 2, 8, 8)}, r"= \(4, 2, 8, 8\), got \(3, 2, 8, 8\)"),
        ({"hint": torch.zeros(4, 2, 8, 8, dtype=torch.long)}, "floating-point"),
        ({"hints": torch.zeros(4, 2, 8, 8)}, r"cond must be a mapping \{'hint'.*keys \['hints'\]"),
        (torch.zeros(4, 2, 8, 8), r"got a tensor: pass cond=\{'hint': hint\}"),
        ({"hint": torch.zeros(4, 2, 8, 8), "labels": torch.arange(4)}, "unconditional model"),
    ]
    for cond, message in cases:
        with pytest.raises(ValueError, match=message):
            model(x, t, cond)
    with pytest.raises(ValueError, match="hint_channels must be an integer >= 1"):
        ControlNet.from_unet(base, 0)
    with pytest.raises(TypeError, match="unet must be a sdekit.networks.UNet"):
        ControlNet.from_unet(nn.Linear(2, 2), 1)


def test_a_base_that_is_not_frozen_is_a_clear_error():
    base = unet()
    control = ControlNet.from_unet(base, 1)
    with pytest.raises(ValueError, match=r"base must be frozen.*base.requires_grad_\(False\)"):
        ControlledUNet(base, control)
    model = ControlledUNet(base.requires_grad_(False), control)
    base.conv_out.requires_grad_(True)  # unfrozen after the fact: training refuses it
    x, t = batch()
    cond = {"hint": torch.zeros(4, 1, 8, 8)}
    with pytest.raises(ValueError, match=r"2 of its parameters require grad \(first: 'conv_out"):
        DenoisingScoreMatching(VPSDE(), "eps")(model, x, cond=cond)
    with torch.no_grad():
        model(x, t, cond)  # sampling is not training


# --- hints


def test_sobel_edges_closed_forms():
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.equal(sobel_edges(flat), -torch.ones(2, 3, 8, 8))  # no edge anywhere
    step = torch.ones(1, 1, 8, 8)
    step[..., :4] = -1  # a vertical edge between columns 3 and 4, height 2
    edges = sobel_edges(step)
    # columns 3 and 4 see a difference of 2 across the kernel: |d/dx| = (1 + 2 + 1) * 2 / 8 = 1
    assert torch.allclose(edges[..., 3], torch.full((8,), math.sqrt(2) - 1))
    assert torch.allclose(edges[..., 4], torch.full((8,), math.sqrt(2) - 1))
    assert torch.equal(edges[..., :3], -torch.ones(1, 1, 8, 3))
    # a horizontal edge gives the transposed map: both kernels are used
    assert torch.allclose(sobel_edges(step.transpose(-1, -2)), edges.transpose(-1, -2))
    # a checkerboard in [-1, 1] reaches the top of the range at no pixel beyond 1
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert sobel_edges(x).max() <= 1 + 1e-6 and sobel_edges(x).min() >= -1


def test_downsample_and_mask_hints():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    low = downsample(x)
    assert torch.allclose(low[:, :, 2:4, 6:8], x[:, :, 2:4, 6:8].mean((2, 3), keepdim=True)
                          .expand(3, 1, 2, 2))  # fmt: skip
    assert torch.equal(downsample(low), low)  # the hint of its own hint
    masked = random_mask(x, keep=0.25, generator=torch.Generator().manual_seed(0))
    assert masked.shape == (3, 2, 8, 8)
    m = masked[:, 1:]
    assert set(m.unique().tolist()) == {0.0, 1.0} and 0.1 < float(m.mean()) < 0.4
    assert torch.equal(masked[:, :1], x * m)
    for name in ("edges", "downsample", "mask"):
        hints = make_hints(name, x, generator=torch.Generator().manual_seed(1))
        assert torch.equal(hint_error(name, x, hints), torch.zeros(3))  # the source agrees
        assert (hint_error(name, x.flip(-1), hints) > 0.01).all()
    # the mask error counts the kept pixels only
    off = x + (1 - m) * 5
    assert torch.allclose(hint_error("mask", off, masked), torch.zeros(3))
    # and is the mean over them: 0.5 off on every kept pixel is 0.25, however many are kept
    assert torch.allclose(hint_error("mask", x + 0.5, masked), torch.full((3,), 0.25))
    with pytest.raises(ValueError, match="hint must be one of"):
        make_hints("canny", x)
    with pytest.raises(ValueError, match=r"must return a batch of hint images \(3, C, H, W\)"):
        make_hints(lambda v: v[0], x)
    with pytest.raises(ValueError, match="factor must divide the image size"):
        downsample(x, 3)


def test_hint_dropout_zeroes_whole_hints_with_probability_p():
    seen = []

    def loss(net, x0, *, cond, generator=None):
        seen.append(cond)
        return torch.zeros(())

    hints = torch.ones(4000, 1, 2, 2)
    dropped = with_hint_dropout(loss, 0.3)
    dropped(None, None, cond={"hint": hints, "labels": torch.arange(4000)},
            generator=torch.Generator().manual_seed(0))  # fmt: skip
    kept = seen[0]["hint"].flatten(1)
    assert set(kept.sum(1).unique().tolist()) == {0.0, 4.0}  # whole hints, never parts
    assert abs(float((kept.sum(1) == 0).float().mean()) - 0.3) < 0.03
    assert torch.equal(seen[0]["labels"], torch.arange(4000))
    dropped(None, None, cond={"hint": hints}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[1]["hint"], seen[0]["hint"])  # drawn from the loss's generator
    assert with_hint_dropout(loss, 0.0) is loss
    with pytest.raises(ValueError, match=r"hint_dropout must lie in \[0, 1\)"):
        with_hint_dropout(loss, 1.0)
    null = zero_hint({"hint": hints[:2], "labels": torch.arange(2)})
    assert not null["hint"].any() and torch.equal(null["labels"], torch.arange(2))


# --- training through the Trainer, checkpoints, loading


TINY_DIGITS = dict(data="digits", channels=8, channel_mults=(1, 2), num_res_blocks=1,
                   batch_size=32, sample_every=0, device="cpu", sample_n=4, sample_steps=2)  # fmt: skip


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    Trainer(TrainConfig(**TINY_DIGITS, steps=2, out=str(out))).train()
    return out / "checkpoint.pt"


def test_training_changes_only_the_control_branch(base_run, tmp_path):
    trainer = control_trainer(base_run, "edges", steps=3, batch_size=32, out=str(tmp_path / "c"),
                              hint_dropout=0.2, lr=1e-2)  # fmt: skip
    model = trainer.model
    base_state = {k: v.clone() for k, v in model.base.state_dict().items()}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in model.control.parameters()
    }
    control_before = model.control.down[0][0].conv1.weight.clone()
    trainer.train()
    for module in (model.base, trainer.ema.module.base):
        assert all(torch.equal(v, base_state[k]) for k, v in module.state_dict().items())
    assert not torch.equal(model.control.down[0][0].conv1.weight, control_before)
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert all(k.startswith("control.") for k in state["model"]) and state["ema"]["module"]
    assert state["control"]["base"] == str(base_run) and state["control"]["hint"] == "edges"
    assert state["control"]["base_sha256"] == fingerprint(model.base)

    loaded = load_controlled(tmp_path / "c" / "checkpoint.pt")
    x, t = batch()
    cond = {"hint": sobel_edges(x)}
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, cond), trainer.ema.module(x, t, cond))
    samples = loaded.sample_batched(loaded.hints(x), batch_size=3, steps=2)
    assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()
    # resuming with another hint is refused before anything is trained
    with pytest.raises(ValueError, match=r"other \['hint', 'hint_channels', 'hint_dropout'\]"):
        control_trainer(base_run, "mask", steps=4, out=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"cannot change \['channels'\]"):
        control_trainer(base_run, "edges", channels=16, out=str(tmp_path / "d"))


def test_a_control_checkpoint_refuses_a_retrained_base(base_run, tmp_path):
    run = tmp_path / "c"
    control_trainer(base_run, "downsample", steps=1, out=str(run)).train()
    other = tmp_path / "other"
    Trainer(TrainConfig(**TINY_DIGITS, steps=1, out=str(other), seed=5)).train()
    with pytest.raises(BaseMismatchError, match="a different .retrained or overwritten.. base"):
        load_controlled(run / "checkpoint.pt", base=other / "checkpoint.pt")
    with pytest.raises(ValueError, match="is a ControlNet checkpoint"):
        load_model(run / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a ControlNet checkpoint"):
        load_controlled(base_run)


def test_command_line_train_control_and_sample_from_images(base_run, tmp_path, capsys):
    from PIL import Image

    from sdekit.cli import main

    out = tmp_path / "ctl"
    argv = ["train-control", "--base", str(base_run), "--hint", "mask", "--steps", "1",
            "--batch-size", "16", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    torch.save(images, tmp_path / "img.pt")
    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), "L").save(folder / f"{i}.png")
    sample = ["sample", "--checkpoint", str(out / "checkpoint.pt"), "--steps", "2", "--device",
              "cpu"]  # fmt: skip
    assert (
        main([*sample, "--hint-from", str(tmp_path / "img.pt"), "--out", str(tmp_path / "s.pt")])
        == 0
    )
    assert torch.load(tmp_path / "s.pt").shape == (3, 1, 8, 8)
    assert (
        main([*sample, "--hint-from", str(folder), "--n", "5", "--out", str(tmp_path / "g.png")])
        == 0
    )
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    torch.save(torch.rand(2, 1, 4, 4), tmp_path / "small.pt")
    torch.save(torch.rand(2, 1, 8, 8) * 255, tmp_path / "pixels.pt")
    for extra, message in [
        (["--hint-from", str(tmp_path / "small.pt")], "must have shape (N, 1, 8, 8)"),
        (["--hint-from", str(tmp_path / "pixels.pt")], "model range [-1, 1]"),
        (["--hint-from", str(tmp_path / "nothing.npy")], "must be an existing file"),
        (["--scale", "0.5"], "--base and --scale are for a ControlNet checkpoint"),
    ]:
        with pytest.raises(SystemExit):
            main([*sample, *extra, "--out", str(tmp_path / "x.pt")])
        assert message in capsys.readouterr().err, message
    with pytest.raises(SystemExit):
        main([*sample, "--hint-from", str(tmp_path / "img.pt"), "--out-dir", str(tmp_path / "d")])
    assert "--hint-from writes one --out file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(base_run), "--hint-from", str(tmp_path / "img.pt")])
    assert "not a ControlNet checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-control", "--base", str(out / "checkpoint.pt"), "--hint", "edges"])
    assert "is a ControlNet checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-control", "--base", str(tmp_path / "missing.pt"), "--hint", "edges"])
    assert "--base " in capsys.readouterr().err
    assert read_images(tmp_path / "img.pt", (1, 8, 8)).shape == (3, 1, 8, 8)
