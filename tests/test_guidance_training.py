"""Training for guidance end to end: label dropout from the config, the noisy classifier through
the Trainer (checkpoint, EMA, bitwise resume), and the command line's guided sampling."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from sdekit.builders import build_model
from sdekit.checkpoint import CheckpointError
from sdekit.classifier import ClassifierTrainer, load_classifier
from sdekit.cli import main
from sdekit.config import TrainConfig
from sdekit.configurable import from_config
from sdekit.inference import load_model
from sdekit.linear import VPSDE
from sdekit.networks import NULL_LABEL, UNetClassifier
from sdekit.shards import MANIFEST_NAME, file_sha256, load_shards

DIGITS = dict(
    data="digits", batch_size=16, channels=8, channel_mults=(1, 2), num_res_blocks=1,
    warmup_steps=1, sample_every=0, checkpoint_every=0, sample_n=4, sample_steps=2, device="cpu",
)  # fmt: skip
TINY = ["--batch-size", "16", "--channels", "8", "--num-res-blocks", "1", "--sample-n", "4",
        "--sample-steps", "2", "--sample-every", "0", "--device", "cpu"]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_p_uncond_reaches_the_network_and_is_checked():
    config = TrainConfig(**DIGITS, class_conditional=True, p_uncond=0.15)
    net = build_model(config, (1, 8, 8), 10, VPSDE())
    assert net.label.p_uncond == 0.15 and net.label.table.num_embeddings == 11
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert net.eval()(x, t, torch.full((2,), NULL_LABEL)).shape == x.shape
    with pytest.raises(ValueError, match="p_uncond must lie in \\[0, 1\\)"):
        TrainConfig(**DIGITS, class_conditional=True, p_uncond=1.0)
    with pytest.raises(ValueError, match="p_uncond drops the class labels .*class_conditional"):
        TrainConfig(**DIGITS, p_uncond=0.1)


def test_the_classifier_trains_through_the_trainer_and_resumes_bitwise(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the classifier describes itself to the checkpoint
        straight = ClassifierTrainer(TrainConfig(**DIGITS, steps=4, out=str(tmp_path / "a")))
    assert isinstance(straight.model, UNetClassifier) and straight.model.num_classes == 10
    losses = straight.train()
    assert len(losses) == 4 and losses[0] == pytest.approx(2.3, abs=0.3)  # log 10 at the start
    first = ClassifierTrainer(TrainConfig(**DIGITS, steps=2, out=str(tmp_path / "b")))
    assert first.train() == losses[:2]
    resumed = ClassifierTrainer(TrainConfig(**DIGITS, steps=4, out=str(tmp_path / "b")))
    assert resumed.step == 2 and resumed.train() == losses[2:]
    trained = load_classifier(tmp_path / "b" / "checkpoint.pt")
    a = load_classifier(tmp_path / "a" / "checkpoint.pt")
    for p, q in zip(trained.classifier.parameters(), a.classifier.parameters(), strict=True):
        assert torch.equal(p, q)  # the EMA weights, bitwise
    assert not trained.classifier.training and trained.num_classes == 10
    assert not any(p.name.startswith("samples") for p in (tmp_path / "b").iterdir())
    rebuilt = from_config(straight.model.to_config(), nn.Module)
    assert type(rebuilt) is UNetClassifier and rebuilt.to_config() == straight.model.to_config()
    with pytest.raises(CheckpointError, match="not of a score network"):
        load_model(tmp_path / "a" / "checkpoint.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One step of each run the command line makes: a model with label dropout, one without, a
    classifier on the model's SDE and one on another SDE."""
    root = tmp_path_factory.mktemp("runs")
    digits = ["--data", "digits", "--steps", "1", *TINY]
    for name, argv in {
        "model": ["train", "--class-conditional", "--p-uncond", "0.2"],
        "plain": ["train", "--class-conditional"],
        "clf": ["train-classifier"],
        "clf_ve": ["train-classifier", "--sde", "ve"],
    }.items():
        assert main([*argv, *digits, "--out", str(root / name)]) == 0
    return {
        name: str(root / name / "checkpoint.pt") for name in ("model", "plain", "clf", "clf_ve")
    }


def test_guided_sampling_from_the_command_line(runs, tmp_path):
    ckpt = ["sample", "--checkpoint", runs["model"], "--steps", "2", "--n", "4", "--device", "cpu"]
    for extra in (
        ["--label", "3", "--guidance", "2.0"],
        ["--label", "3", "--classifier", runs["clf"], "--classifier-scale", "2"],
        ["--guidance", "1", "--classifier", runs["clf"]],
    ):
        out = tmp_path / "s.pt"
        assert main([*ckpt, *extra, "--out", str(out)]) == 0
        x = torch.load(out)
        assert x.shape == (4, 1, 8, 8) and bool(torch.isfinite(x).all())


@pytest.mark.parametrize(
    "checkpoint, extra, message",
    [
        ("model", ["--guidance", "nan"], "--guidance: w must be a finite number"),
        ("model", ["--classifier-scale", "2"], "--classifier-scale needs --classifier"),
        ("model", ["--label", "10", "--guidance", "1"], "label must be an integer in [0, 10)"),
        ("plain", ["--guidance", "1"], "--guidance: model has no null label"),
        ("model", ["--classifier", "clf_ve"], "trained with sde 've' (model: 'vp')"),
        ("model", ["--classifier", "plain"], "not a classifier checkpoint"),
        ("clf", [], "checkpoint of a noise-conditional classifier, not of a score network"),
    ],
)
def test_guided_sampling_bad_input(runs, tmp_path, capsys, checkpoint, extra, message):
    extra = [runs.get(v, v) for v in extra]
    argv = ["sample", "--checkpoint", runs[checkpoint], "--out", str(tmp_path / "s.pt"), *extra]
    with pytest.raises(SystemExit):
        main([*argv, "--steps", "1", "--n", "2", "--device", "cpu"])
    assert message in capsys.readouterr().err


def test_guided_sampling_into_shards_records_the_guidance(runs, tmp_path, capsys):
    ckpt = ["sample", "--checkpoint", runs["model"], "--steps", "2", "--n", "4", "--device", "cpu"]
    guided = ["--label", "3", "--guidance", "2.0", "--classifier", runs["clf"]]
    assert main([*ckpt, *guided, "--out", str(tmp_path / "s.pt")]) == 0
    assert main([*ckpt, *guided, "--out-dir", str(tmp_path / "shards")]) == 0
    manifest = json.loads((tmp_path / "shards" / MANIFEST_NAME).read_text())
    recorded = manifest["settings"]["guidance"]
    assert recorded["w"] == 2.0 and recorded["classifier_scale"] == 1.0
    assert recorded["classifier_sha256"] == file_sha256(runs["clf"])
    # the shards hold the guided samples that --out gives
    shards = torch.from_numpy(load_shards(tmp_path / "shards")["samples"])
    torch.testing.assert_close(shards, torch.load(tmp_path / "s.pt"), rtol=0, atol=1e-6)
    # a resume with other guidance (or none) is refused, naming it
    for other in (
        ["--label", "3", "--guidance", "1.0", "--classifier", runs["clf"]],
        ["--label", "3"],
    ):
        with pytest.raises(SystemExit):
            main([*ckpt, *other, "--out-dir", str(tmp_path / "shards")])
        assert "guidance" in capsys.readouterr().err
