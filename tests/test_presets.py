"""The per-data-set training presets and the image benchmarks' plumbing (no training here)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdekit.config import TrainConfig
from sdekit.data import DATASETS, IMAGE_DATASETS, TOY_DATASETS
from sdekit.networks import UNet
from sdekit.presets import DATA_PRESETS, PRESETS, preset

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"8x8": 8, "28x28": 28, "32x32": 32}


def test_every_data_set_has_a_preset_that_makes_a_valid_config():
    for name in DATASETS:
        values = preset(name)
        assert (values == {}) == (name in TOY_DATASETS), name
        TrainConfig.from_dict({**values, "data": name})
    assert set(DATA_PRESETS) == set(IMAGE_DATASETS)
    with pytest.raises(ValueError, match="data must be one of"):
        preset("imagenet")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_image_preset_builds_a_unet_for_its_size(name):
    p, size = PRESETS[name], SIZES[name]
    net = UNet(1, size, p["channels"], p["channel_mults"], p["num_res_blocks"], dropout=0.0)
    out = net(torch.zeros(2, 1, size, size), torch.rand(2))
    assert out.shape == (2, 1, size, size)


def test_a_preset_is_a_copy():
    preset("digits")["lr"] = 1.0
    assert preset("digits")["lr"] != 1.0


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_image_benchmark_skips_cleanly_without_the_data(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/quality_images.py"), "--data-root", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped: Fashion-MNIST not found" in result.stdout
    assert str(tmp_path) in result.stdout


def test_judge_classifier_sizes_and_saturation_count():
    judge = load_benchmark("judge")
    for size, channels in ((8, (32, 64)), (28, (32, 64, 64))):
        net = judge.Classifier(size, channels, 64).eval()
        x = torch.zeros(3, 1, size, size)
        assert net(x).shape == (3, 10) and net.features(x).shape == (3, 64)
    x = torch.zeros(4, 1, 28, 28)
    x[0, 0, 0, :7] = 1.5  # 7 of 3136 pixels outside [-1, 1]; +-1 and round-off are inside
    x[2, 0, 0, 0] = 1 + 1e-7
    x[1] = -1.0
    net = judge.Classifier(28, (32, 64, 64), 64).eval()
    scores = judge.judge_samples(net, x, torch.randn(10, 64).double().numpy())
    assert scores["saturated"] == pytest.approx(7 / x.numel())
    assert sum(scores["histogram"]) == 4
