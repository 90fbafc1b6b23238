"""Trainer, EMA and checkpoints: closed forms, crash safety, bitwise resume, the NaN stop."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from sdekit.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from sdekit.ema import EMA
from sdekit.training import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    load_model,
    save_samples,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the test machine is shared: one intra-op thread is faster than two contended ones
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class DropoutNet(nn.Module):
    """A stand-in eps-network for 2D data with dropout (so resume must restore torch's RNG); with
    ``nan_at`` its output turns NaN at that training call."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.inp, self.out = nn.Linear(3, 32), nn.Linear(32, 2)
        self.drop = nn.Dropout(0.2)
        self.nan_at, self.calls = nan_at, 0

    def forward(self, x, t, labels=None):
        h = self.out(self.drop(torch.nn.functional.silu(self.inp(torch.cat([x, t[:, None]], 1)))))
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at:
                h = h * float("nan")
        return h


def net(**kw) -> DropoutNet:
    torch.manual_seed(0)  # the same initial weights for every run compared
    return DropoutNet(**kw)


def tiny(tmp_path, **kw) -> TrainConfig:
    base = dict(
        data="gmm_2d", toy_size=256, batch_size=32, steps=6, hidden=16, depth=2, lr=1e-3,
        warmup_steps=2, out=str(tmp_path), sample_every=0, checkpoint_every=0, sample_n=64,
        sample_steps=4, device="cpu",
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


# --- EMA


def test_ema_constant_decay_closed_form():
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    ema, d, n = EMA(model, 0.9, warmup=False), 0.9, 12
    for k in range(1, n + 1):
        with torch.no_grad():
            model.weight.fill_(k)
        ema.update(model)
    expected = d**n * 0.5 + (1 - d) * sum(d ** (n - k) * k for k in range(1, n + 1))
    assert math.isclose(ema.module.weight.item(), expected, rel_tol=1e-12)


def test_ema_warmup_weight_of_initialisation():
    # prod_{k<n} (1 + k) / (10 + k) = 1 / C(n + 9, 9) is what remains of the initial weights
    model = nn.Linear(2, 3).double()
    ema = EMA(model, 0.999)
    init = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    for _ in range(15):
        ema.update(model)
    for p, p0 in zip(ema.module.parameters(), init, strict=True):
        assert torch.allclose(p, p0 / math.comb(24, 9), rtol=1e-12, atol=0)
    assert ema.current_decay() == 16 / 25


def test_ema_buffers_state_and_checks():
    model = nn.BatchNorm1d(3)
    ema = EMA(model, 0.5)
    model.running_mean.fill_(7.0)
    ema.update(model)
    assert (ema.module.running_mean == 7).all() and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    other = EMA(nn.BatchNorm1d(3), 0.1, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and other.decay == 0.5 and other.warmup
    assert torch.equal(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)


# --- checkpoints


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_checkpoint_crash_mid_write_keeps_previous(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(type(error)):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_rng_state_round_trip(tmp_path):
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and (first[1] == again[1]).all()
    assert first[2] == again[2]
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint(tmp_path / "none.pt")


# --- config


@pytest.mark.parametrize(
    "field, value",
    [
        ("data", "imagenet"), ("sde", "vq"), ("prediction", "noise"), ("precision", "fp8"),
        ("steps", 0), ("batch_size", 2.5), ("lr", -1.0), ("lr", math.nan), ("ema_decay", 1.0),
        ("dropout", -0.1), ("grad_clip", -1.0), ("channel_mults", (1, 0)), ("device", "tpu"),
        ("sample_n", 0), ("grad_accum", 0), ("sigma_data", 0.0), ("p_std", -1.0),
        ("p_mean", math.inf),
    ],
)  # fmt: skip
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_edm_fields_reach_the_network_and_the_loss(tmp_path):
    cfg = tiny(tmp_path, prediction="edm", t_sampling="lognormal", sigma_data=1.4, p_mean=-0.5,
               p_std=1.5)  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.model.sigma_data == 1.4
    # the truncated lognormal draws ln(sigma) around p_mean: its median moves with it
    t, _ = trainer.loss_fn.sample_t(4000, generator=torch.Generator().manual_seed(0))
    sigma_tilde = trainer.sde.sigma(t) / trainer.sde.alpha(t)
    assert abs(float(sigma_tilde.log().median()) - (-0.5)) < 0.1


def test_config_files(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"data": "rings", "channel_mults": [1, 2, 2]}))
    cfg = TrainConfig.from_file(tmp_path / "c.json")
    assert cfg.data == "rings" and cfg.channel_mults == (1, 2, 2)
    (tmp_path / "c.toml").write_text('data = "checkerboard"\nlr = 2e-4\nema_warmup = false\n')
    cfg = TrainConfig.from_file(tmp_path / "c.toml")
    assert (cfg.data, cfg.lr, cfg.ema_warmup) == ("checkerboard", 2e-4, False)
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    (tmp_path / "c.yaml").write_text("data: rings\n")
    with pytest.raises(ValueError, match="json or .toml"):
        TrainConfig.from_file(tmp_path / "c.yaml")


# --- trainer


def test_resume_is_bitwise_exact(tmp_path):
    straight = Trainer(tiny(tmp_path / "a"), model=net())
    losses = straight.train()
    assert len(losses) == 6

    first = Trainer(tiny(tmp_path / "b", steps=3), model=net())
    assert first.train() == losses[:3]
    del first
    torch.rand(100), np.random.rand(5), random.random()  # noqa: NPY002 (disturb the global RNGs)
    resumed = Trainer(tiny(tmp_path / "b"), model=net())
    assert resumed.step == 3
    assert resumed.train() == losses[3:]  # bitwise: same floats
    pairs = [
        *zip(straight.model.parameters(), resumed.model.parameters(), strict=True),
        *zip(straight.ema.module.parameters(), resumed.ema.module.parameters(), strict=True),
    ]
    assert all(torch.equal(a, b) for a, b in pairs)
    opt_a, opt_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert all(
        torch.equal(opt_a["state"][k]["exp_avg_sq"], v["exp_avg_sq"])
        for k, v in opt_b["state"].items()
    )
    assert Trainer(tiny(tmp_path / "b"), model=net()).train() == []  # already done
    with pytest.raises(ValueError, match="lr"):
        Trainer(tiny(tmp_path / "b", lr=0.5), model=net())


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    trainer = Trainer(tiny(tmp_path, checkpoint_every=2), model=net(nan_at=5))
    with pytest.raises(NonFiniteLossError, match="step 5"):
        trainer.train()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.json"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_keeps_fp32_weights(tmp_path, precision):
    ref = Trainer(tiny(tmp_path / "fp32", steps=2)).train()
    trainer = Trainer(tiny(tmp_path / precision, steps=2, precision=precision))
    losses = trainer.train()
    assert all(math.isfinite(v) for v in losses)
    assert math.isclose(losses[0], ref[0], rel_tol=0.05)  # same weights, data and noise
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


@pytest.mark.parametrize(
    "sde, prediction", [("ve", "score"), ("edm", "edm"), ("vp_cosine", "v"), ("subvp", "x0")]
)
def test_every_sde_and_prediction_trains_and_samples(tmp_path, sde, prediction):
    trainer = Trainer(tiny(tmp_path, sde=sde, prediction=prediction, steps=2))
    assert all(math.isfinite(v) for v in trainer.train())
    x = load_model(tmp_path / "checkpoint.pt").sample(16, method="euler", steps=3)
    assert x.shape == (16, 2) and torch.isfinite(x).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_run_loads_on_cpu(tmp_path):
    trainer = Trainer(tiny(tmp_path, steps=4, device="cuda", precision="bf16", log_every=2))
    assert all(math.isfinite(v) for v in trainer.train())
    assert trainer.ema.module.inp.weight.device.type == "cuda"
    x = load_model(tmp_path / "checkpoint.pt", device="cpu").sample(8, steps=3)
    assert torch.isfinite(x).all()


def test_trainer_checks(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(tiny(tmp_path, grad_accum=3))
    with pytest.raises(ValueError, match="class_conditional"):
        Trainer(tiny(tmp_path, class_conditional=True))
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(tiny(tmp_path, toy_size=16))


def test_trained_model_learns_the_mixture(tmp_path):
    """A short run on the 1D mixture must beat the prior by far: fails if the loss, the trainer's
    data/noise plumbing or the EMA were wrong."""
    from sdekit.data import GMM_1D
    from sdekit.metrics import w1_to_mixture

    cfg = tiny(tmp_path, data="gmm_1d", toy_size=20_000, hidden=128, depth=3, batch_size=256,
               steps=600, lr=3e-3, warmup_steps=50, ema_decay=0.99)  # fmt: skip
    trainer = Trainer(cfg)
    trainer.train()
    trained = load_model(tmp_path / "checkpoint.pt")
    g = torch.Generator().manual_seed(1)
    x = trained.sample(4000, method="dpmpp_2m", steps=30, generator=g)
    prior = torch.randn(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w1, w1_prior = w1_to_mixture(x[:, 0].double(), GMM_1D), w1_to_mixture(prior, GMM_1D)
    assert w1 < 0.4 * w1_prior, (w1, w1_prior)  # measured: 0.12 against 0.66
    assert (tmp_path / "samples_0000600.png").is_file()


def test_save_samples(tmp_path):
    save_samples(torch.rand(10, 3, 8, 8) * 2 - 1, tmp_path / "img.png")
    save_samples(torch.randn(50, 2), tmp_path / "pts.png", reference=torch.randn(50, 2))
    save_samples(torch.randn(50, 1), tmp_path / "hist.png")
    for name in ("img", "pts", "hist"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="images"):
        save_samples(torch.randn(5, 3), tmp_path / "bad.png")


# --- other kinds of training through the same Trainer (classifier, ControlNet)


def test_classifier_is_trained_with_labels_as_cond(tmp_path):
    """A noise-conditional classifier: own model, own loss, data (x, labels), no sample grids."""
    from sdekit.linear import VPSDE
    from sdekit.seeding import BatchOrder

    sde = VPSDE()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    labels = (x[:, 0] > 0).long()
    seen = []

    def cross_entropy_on_noisy_x(net, x0, *, cond, generator):
        seen.append(cond)
        t = sde.t_min + (sde.T - sde.t_min) * torch.rand(x0.shape[0], generator=generator)
        alpha, sigma = sde.marginal(t)
        x_t = alpha[:, None] * x0 + sigma[:, None] * torch.randn(x0.shape, generator=generator)
        return nn.functional.cross_entropy(net(x_t, t), cond)

    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 2))

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = classifier

        def forward(self, x, t):
            return self.net(x)

    cfg = tiny(tmp_path, steps=4, batch_size=16, grad_accum=2)
    trainer = Trainer(cfg, model=Classifier(), loss_fn=cross_entropy_on_noisy_x,
                      data=(x, labels), sample_grid=False)  # fmt: skip
    losses = trainer.train()
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    order = BatchOrder(64, 16, cfg.seed, torch.device("cpu"))
    # each micro-batch's loss saw exactly its rows of the labels
    assert torch.equal(seen[0], labels[order(0)[:8]]) and torch.equal(seen[1], labels[order(0)[8:]])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint.pt", "config.json", "log.jsonl", "loss.png"]  # no sample grid


class Controlled(nn.Module):
    """A ControlNet stand-in: a frozen eps-network plus a trainable branch fed the hint; it checks
    that the two entries of its dict condition belong to the same examples, and its state dict
    holds the control branch only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2)).requires_grad_(
            False
        )
        self.control = nn.Linear(2, 2)
        self.hints_seen = []

    def forward(self, x, t, cond):
        hint, labels = cond["hint"], cond["labels"]
        assert torch.equal(labels, hint[:, 0].long() % 3)  # rows sliced with one index
        if self.training:
            self.hints_seen.append(hint[:, 0].long())
        return self.base(torch.cat([x, t[:, None]], 1)) + self.control(hint)

    def state_dict(self, *args, **kwargs):
        return self.control.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict=True):
        return self.control.load_state_dict(state, strict)


def controlnet_data():
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    index = torch.arange(64.0)[:, None]
    return x, {"hint": index.expand(64, 2).clone(), "labels": torch.arange(64) % 3}


def test_controlnet_trains_only_its_branch_and_resumes_bitwise(tmp_path):
    from sdekit.seeding import BatchOrder

    model = Controlled()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    trainer = Trainer(
        tiny(tmp_path / "a", steps=4, sample_n=8), model=model, data=controlnet_data()
    )
    control_ids = {id(p) for p in model.control.parameters()}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == control_ids
    losses = trainer.train()
    assert all(torch.equal(v, base_before[k]) for k, v in model.base.state_dict().items())
    assert model.control.weight.grad is None and not torch.equal(
        trainer.ema.module.control.weight, Controlled().control.weight
    )  # the branch moved, its average too
    # the average shares the frozen base instead of copying it
    assert all(p is q for p, q in zip(trainer.ema.module.base.parameters(),
                                      model.base.parameters(), strict=True))  # fmt: skip
    order = BatchOrder(64, 32, 0, torch.device("cpu"))
    assert torch.equal(model.hints_seen[0], order(0)) and torch.equal(model.hints_seen[3], order(3))
    state = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert set(state["model"]) == {"weight", "bias"} == set(state["ema"]["module"])
    assert (tmp_path / "a" / "samples_0000004.png").is_file()  # grid with the first 8 hints

    first = Trainer(tiny(tmp_path / "b", steps=2, sample_n=8), model=Controlled(),
                    data=controlnet_data())  # fmt: skip
    assert first.train() == losses[:2]
    resumed = Trainer(tiny(tmp_path / "b", steps=4, sample_n=8), model=Controlled(),
                      data=controlnet_data())  # fmt: skip
    assert resumed.step == 2 and resumed.train() == losses[2:]
    assert torch.equal(resumed.model.control.weight, model.control.weight)


def test_ema_averages_only_trainable_parameters():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).double()
    model[0].requires_grad_(False)
    ema = EMA(model, 0.5, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the frozen layer too: it is shared, not averaged
    before = ema.module[1].weight.clone()
    ema.update(model)
    assert ema.module[0].weight is model[0].weight
    assert torch.allclose(ema.module[1].weight, before + 0.5, rtol=0, atol=1e-15)


# --- what the trainer refuses


def test_trainer_refuses_bad_data(tmp_path):
    cfg = tiny(tmp_path)
    with pytest.raises(ValueError, match=r"data x must be a floating-point tensor.*x\.float\(\)"):
        Trainer(cfg, data=(torch.arange(512).reshape(256, 2), None))
    x = torch.randn(256, 2)
    x[3, 0], x[7, 1], x[7, 0] = math.nan, math.inf, math.nan
    with pytest.raises(ValueError, match=r"2 NaN and 1 infinite values \(in 2 of 256 examples\)"):
        Trainer(cfg, data=(x, None))
    with pytest.raises(ValueError, match="class_conditional=True"):
        Trainer(cfg, data=(torch.randn(256, 2), torch.zeros(256, dtype=torch.long)))
    with pytest.raises(ValueError, match="batch size 256"):
        Trainer(tiny(tmp_path, class_conditional=True), data=(torch.randn(256, 2), torch.zeros(9)))
    with pytest.raises(ValueError, match=r"channel_mults \(1, 2, 2, 2\).*28x28.*at most 3"):
        Trainer(tiny(tmp_path, channel_mults=(1, 2, 2, 2)), data=(torch.zeros(32, 1, 28, 28), None))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out must be a run directory"):
        Trainer(tiny(tmp_path / "file"))


def test_steps_below_the_checkpoint_are_refused(tmp_path):
    Trainer(tiny(tmp_path, steps=3), model=net()).train()
    written = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"at step 3, past steps=2"):
        Trainer(tiny(tmp_path, steps=2), model=net())
    assert (tmp_path / "config.json").read_text() == written


# --- what a run reports


def test_log_progress_lines_early_grid_and_loss_curve(tmp_path, capsys):
    trainer = Trainer(tiny(tmp_path, steps=101, log_every=50, sample_every=1000, sample_n=16,
                           grad_clip=0.0))  # fmt: skip
    losses = trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 101]
    # the early grid at step 100, then the final one; the loss is the mean since the last line
    assert [r.get("samples") for r in records] == [
        None,
        "samples_0000100.png",
        "samples_0000101.png",
    ]
    assert records[0]["loss"] == pytest.approx(math.fsum(losses[:50]) / 50, rel=1e-12)
    assert records[2]["loss"] == pytest.approx(losses[100], rel=1e-12)
    assert records[2]["lr"] == trainer.optimizer.param_groups[0]["lr"]
    assert all(r["grad_norm"] > 0 and r["steps_per_s"] > 0 for r in records)
    assert all(
        r["examples_per_s"] == pytest.approx(32 * r["steps_per_s"], rel=1e-3) for r in records
    )
    assert records[0]["elapsed_s"] <= records[1]["elapsed_s"] <= records[2]["elapsed_s"]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("step ")]
    assert len(lines) == 3 and lines[0].startswith("step 50/101  loss ")
    assert "steps/s" in lines[0] and "ETA" in lines[0] and lines[1].endswith("samples_0000100.png")


def test_resumed_log_drops_lines_past_the_checkpoint(tmp_path):
    Trainer(tiny(tmp_path, steps=4, log_every=2)).train()
    with (tmp_path / "log.jsonl").open("a") as f:  # an interrupted run logged past its checkpoint
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
    Trainer(tiny(tmp_path, steps=6, log_every=2)).train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert records[2]["elapsed_s"] >= records[1]["elapsed_s"]
