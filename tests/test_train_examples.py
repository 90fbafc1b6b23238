"""The training examples run end to end at a tiny setting, and the quality benchmarks' metrics are
right.

The examples run as a user runs them (a fresh interpreter, headless matplotlib, in a temporary
working directory) with a few training steps: they must train through the Trainer, sample with
both methods and write their figure and run directory. The benchmarks' numbers rest on the
Fréchet distance and the stratified split, which are checked against closed forms here; a full
benchmark run is too long for the suite.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_script(path: Path, tmp_path: Path, *args: str) -> str:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    result = subprocess.run(
        [sys.executable, str(path), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_toy_2d_tiny(tmp_path):
    out = run_script(ROOT / "examples/train_toy_2d.py", tmp_path, "--steps", "30", "--n", "300")
    assert_png(tmp_path / "outputs/train_toy_2d.png")
    assert (tmp_path / "outputs/train_toy_2d/checkpoint.pt").is_file()
    w1 = [float(v) for v in re.findall(r"sliced W1 to the exact mixture, .*: ([\d.]+)", out)]
    (floor,) = (float(v) for v in re.findall(r"Monte-Carlo floor .*: ([\d.]+)", out))
    assert len(w1) == 2 and all(np.isfinite(w1))
    assert 0 < floor < 0.2  # 300 exact samples of a law of scale 2


def test_train_digits_tiny(tmp_path):
    run_script(ROOT / "examples/train_digits.py", tmp_path, "--steps", "3", "--n", "9")
    assert_png(tmp_path / "outputs/train_digits.png")
    assert (tmp_path / "outputs/train_digits/checkpoint.pt").is_file()


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frechet_distance_closed_form():
    """For Gaussians the estimate converges to ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2);
    with commuting diagonal covariances the root is elementwise."""
    fd = load_benchmark("judge").frechet_distance
    rng = np.random.default_rng(0)
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu_a, mu_b = np.zeros(3), np.array([1.0, -2.0, 0.5])
    a = mu_a + np.sqrt(var_a) * rng.standard_normal((200_000, 3))
    b = mu_b + np.sqrt(var_b) * rng.standard_normal((200_000, 3))
    exact = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert fd(a, b) == pytest.approx(exact, rel=0.02)  # 5.25 + 5: a wrong root is far off
    assert abs(fd(a, a)) < 1e-8
    # a rotation of both sets leaves the distance unchanged (non-commuting covariances)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    assert fd(a @ q.T, b @ q.T) == pytest.approx(fd(a, b), rel=1e-6)


def test_digits_split_is_disjoint_and_stratified():
    bench = load_benchmark("quality_digits")
    labels = torch.arange(1000) % 10
    train, held = bench.split(labels, 200)
    assert len(held) == 200 and len(train) == 800
    assert not set(train.tolist()) & set(held.tolist())
    assert torch.bincount(labels[held], minlength=10).tolist() == [20] * 10


def test_toy_overrides_parse_literals():
    parse = load_benchmark("quality_toy").parse_overrides
    assert parse(["hidden=128", "lr=2e-3", "prediction=edm"]) == {
        "hidden": 128,
        "lr": 0.002,
        "prediction": "edm",
    }
    with pytest.raises(ValueError, match="field=value"):
        parse(["hidden"])
