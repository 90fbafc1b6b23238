"""``python -m sdekit inpaint``: a grid from a tiny digits run, and its error messages."""

from __future__ import annotations

import pytest
import torch

from sdekit.cli import main

TINY = ["--batch-size", "32", "--sample-n", "4", "--sample-steps", "2", "--device", "cpu"]
UNET = ["--channels", "8", "--channel-mults", "1", "2", "--num-res-blocks", "1"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("digits")
    argv = ["train", "--data", "digits", "--steps", "2", "--out", str(out), *TINY, *UNET]
    assert main(argv) == 0
    yield out / "checkpoint.pt"
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("mask", "method"), [("centre", "repaint"), ("sr2", "tds")])
def test_inpaint_writes_a_grid(digits_run, tmp_path, capsys, mask, method):
    out = tmp_path / "grid.png"
    argv = [
        "inpaint",
        "--checkpoint",
        str(digits_run),
        "--mask",
        mask,
        "--method",
        method,
        "--steps",
        "3",
        "--n",
        "2",
        "--completions",
        "3",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    if method == "tds":
        argv += ["--particles", "2"]
    assert main(argv) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    step = "ddim" if method == "repaint" else "ancestral"  # RePaint's default: DDIM eta = 1
    assert f"inpainting ({method}, {step}" in capsys.readouterr().out


def test_inpaint_errors_name_the_argument(digits_run, tmp_path, capsys):
    toy = tmp_path / "toy"
    main(["train", "--data", "gmm_2d", "--steps", "1", "--out", str(toy), "--toy-size", "64",
          "--hidden", "8", "--depth", "1", *TINY])  # fmt: skip
    images = tmp_path / "wrong.pt"
    torch.save(torch.zeros(3, 1, 4, 4), images)
    base = ["inpaint", "--checkpoint", str(digits_run), "--steps", "2", "--device", "cpu"]
    cases = [
        (["inpaint", "--checkpoint", str(toy / "checkpoint.pt"), "--device", "cpu"],
         "inpaint needs an image model"),
        ([*base, "--label", "3"], "label needs a class-conditional model"),
        ([*base, "--images", str(images)], "images must have shape (N, *(1, 8, 8))"),
        ([*base, "--images", str(tmp_path / "none.pt")], "images must be an existing file"),
        ([*base, "--method", "repaint", "--particles", "4"], "particles is an option of"),
        ([*base, "--method", "tds", "--sampler", "heun"], "SMC needs a sampler whose step"),
        ([*base, "--mask", "top"], "invalid choice: 'top'"),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--out", str(tmp_path / "x.png")])
        assert exit_.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
