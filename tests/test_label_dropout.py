"""Label dropout to a learned null label (Ho & Salimans 2022), and label checks of the networks."""

from __future__ import annotations

import math

import pytest
import torch

from sdekit.linear import VPSDE
from sdekit.networks import MLP, NULL_LABEL, EDMPrecond, LabelEmbedding, UNet


def test_label_dropout_gives_the_null_label_at_the_stated_rate():
    """Each label independently, with probability p_uncond: the count is Binomial(n, p); four
    standard deviations (0.011 here) bound the fraction."""
    torch.manual_seed(0)
    n = 20000
    for p in (0.1, 0.2):
        emb = LabelEmbedding(10, 4, p_uncond=p)
        labels = torch.randint(0, 10, (n,))
        dropped = emb.drop(labels)
        null = dropped == NULL_LABEL
        assert abs(float(null.float().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)
        assert torch.equal(dropped[~null], labels[~null])  # the others are kept
        # and independently of the class
        for c in (0, 9):
            rate = float(null[labels == c].float().mean())
            assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / int((labels == c).sum()))


def test_the_network_drops_labels_in_training_mode_only():
    torch.manual_seed(1)
    net = MLP(2, hidden=16, depth=2, num_classes=3, p_uncond=0.5)
    assert net.label.table.num_embeddings == 4  # a null row after the 3 classes
    x, t = torch.randn(400, 2), torch.rand(400)
    y = torch.randint(0, 3, (400,))
    null = net(x, t, torch.full_like(y, NULL_LABEL))
    net.eval()
    assert torch.equal(net(x, t, y), net(x, t, y))  # no randomness in eval mode
    cond = net(x, t, y)
    net.train()
    out = net(x, t, y)
    as_null = (out - null).abs().amax(1) < 1e-6
    as_cond = (out - cond).abs().amax(1) < 1e-6
    assert bool((as_null ^ as_cond).all())  # every row is one or the other
    assert 0.4 < float(as_null.float().mean()) < 0.6
    # the null row is learned: it has a gradient
    net.zero_grad()
    net(x, t, torch.full_like(y, NULL_LABEL)).sum().backward()
    assert float(net.label.table.weight.grad[3].abs().sum()) > 0
    assert float(net.label.table.weight.grad[:3].abs().sum()) == 0


def test_unet_and_edm_preconditioning_take_the_null_label():
    torch.manual_seed(2)
    unet = UNet(1, 8, base_channels=16, num_res_blocks=1, num_classes=10, p_uncond=0.1).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    null = torch.full((3,), NULL_LABEL)
    a, b = unet(x, t, null), unet(x, t, torch.tensor([1, 2, 3]))
    assert a.shape == x.shape and not torch.allclose(a, b)
    assert EDMPrecond(unet, VPSDE())(x, t, null).shape == x.shape


def test_labels_are_checked_with_the_argument_named():
    cond = MLP(2, hidden=8, depth=1, num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    with pytest.raises(ValueError, match="labels are required .*num_classes=3.*cond=labels"):
        cond(x, t)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\), got \\[3\\]"):
        cond(x, t, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="no null label: .*p_uncond = 0"):
        cond(x, t, torch.tensor([0, 1, 2, NULL_LABEL]))
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\) or NULL_LABEL"):
        MLP(2, hidden=8, num_classes=3, p_uncond=0.1)(x, t, torch.tensor([0, -2, 1, 1]))
    with pytest.raises(ValueError, match="integer tensor"):
        cond(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match="shape \\(batch,\\) = \\(4,\\)"):
        cond(x, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional model"):
        MLP(2, hidden=8)(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="p_uncond must lie in \\[0, 1\\)"):
        MLP(2, num_classes=3, p_uncond=1.0)
    with pytest.raises(ValueError, match="p_uncond > 0 needs a class-conditional"):
        UNet(p_uncond=0.1)
