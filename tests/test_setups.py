"""Set-ups that save and load whole: SDEs, schedules and networks describe themselves, checkpoints
record them, and load_model / the command line rebuild them (a user's own SDE and network too).

Round trips go through JSON text and must give bitwise-equal outputs; non-default parameters
everywhere, so that an argument lost on the way changes the numbers.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from custom_setup import PlainNet, TinyNet, TrigSDE
from torch import nn

from sdekit.checkpoint import (
    CheckpointError,
    UnverifiedCheckpointWarning,
    load_checkpoint,
    save_checkpoint,
)
from sdekit.cli import main
from sdekit.configurable import ConfigError, from_config, to_config
from sdekit.discrete import DiscreteVPSDE
from sdekit.inference import export_model, load_model, sample_from
from sdekit.linear import EDMSDE, OUSDE, VESDE, VPSDE, LinearSDE, SubVPSDE
from sdekit.networks import MLP, EDMPrecond, UNet
from sdekit.schedules import BetaSchedule, CosineBeta, LinearBeta
from sdekit.training import TrainConfig, Trainer


def json_round_trip(obj, base):
    config = to_config(obj)
    text = json.dumps(config)  # plain JSON data, nothing else
    rebuilt = from_config(json.loads(text), base)
    assert type(rebuilt) is type(obj)
    assert to_config(rebuilt) == json.loads(text)  # describes itself the same way again
    return rebuilt, config


def ac_float32():
    """A diffusers-style alphas_cumprod, float32 as diffusers computes it."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 50, dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, 0)


SDES = {
    "vp": lambda: VPSDE(beta_min=0.05, beta_max=12.0, T=0.9, t_min=1e-4),
    "vp_cosine": lambda: VPSDE.cosine(s=0.01, T=0.99),
    "subvp": lambda: SubVPSDE(beta_max=15.0, t_min=2e-3),
    "ve": lambda: VESDE(sigma_min=0.02, sigma_max=30.0, T=2.0),
    "edm": lambda: EDMSDE(sigma_min=0.01, sigma_max=40.0),
    "ou": lambda: OUSDE(theta=0.7, g=1.3, T=3.0),
    "discrete_vp": lambda: DiscreteVPSDE(ac_float32(), t_min=0.05),
    "discrete_cosine": lambda: DiscreteVPSDE.cosine(40),
    "user": lambda: TrigSDE(theta=1.2, T=1.1),
}


@pytest.mark.parametrize("name", SDES)
def test_sde_round_trip_gives_the_same_sde(name):
    sde = SDES[name]()
    rebuilt, config = json_round_trip(sde, LinearSDE)
    assert (rebuilt.T, rebuilt.t_min) == (sde.T, sde.t_min)
    t = torch.linspace(sde.t_min, sde.T, 41, dtype=torch.float64)
    for fn in ("alpha", "sigma", "log_snr", "f", "g2"):
        assert torch.equal(getattr(rebuilt, fn)(t), getattr(sde, fn)(t)), fn
    lam = sde.log_snr(t[1:-1])
    assert torch.equal(rebuilt.log_snr_inverse(lam), sde.log_snr_inverse(lam))
    assert rebuilt.prior_std == sde.prior_std
    if isinstance(sde, DiscreteVPSDE):  # the schedule's values exactly, in their dtype
        assert torch.equal(rebuilt.alphas_cumprod, sde.alphas_cumprod)
        dtype = "float32" if name == "discrete_vp" else "float64"
        assert config["alphas_cumprod"]["dtype"] == dtype


def test_schedules_round_trip_and_nest_in_their_sde():
    for schedule in (LinearBeta(0.2, 7.0), CosineBeta(0.02)):
        rebuilt, _ = json_round_trip(schedule, BetaSchedule)
        t = torch.linspace(0, 0.9, 11, dtype=torch.float64)
        assert torch.equal(rebuilt.integral(t), schedule.integral(t))
    config = to_config(VPSDE.cosine(s=0.01, T=0.99))
    assert config["schedule"] == {"class": "sdekit.schedules.CosineBeta", "s": 0.01}
    assert config["class"] == "sdekit.linear.VPSDE" and config["T"] == 0.99


def _equal_outputs(net, rebuilt, x, t, *cond):
    rebuilt.load_state_dict(net.state_dict())
    net.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t, *cond), net(x, t, *cond))


def test_network_round_trips_give_equal_outputs():
    torch.manual_seed(0)
    x2, x_img = torch.randn(4, 3), torch.randn(4, 1, 8, 8)
    t, labels = torch.tensor([0.1, 0.4, 0.7, 0.95]), torch.tensor([0, 2, 1, 2])
    mlp = MLP(3, hidden=24, depth=2, time_features=8, num_classes=3)
    rebuilt, config = json_round_trip(mlp, nn.Module)
    assert config["hidden"] == 24 and config["num_classes"] == 3
    _equal_outputs(mlp, rebuilt, x2, t, labels)
    unet = UNet(1, 8, 8, (1, 2), 1, attn_resolutions=(8,), dropout=0.2, embedding="sinusoidal",
                num_classes=3)  # fmt: skip
    rebuilt, config = json_round_trip(unet, nn.Module)
    assert config["embedding"] == "sinusoidal" and config["channel_mults"] == [1, 2]
    _equal_outputs(unet, rebuilt, x_img, t, labels)
    for net, sde, x in ((MLP(3, 16, 1), VESDE(0.02, 30.0), x2),
                        (UNet(1, 8, 8, (1, 2), 1), DiscreteVPSDE.linear(30), x_img)):  # fmt: skip
        precond = EDMPrecond(net, sde, sigma_data=0.7)
        rebuilt, config = json_round_trip(precond, nn.Module)
        assert config["net"]["class"] == to_config(net)["class"] and config["sigma_data"] == 0.7
        assert type(rebuilt.sde) is type(sde)
        _equal_outputs(precond, rebuilt, x, t)
    user = TinyNet(3, hidden=5, scale=0.5)
    rebuilt, config = json_round_trip(user, nn.Module)
    assert config == {"class": "custom_setup.TinyNet", "dim": 3, "hidden": 5, "scale": 0.5}
    _equal_outputs(user, rebuilt, x2, t)


class LocalSDE(VESDE):
    pass


def test_configs_that_cannot_be_rebuilt_say_why():
    good = to_config(VESDE())
    with pytest.raises(ConfigError, match=r"'nowhere_pkg.MySDE' cannot be imported.*PYTHONPATH"):
        from_config({**good, "class": "nowhere_pkg.MySDE"}, LinearSDE, "the SDE")
    with pytest.raises(ConfigError, match="__main__ is the script being run"):
        from_config({**good, "class": "__main__.MySDE"}, LinearSDE)
    with pytest.raises(ConfigError, match="is not a LinearSDE"):
        from_config(to_config(MLP()), LinearSDE)
    # a config can only call classes that describe themselves
    with pytest.raises(ConfigError, match="does not describe itself"):
        from_config({"class": "subprocess.Popen", "args": ["true"]})
    with pytest.raises(ConfigError, match="config does not rebuild"):
        from_config({**good, "sigma_mn": 0.1}, LinearSDE)

    def local():
        class Inner(VESDE):
            pass

        return Inner()

    with pytest.raises(ConfigError, match="defined inside a function"):
        from_config(to_config(local()), LinearSDE)
    mutated = VESDE()
    mutated.sigma_max = 3.0
    with pytest.raises(ConfigError, match="sigma_max is 3.0.*changed after construction"):
        to_config(mutated)
    with pytest.raises(ConfigError, match=r"EDMPrecond.net is a PlainNet.*give PlainNet a to_"):
        to_config(EDMPrecond(PlainNet(), VPSDE()), "EDMPrecond")
    with pytest.raises(ConfigError, match="finite numbers only"):
        to_config(TinyNet(scale=math.inf))
    with pytest.raises(ConfigError, match=r"TinyNet.scale is a function.*give function a to_conf"):
        to_config(TinyNet(scale=lambda: 1.0))
    assert to_config(LocalSDE())["class"] == "test_setups.LocalSDE"


# ------------------------------------------------------------------ trained, saved, reloaded


def tiny(out, **kw) -> TrainConfig:
    base = dict(data="gmm_2d", toy_size=256, batch_size=32, steps=3, hidden=16, depth=2,
                out=str(out), sample_every=0, checkpoint_every=0, sample_n=16, sample_steps=3,
                sample_method="ddim", device="cpu")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def draw(model, sde, prediction="eps", n=12):
    return sample_from(model, sde, (n, 2), prediction=prediction, method="ddim", steps=4,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip


def test_custom_sde_trains_saves_reloads_and_samples_identically(tmp_path):
    sde = TrigSDE(theta=1.3)
    trainer = Trainer(tiny(tmp_path), sde=sde, sample_grid=False)
    trainer.train()
    state = load_checkpoint(trainer.checkpoint_path)
    assert state["setup"]["sde"] == {"class": "custom_setup.TrigSDE", "theta": 1.3, "T": 1.0,
                                     "t_min": 0.001}  # fmt: skip
    assert state["setup"]["model"]["class"] == "sdekit.networks.mlp.MLP"
    trained = load_model(trainer.checkpoint_path)
    assert isinstance(trained.sde, TrigSDE) and trained.sde.theta == 1.3
    expected = draw(trainer.ema.module.eval(), sde)
    assert torch.equal(draw(trained.model, trained.sde), expected)
    # the command line rebuilds it too: the same samples as load_model's batched draw
    out = tmp_path / "cli.pt"
    args = ["sample", "--checkpoint", str(trainer.checkpoint_path), "--method", "ddim",
            "--steps", "4", "--n", "6", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    batched = trained.sample_batched(6, method="ddim", steps=4)
    assert torch.equal(torch.load(out), batched)
    # and a resume with another SDE is refused
    with pytest.raises(ValueError, match="written with another SDE"):
        Trainer(tiny(tmp_path, steps=4), sde=TrigSDE(theta=1.2))
    with pytest.raises(ValueError, match="sde must be a LinearSDE"):
        Trainer(tiny(tmp_path / "b"), sde="vp")


def test_edm_run_with_a_parametrised_sde_and_its_export(tmp_path):
    pytest.importorskip("safetensors")
    sde = VPSDE(beta_max=10.0)
    trainer = Trainer(tiny(tmp_path, prediction="edm", sigma_data=0.8), sde=sde,
                      sample_grid=False)  # fmt: skip
    trainer.train()
    trained = load_model(trainer.checkpoint_path)
    assert isinstance(trained.model, EDMPrecond) and trained.model.sigma_data == 0.8
    assert trained.sde.schedule.beta_max == 10.0 and trained.model.sde.schedule.beta_max == 10.0
    expected = draw(trainer.ema.module.eval(), sde, "x0")
    assert torch.equal(draw(trained.model, trained.sde, "x0"), expected)
    # EMA weights as config.json + safetensors, read back whole
    directory = export_model(trained, tmp_path / "exported")
    stored = json.loads((directory / "config.json").read_text())
    assert stored["prediction"] == "x0" and stored["_sdekit_setup"]["sde"]["beta_max"] == 10.0
    again = load_model(directory)
    assert torch.equal(draw(again.model, again.sde, "x0"), expected)
    assert main(["export", "--checkpoint", str(trainer.checkpoint_path), "--out",
                 str(tmp_path / "cli_export"), "--device", "cpu"]) == 0  # fmt: skip
    assert (tmp_path / "cli_export" / "diffusion_pytorch_model.safetensors").is_file()


def test_user_networks_with_and_without_config(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a network that describes itself: no warning
        Trainer(tiny(tmp_path / "a"), model=TinyNet(2, 12, 0.5), sample_grid=False).train()
    trained = load_model(tmp_path / "a" / "checkpoint.pt")
    assert isinstance(trained.model, TinyNet) and trained.model.scale == 0.5
    with pytest.warns(UserWarning, match=r"PlainNet\) cannot describe itself.*model=\.\.\."):
        trainer = Trainer(tiny(tmp_path / "b"), model=PlainNet(2, 12), sample_grid=False)
    trainer.train()
    with pytest.raises(CheckpointError, match=r"no config of its network \(a custom_setup.Plain"):
        load_model(trainer.checkpoint_path)
    trained = load_model(trainer.checkpoint_path, model=PlainNet(2, 12))
    assert torch.equal(trained.model.out.weight, trainer.ema.module.out.weight)
    with pytest.raises(ValueError, match="sde is not the SDE of checkpoint"):
        load_model(trainer.checkpoint_path, model=PlainNet(2, 12), sde=VPSDE(beta_max=5.0))


def test_an_sde_class_that_cannot_be_imported_is_a_clear_error(tmp_path, capsys):
    Trainer(tiny(tmp_path), sde=TrigSDE(), sample_grid=False).train()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    state["setup"]["sde"]["class"] = "my_lab.sdes.TrigSDE"  # trained where my_lab was installed
    save_checkpoint(state, tmp_path / "moved.pt")
    with pytest.raises(ConfigError, match=r"'my_lab.sdes.TrigSDE' cannot be imported.*sde=\.\.\."):
        load_model(tmp_path / "moved.pt")
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(tmp_path / "moved.pt"), "--device", "cpu"])
    assert "my_lab.sdes.TrigSDE' cannot be imported" in capsys.readouterr().err
    trained = load_model(tmp_path / "moved.pt", sde=TrigSDE())  # the way out it names
    assert isinstance(trained.sde, TrigSDE)


def test_script_classes_are_warned_about(tmp_path):
    class ScriptSDE(VESDE):  # like a class in the script that trains
        pass

    with pytest.warns(UserWarning, match="only this script can rebuild it"):
        Trainer(tiny(tmp_path), sde=ScriptSDE(), sample_grid=False)


# ------------------------------------------------------------------ older checkpoints


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny(out), sample_grid=False).train()
    return out / "checkpoint.pt"


def test_checkpoints_of_the_previous_format_still_load_and_resume(run, tmp_path):
    """What the main code wrote before set-ups were recorded: the same state, no "setup"."""
    state = load_checkpoint(run)
    expected = draw(load_model(run).model, VPSDE())
    main_keys = {"step", "config", "data_shape", "num_classes", "model", "ema", "optimizer",
                 "scheduler", "scaler", "rng"}  # fmt: skip
    assert set(state) == main_keys | {"setup"}  # the new entry is the only difference
    del state["setup"]
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    trained = load_model(tmp_path / "checkpoint.pt")
    assert isinstance(trained.sde, VPSDE) and isinstance(trained.model, MLP)
    assert torch.equal(draw(trained.model, trained.sde), expected)
    resumed = Trainer(tiny(tmp_path, steps=4), sample_grid=False)
    assert resumed.step == 3
    resumed.train()
    assert "setup" in load_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="written with another SDE"):
        state["step"] = 3
        save_checkpoint(state, tmp_path / "b" / "checkpoint.pt")
        Trainer(tiny(tmp_path / "b", steps=4), sde=VPSDE(beta_max=5.0))


def test_checkpoints_from_before_checksums_load_unverified(run, tmp_path):
    state = load_checkpoint(run)
    del state["setup"]
    torch.save(state, tmp_path / "old.pt")  # no "sha256": how sdekit wrote them before
    with pytest.warns(UnverifiedCheckpointWarning, match="no SHA-256 checksum.*unverified"):
        trained = load_model(tmp_path / "old.pt")
    assert torch.equal(draw(trained.model, trained.sde), draw(load_model(run).model, VPSDE()))
    torch.save({"weight": torch.ones(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an sdekit checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({**state, "evil": nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):  # weights only: no objects
        load_checkpoint(tmp_path / "pickled.pt")
