"""Score networks: shapes, argument errors, conditioning on time and labels, trainability."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdekit.config import TrainConfig
from sdekit.linear import EDMSDE, VPSDE
from sdekit.losses import DenoisingScoreMatching
from sdekit.networks import MLP, EDMPrecond, GaussianFourierEmbedding, SinusoidalEmbedding, UNet
from sdekit.networks.unet import norm_groups
from sdekit.presets import PRESETS

SMALL = dict(base_channels=16, num_res_blocks=1, dropout=0.0)


def unet_configs():
    return [
        dict(in_channels=1, image_size=8, channel_mults=(1, 2), attn_resolutions=(4,)),
        dict(in_channels=3, image_size=16, channel_mults=(1, 2, 2), attn_resolutions=(8,)),
        dict(in_channels=1, image_size=28, channel_mults=(1, 2), attn_resolutions=(7,)),
        dict(in_channels=2, image_size=12, channel_mults=(1, 1, 2), embedding="sinusoidal"),
    ]


@pytest.mark.parametrize("config", unet_configs(), ids=["8x8x1", "16x16x3", "28x28x1", "12x12x2"])
def test_unet_output_has_the_input_shape(config):
    torch.manual_seed(0)
    net = UNet(**config, **SMALL)
    size, ch = config["image_size"], config["in_channels"]
    x = torch.randn(3, ch, size, size)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


def test_unet_rejects_an_image_size_the_downsampling_does_not_divide():
    with pytest.raises(ValueError, match="image_size"):
        UNet(image_size=30, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        UNet(**SMALL)(torch.randn(2, 1, 16, 16), torch.rand(2))


def test_unet_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = UNet(num_classes=3, **SMALL)
    out = net(torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 0]))
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().max()) > 0, name


@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_time_conditioning_changes_the_output(embedding):
    torch.manual_seed(0)
    net = UNet(embedding=embedding, **SMALL).eval().requires_grad_(False)
    x = torch.randn(2, 1, 8, 8)
    a = net(x, torch.full((2,), 0.1))
    b = net(x, torch.full((2,), 0.6))
    assert float((a - b).abs().mean()) > 1e-3 * float(a.abs().mean())
    mlp = MLP(dim=2, hidden=32).requires_grad_(False)
    y = torch.randn(5, 2)
    assert not torch.allclose(mlp(y, torch.full((5,), 0.1)), mlp(y, torch.full((5,), 0.6)))


def test_labels_change_the_output_and_are_checked():
    torch.manual_seed(0)
    net = UNet(num_classes=10, **SMALL).eval().requires_grad_(False)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    a = net(x, t, torch.tensor([1, 1]))
    b = net(x, t, torch.tensor([7, 7]))
    assert float((a - b).abs().mean()) > 1e-3 * float(a.abs().mean())
    with pytest.raises(ValueError, match="labels"):
        net(x, t)
    with pytest.raises(ValueError, match="labels"):
        UNet(**SMALL)(x, t, torch.tensor([1, 1]))
    mlp = MLP(dim=1, hidden=16, num_classes=4)
    y, s = torch.randn(3, 1), torch.rand(3)
    assert not torch.allclose(
        mlp(y, s, torch.tensor([0, 0, 0])), mlp(y, s, torch.tensor([3, 3, 3]))
    )


def test_no_normalisation_group_holds_a_single_channel():
    """Every channel count gets groups of >= 4 channels (all of them when fewer than 8), at most 32
    groups: gcd(32, C) made one group per channel for C in {8, 16, 32}, an instance norm."""
    for c in range(2, 1025):
        g = norm_groups(c)
        assert c % g == 0 and 1 <= g <= 32, c
        assert c // g >= min(c, 4), c
    assert [norm_groups(c) for c in (8, 16, 24, 32, 64, 128, 256)] == [2, 4, 6, 8, 16, 32, 32]


#: every base width a config gives (TrainConfig's default and each image preset's), and the small
#: and power-of-two widths that gcd(32, C) turned into instance norms, up to 128
WIDTHS = sorted(
    {4, 8, 12, 16, 24, 32, 48, 64, 96, 128, TrainConfig.channels}
    | {p["channels"] for p in PRESETS.values()}
)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_output_layer_sees_a_constant_shift_of_the_input(width):
    """The UNet's mean output can follow its input's mean brightness: the features that the
    output convolution reads (SiLU of the last GroupNorm) change, per channel and averaged over the
    image, when a constant is added to the input. Its mean output is a linear function of those
    channel means (up to the border), so where they do not move no output layer can respond; with
    one channel per group (the old gcd(32, C) for widths 8, 16, 32) they moved by 0.006-0.009 per
    unit shift at initialisation, with groups of 4 channels by 0.13-0.29 (measured, 3 seeds)."""
    torch.manual_seed(0)
    mults = (1, 2) if width <= 64 else (1,)
    net = UNet(1, 8, width, mults, 1, attn_resolutions=(), dropout=0.0).eval()
    means = []
    net.norm_out.register_forward_hook(lambda m, i, out: means.append(F.silu(out).mean((2, 3))))
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 1, 8, 8, generator=gen), torch.rand(4, generator=gen)
    with torch.no_grad():
        net(x, t), net(x + 0.5, t)
    response = float(((means[1] - means[0]) / 0.5).square().mean().sqrt())
    assert response > 0.05


def test_unet_needs_four_base_channels():
    with pytest.raises(ValueError, match="base_channels must be >= 4"):
        UNet(base_channels=2)


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    net = UNet(base_channels=16, num_res_blocks=1, dropout=0.5)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_a_few_optimizer_steps_reduce_the_loss_on_a_tiny_batch(kind):
    torch.manual_seed(0)
    sde = VPSDE()
    if kind == "mlp":
        net, x0 = MLP(dim=2, hidden=64, depth=2), torch.randn(64, 2)
    else:
        net, x0 = UNet(**SMALL), torch.randn(8, 1, 8, 8)
    loss_fn = DenoisingScoreMatching(sde, "eps")
    t = torch.linspace(0.1, 0.9, x0.shape[0])
    noise = torch.randn_like(x0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss = loss_fn.per_sample(net, x0, t, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_mlp_rejects_bad_shapes_and_depth():
    with pytest.raises(ValueError, match="depth"):
        MLP(depth=0)
    with pytest.raises(ValueError, match="x must have shape"):
        MLP(dim=2)(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="t must have shape"):
        MLP(dim=2)(torch.randn(4, 2), torch.rand(()))
    with pytest.raises(ValueError, match="t must have shape"):
        UNet(**SMALL)(torch.randn(2, 1, 8, 8), torch.rand(3))


def test_embeddings_have_the_stated_features():
    t = torch.tensor([0.0, 0.25, 1.0])
    sin = SinusoidalEmbedding(8)(t)
    # omega_k = 10000^(-k/4) of tau = 1000 t
    omega = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(
        sin, torch.cat([(1000 * t[:, None] * omega).sin(), (1000 * t[:, None] * omega).cos()], 1)
    )
    four = GaussianFourierEmbedding(16)
    assert four(t).shape == (3, 16)
    torch.testing.assert_close(four(t).square().reshape(3, 2, 8).sum(1), torch.ones(3, 8))
    torch.testing.assert_close(four(t), GaussianFourierEmbedding(16)(t))  # seeded frequencies
    with pytest.raises(ValueError, match="dim"):
        SinusoidalEmbedding(7)
    with pytest.raises(ValueError, match="embedding"):
        UNet(embedding="learned")


def test_edm_preconditioning_matches_karras_table_1():
    sde = EDMSDE()
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_in, c_skip, c_out, c_noise, inv_alpha = EDMPrecond(MLP(), sde).coefficients(sigma)
    sd = 0.5
    torch.testing.assert_close(c_skip, sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(c_out, sigma * sd / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    torch.testing.assert_close(inv_alpha, torch.ones_like(sigma))

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(EDMPrecond(Zero(), sde)(x, sigma), c_skip[:, None] * x)
    # under a VP SDE the scaled variable x / alpha has noise level sigma / alpha
    vp = VPSDE()
    t = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    c_in, c_skip, *_ = EDMPrecond(Zero(), vp).coefficients(t)
    s = vp.sigma(t) / vp.alpha(t)
    torch.testing.assert_close(c_skip, sd**2 / (s**2 + sd**2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_unet_and_loss_run_on_cuda_under_bf16_autocast():
    net = UNet(**SMALL).cuda().to(memory_format=torch.channels_last)
    x0 = torch.randn(4, 1, 8, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = DenoisingScoreMatching(VPSDE(), "eps")(net, x0)
    assert loss.dtype == torch.float32 and loss.device.type == "cuda"
    loss.backward()
