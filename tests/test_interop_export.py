"""save_pretrained / load_pretrained: a network round-trips bitwise through config.json + safetensors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from sdekit.interop import export, load_pretrained, save_pretrained
from sdekit.networks import MLP, UNet

pytest.importorskip("safetensors")


def _unet() -> tuple[UNet, dict]:
    config = {
        "in_channels": 1,
        "image_size": 8,
        "base_channels": 16,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [4],
        "num_classes": 3,
    }
    torch.manual_seed(0)
    return UNet(**config), config


def test_unet_round_trips_bitwise(tmp_path):
    net, config = _unet()
    save_pretrained(net, tmp_path / "model", config=config, prediction="eps")
    stored = json.loads((tmp_path / "model" / "config.json").read_text())
    assert stored["_class_name"] == "UNet" and stored["prediction"] == "eps"
    assert (tmp_path / "model" / "diffusion_pytorch_model.safetensors").is_file()
    loaded, loaded_config = load_pretrained(tmp_path / "model")
    assert isinstance(loaded, UNet) and not loaded.training
    assert loaded_config["prediction"] == "eps"
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.9])
    labels = torch.tensor([0, 2])
    net.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, labels), net(x, t, labels))
    for (name, a), (_, b) in zip(
        net.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


class TiedNet(nn.Module):
    """A user's own network with a shared (tied) weight."""

    def __init__(self, dim: int = 2, hidden: int = 8):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, dim)
        self.again = self.out  # the same module twice

    def to_config(self) -> dict:
        return {"dim": self.inp.in_features, "hidden": self.inp.out_features}

    def forward(self, x, t):
        return self.again(torch.tanh(self.inp(x)))


def test_own_class_with_to_config_and_shared_weights(tmp_path):
    net = TiedNet(3, 5)
    save_pretrained(net, tmp_path)
    with pytest.raises(ValueError, match="pass cls=TiedNet"):
        load_pretrained(tmp_path)
    loaded, _ = load_pretrained(tmp_path, cls=TiedNet)
    x = torch.randn(4, 3)
    assert torch.equal(loaded(x, None), net(x, None))
    assert loaded.again is loaded.out
    with pytest.raises(ValueError, match="cls is MLP but the directory holds a TiedNet"):
        load_pretrained(tmp_path, cls=MLP)


def test_bad_config_raises_at_save(tmp_path):
    net, config = _unet()
    with pytest.raises(ValueError, match="config must be given for Linear.*in_features, out_f"):
        save_pretrained(nn.Linear(2, 3), tmp_path)  # a class that does not describe itself
    with pytest.raises(ValueError, match="config does not rebuild this UNet"):
        save_pretrained(net, tmp_path, config={**config, "base_channels": 32})
    with pytest.raises(ValueError, match="config does not rebuild UNet"):
        save_pretrained(net, tmp_path, config={**config, "width": 3})
    with pytest.raises(ValueError, match=r"config\['dropout'\] must be JSON data"):
        save_pretrained(net, tmp_path, config={**config, "dropout": torch.tensor(0.1)})
    with pytest.raises(ValueError, match="prediction must be one of"):
        save_pretrained(net, tmp_path, config=config, prediction="noise")
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_directory_raises_at_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path)
    save_pretrained(MLP(2, 16, 1), tmp_path, config={"dim": 2, "hidden": 16, "depth": 1})
    stored = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**stored, "hidden": 32}))
    with pytest.raises(RuntimeError, match="size"):
        load_pretrained(tmp_path)  # config and weights disagree: no silent partial load
    (tmp_path / "config.json").write_text(json.dumps({**stored, "_sdekit_module": "os"}))
    with pytest.raises(ValueError, match="only sdekit's own classes"):
        load_pretrained(tmp_path)


def test_interrupted_save_keeps_the_previous_files(tmp_path, monkeypatch):
    net = MLP(2, 16, 1)
    config = {"dim": 2, "hidden": 16, "depth": 1}
    save_pretrained(net, tmp_path, config=config)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export._safetensors(), "save_model", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(MLP(2, 16, 1), tmp_path, config=config)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_missing_safetensors_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"pip install 'sdekit\[interop\]'"):
        save_pretrained(MLP(2, 16, 1), tmp_path, config={"dim": 2, "hidden": 16, "depth": 1})


def test_networks_that_describe_themselves_need_no_config(tmp_path):
    """UNet and EDMPrecond (a network and an SDE nested in its config) save with their own config."""
    from sdekit.discrete import DiscreteVPSDE
    from sdekit.networks import EDMPrecond

    torch.manual_seed(0)
    net = EDMPrecond(UNet(1, 8, 16, (1, 2), 1, dropout=0.0), DiscreteVPSDE.linear(50), 0.7)
    save_pretrained(net, tmp_path, prediction="x0")
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["net"]["class"] == "sdekit.networks.unet.UNet" and "class" not in stored
    loaded, _ = load_pretrained(tmp_path)
    assert torch.equal(loaded.sde.alphas_cumprod, net.sde.alphas_cumprod)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), net.eval()(x, t))
