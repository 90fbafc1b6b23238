"""The command line end to end on tiny runs: train, sample, config files and error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sdekit.cli import main

TINY = ["--toy-size", "256", "--batch-size", "32", "--hidden", "16", "--depth", "2",
        "--sample-n", "32", "--sample-steps", "3", "--device", "cpu"]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", "gmm_2d", "--steps", "3", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_run(toy_run):
    names = sorted(p.name for p in toy_run.iterdir())
    assert names == ["checkpoint.pt", "config.json", "samples_0000003.png"]
    assert json.loads((toy_run / "config.json").read_text())["data"] == "gmm_2d"


def test_sample_through_python_m(toy_run, tmp_path):
    args = ["sample", "--checkpoint", str(toy_run / "checkpoint.pt"), "--method", "ddim",
            "--steps", "3", "--n", "10", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "sdekit", *args, "--out", str(tmp_path / "a.pt")],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    x = torch.load(tmp_path / "a.pt")
    assert x.shape == (10, 2) and torch.isfinite(x).all()
    assert main([*args, "--out", str(tmp_path / "b.pt")]) == 0  # same seed, same samples
    assert torch.allclose(torch.load(tmp_path / "b.pt"), x, atol=1e-5)
    assert main([*args, "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_digits_image_run(tmp_path):
    out = tmp_path / "digits"
    unet = ["--channels", "8", "--channel-mults", "1", "2", "--num-res-blocks", "1"]
    argv = ["train", "--data", "digits", "--steps", "2", "--out", str(out), "--class-conditional"]
    assert main([*argv, *TINY, *unet]) == 0
    grid = tmp_path / "grid.png"
    argv = ["sample", "--checkpoint", str(out / "checkpoint.pt"), "--steps", "2", "--n", "4"]
    assert main([*argv, "--out", str(grid), "--device", "cpu", "--label", "7"]) == 0
    assert grid.read_bytes()[:4] == b"\x89PNG"


def test_config_file_then_flags(tmp_path):
    (tmp_path / "c.toml").write_text('data = "rings"\nsteps = 5\nlr = 5e-4\n')
    out = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "c.toml"), "--steps", "1", "--out", str(out)]
    assert main([*argv, *TINY]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["data"], saved["steps"], saved["lr"], saved["hidden"]) == ("rings", 1, 5e-4, 16)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "imagenet"], "data must be one of"),
        (["train", "--data", "mnist", "--data-root", "{tmp}/nowhere"], "download"),
        (["train", "--lr", "-1"], "lr must be"),
        (["train", "--batch-size", "0"], "batch_size must be"),
        (["train", "--config", "{tmp}/missing.toml"], "config must be an existing file"),
        (["train", "--steps", "many"], "invalid int value"),
        (["sample", "--checkpoint", "{tmp}/none.pt"], "checkpoint must be an existing file"),
        (["sample", "--checkpoint", "{run}", "--method", "magic"], "method must be one of"),
        (["sample", "--checkpoint", "{run}", "--n", "0"], "must be an integer >= 1"),
        (["sample", "--checkpoint", "{run}", "--label", "3"], "label needs"),
    ],
)
def test_errors_name_the_argument(argv, message, tmp_path, toy_run, capsys):
    fill = {"tmp": str(tmp_path), "run": str(toy_run / "checkpoint.pt")}
    with pytest.raises(SystemExit) as exit_:
        main([a.format(**fill) for a in argv] + ["--device", "cpu"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
