"""The command line end to end on tiny runs: train, sample, config files and error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sdekit.cli import main
from sdekit.config import TrainConfig

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
    assert names == [
        "checkpoint.pt", "config.json", "log.jsonl", "loss.png", "samples_0000003.png"
    ]  # fmt: skip
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


def test_image_data_gets_its_preset_under_the_config_file_and_the_flags(tmp_path):
    from sdekit.cli import train_config
    from sdekit.presets import preset

    assert train_config({"data": "gmm_2d"}) == TrainConfig(data="gmm_2d")  # toy: the defaults
    config = train_config({"data": "fashion_mnist"})
    assert config == TrainConfig(data="fashion_mnist", **preset("fashion_mnist"))
    assert (config.prediction, config.sample_threshold) == ("edm", "clip")
    (tmp_path / "c.json").write_text('{"data": "digits", "lr": 5e-4, "channels": 8}')
    config = train_config({"channels": 16}, tmp_path / "c.json")
    assert (config.lr, config.channels, config.batch_size) == (
        5e-4,
        16,
        preset("digits")["batch_size"],
    )


def test_digits_run_says_its_preset_and_its_grid_counts_pixels_outside(tmp_path, capsys):
    out = tmp_path / "digits"
    unet = ["--channels", "8", "--channel-mults", "1", "2"]
    assert main(["train", "--data", "digits", "--steps", "1", "--out", str(out), *TINY, *unet]) == 0
    err = capsys.readouterr().err
    assert (
        "preset for digits (sdekit.presets) (overridden: batch_size, channel_mults, channels" in err
    )
    assert "bounded to [-1, 1] at every step (clip" in err
    saved = json.loads((out / "config.json").read_text())
    assert (saved["prediction"], saved["sample_threshold"], saved["channels"]) == ("edm", "clip", 8)
    argv = ["sample", "--checkpoint", str(out / "checkpoint.pt"), "--steps", "2", "--n", "4"]
    grid = str(tmp_path / "g.png")
    assert main([*argv, "--out", grid, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "bounded to [-1, 1] at every step (clip)" in printed
    assert "0 of 256 pixels (0.00%) outside [-1, 1]" in printed  # clipped x0-hat: none outside
    assert main([*argv, "--out", grid, "--device", "cpu", "--threshold", "none"]) == 0
    printed = capsys.readouterr().out
    assert "bounded" not in printed and "of 256 pixels" in printed


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
        (["train", "--sample-method", "bogus"], "sample_method must be one of ("),
        (["train", "--data", "digits", "--image-size", "5"], "digits' has 8x8 images"),
        (["train", "--data", "rings", "--data-root", "{tmp}"], "remove data_root"),
        (["train", "--out", "{tmp}/a_file"], "out must be a run directory, "),
        (["train", "--config", "{tmp}/wrong_type.toml"], "wrong_type.toml: lr must be a number"),
        (["train", "--config", "{tmp}/syntax.toml"], "syntax.toml is not valid TOML"),
        (["train", "--data", "folder", "--data-root", "{tmp}/images"], "broken.png is not a"),
        (["sample", "--checkpoint", "{run_dir}"], "is a directory: pass the file inside it"),
        (["sample", "--checkpoint", "{run}", "--out", "{tmp}/x.txt"], "--out must end with one"),
        (["sample", "--checkpoint", "{run}", "--out", "{tmp}"], "is a directory"),
        (["sample", "--checkpoint", "{tmp}/a_file"], "is empty"),
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
    from PIL import Image

    (tmp_path / "a_file").write_text("")
    (tmp_path / "wrong_type.toml").write_text('lr = "fast"\n')
    (tmp_path / "syntax.toml").write_text("lr = \n")
    (tmp_path / "images").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "images" / "good.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    fill = {"tmp": str(tmp_path), "run": str(toy_run / "checkpoint.pt"), "run_dir": str(toy_run)}
    with pytest.raises(SystemExit) as exit_:
        main([a.format(**fill) for a in argv] + ["--device", "cpu"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_steps_below_the_run_are_refused(toy_run, capsys):
    config = (toy_run / "config.json").read_text()
    argv = ["train", "--data", "gmm_2d", "--steps", "2", "--out", str(toy_run), *TINY]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "is at step 3, past steps=2" in capsys.readouterr().err
    assert (toy_run / "config.json").read_text() == config  # not rewritten


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_sample_on_cuda_without_cuda(toy_run, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(toy_run / "checkpoint.pt"), "--device", "cuda"])
    assert "--device: device 'cuda' needs CUDA, which is not available" in capsys.readouterr().err


def test_sample_does_not_depend_on_the_batch_size(toy_run, tmp_path):
    args = ["sample", "--checkpoint", str(toy_run / "checkpoint.pt"), "--method",
            "euler_maruyama", "--steps", "3", "--n", "5", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--batch-size", "2", "--out", str(tmp_path / "two.pt")]) == 0
    assert main([*args, "--batch-size", "5", "--out", str(tmp_path / "five.pt")]) == 0
    two, five = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "five.pt")
    assert two.shape == (5, 2) and torch.allclose(two, five, rtol=0, atol=1e-5)
    assert not torch.allclose(two[0], two[1])  # and the samples differ from each other


def test_help_shows_every_default_once():
    from sdekit.cli import build_parser

    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            if action.help is None or action.dest == "help" or action.required:
                continue
            text = action.help % {"default": action.default}
            assert text.count("(default:") == 1 and "(default: None)" not in text, text
    train_help = build_parser().parse_known_args(["train"])[0].parser.format_help()
    assert "fashion_mnist" in train_help.split("--data-root")[2].split("--toy-size")[0]
    assert "(default: 1 2;" in " ".join(train_help.split())  # channel_mults as typed
    assert "28x28: sde=vp, prediction=edm" in train_help  # the presets, in the epilog


def _write_idx(path, array, compress: bool = False):
    import gzip
    import struct

    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype("u1").tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_mnist_files_errors_name_the_flag_and_the_file(tmp_path, capsys):
    """Issue 9's run: --channel-mults 1 2 2 2 on 28x28 images blames the flag (not an image_size
    the user never set), and a cut .gz download names its file."""
    import numpy as np

    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((64, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(64))
    base = ["train", "--data", "mnist", "--data-root", str(tmp_path), "--steps", "1",
            "--out", str(tmp_path / "run"), "--device", "cpu"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--channel-mults", "1", "2", "2", "2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "channel_mults (1, 2, 2, 2)" in err and "28x28" in err, err
    assert "image_size" not in err, err
    cut = tmp_path / "train-images-idx3-ubyte.gz"  # preferred over the raw file
    _write_idx(cut, np.zeros((64, 28, 28)), compress=True)
    cut.write_bytes(cut.read_bytes()[:-20])
    with pytest.raises(SystemExit) as exit_:
        main(base)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{cut} is a truncated or corrupt gzip file" in err, err
