"""Data: toy sets against their definitions, the pixel map, every loader on files written here."""

from __future__ import annotations

import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from sdekit.data import (
    DATASETS,
    FASHION_MNIST_DEBIAN,
    GMM_1D,
    TOY_DATASETS,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_mnist,
    model_range_log_det,
    read_idx,
    to_model_range,
    to_pixel_range,
)
from sdekit.data.toy import RING_RADII


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(TOY_DATASETS))
def test_toy_shapes_determinism(name):
    x = TOY_DATASETS[name](500, gen())
    d = 1 if name == "gmm_1d" else 2
    assert x.shape == (500, d) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.abs().max() < 4
    assert torch.equal(x, TOY_DATASETS[name](500, gen()))
    assert not torch.equal(x, TOY_DATASETS[name](500, gen(1)))
    with pytest.raises(ValueError, match="n must be"):
        TOY_DATASETS[name](0, gen())


def test_gmm_1d_matches_its_cdf():
    # Kolmogorov-Smirnov distance to the exact mixture CDF: ~ 1/sqrt(n)
    x = TOY_DATASETS["gmm_1d"](20_000, gen()).double().sort(0).values[:, 0]
    cdf = GMM_1D.cdf(x)
    ecdf = torch.arange(1, x.numel() + 1, dtype=torch.float64) / x.numel()
    assert (cdf - ecdf).abs().max() < 1.6 / math.sqrt(x.numel())


def test_checkerboard_on_dark_squares_uniformly():
    x = TOY_DATASETS["checkerboard"](16_000, gen())
    assert x.min() >= -2 and x.max() <= 2
    cells = torch.floor(x + 2).long()
    assert ((cells.sum(1) % 2) == 0).all()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).float()
    dark = counts[counts > 0]
    assert dark.numel() == 8 and (dark / 2000 - 1).abs().max() < 0.1


def test_rings_radii_and_weights():
    x = TOY_DATASETS["rings"](30_000, gen())
    r = x.norm(dim=1)
    radii = torch.tensor(RING_RADII)
    nearest = (r[:, None] - radii).abs().argmin(1)
    assert (r - radii[nearest]).abs().max() < 0.3
    frac = torch.bincount(nearest, minlength=3).float() / r.numel()
    assert torch.allclose(frac, radii / radii.sum(), atol=0.015)


def test_two_moons_near_arcs():
    x = TOY_DATASETS["two_moons"](5000, gen()) / 1.5 + torch.tensor([0.5, 0.25])
    upper = (x.norm(dim=1) - 1).abs()
    lower = ((x - torch.tensor([1.0, 0.5])).norm(dim=1) - 1).abs()
    assert torch.minimum(upper, lower).max() < 0.3


def test_pixel_map_inverse_and_log_det():
    p = torch.arange(256.0)
    x = to_model_range(p)
    assert x[0] == -1 and x[-1] == 1
    assert torch.allclose(to_pixel_range(x), p, atol=1e-4)
    jac = torch.autograd.functional.jacobian(lambda q: to_model_range(q, 16.0), torch.rand(5) * 16)
    assert math.isclose(torch.logdet(jac).item(), model_range_log_det(5, 16.0), rel_tol=1e-6)
    assert math.isclose(model_range_log_det(3072), 3072 * math.log(2 / 255))


def test_digits():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    pixels = to_pixel_range(x, 16.0)
    assert torch.allclose(pixels, pixels.round(), atol=1e-5)  # the 17 grey levels exactly
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))


def write_idx(path, array: np.ndarray, code: int, compress: bool):
    big = array.astype(array.dtype.newbyteorder(">"))
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += big.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_types(tmp_path, compress):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a, 0x08, compress)
    assert torch.equal(read_idx(tmp_path / "a"), torch.from_numpy(a))
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    write_idx(tmp_path / "f", f, 0x0D, compress)
    assert torch.equal(read_idx(tmp_path / "f"), torch.from_numpy(f))
    i = np.array([-5, 70000], dtype=np.int32)
    write_idx(tmp_path / "i", i, 0x0C, compress)
    assert read_idx(tmp_path / "i").tolist() == [-5, 70000]


def test_read_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((2, 2), np.uint8), 0x08, False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header declares"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")
    write_idx(tmp_path / "cut.gz", np.zeros((50, 28, 28), np.uint8), 0x08, True)
    (tmp_path / "cut.gz").write_bytes((tmp_path / "cut.gz").read_bytes()[:-20])  # a cut download
    with pytest.raises(ValueError, match=r"cut.gz is a truncated or corrupt gzip file"):
        read_idx(tmp_path / "cut.gz")


def test_load_mnist_tiny(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 0x08, True)
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", labels, 0x08, False)  # mirror naming, raw
    x, y = load_mnist(tmp_path, "test")
    assert x.shape == (5, 1, 28, 28)
    assert torch.allclose(x[:, 0], torch.from_numpy(images) / 127.5 - 1, atol=1e-6)
    assert y.tolist() == [3, 1, 4, 1, 5] and y.dtype == torch.int64
    with pytest.raises(FileNotFoundError, match="download"):
        load_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "val")


@pytest.mark.skipif(
    not (FASHION_MNIST_DEBIAN and __import__("os").path.isdir(FASHION_MNIST_DEBIAN)),
    reason="apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_real_files():
    x, y = load_dataset("fashion_mnist", split="test")
    assert x.shape == (10_000, 1, 28, 28) and x.min() == -1 and x.max() == 1
    assert torch.bincount(y).tolist() == [1000] * 10  # the test split is balanced


def test_load_cifar10_tiny(tmp_path):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, 2).tolist(),
        }
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (10, 3, 32, 32) and y.shape == (10,)
    with open(tmp_path / "data_batch_1", "rb") as f:
        first = pickle.load(f)
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major
    c, i, j = 1, 5, 7
    assert to_pixel_range(x[0, c, i, j]).round() == first[b"data"][0, c * 1024 + i * 32 + j]
    assert y[:2].tolist() == first[b"labels"]
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path, "test")


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, value in (("cats", 0), ("dogs", 255)):
        (tmp_path / cls).mkdir()
        for k in range(2):
            Image.new("RGB", (6, 6), (value, value, value)).save(tmp_path / cls / f"{k}.png")
    x, y = load_image_folder(tmp_path)
    assert x.shape == (4, 3, 6, 6) and y.tolist() == [0, 0, 1, 1]
    assert (x[:2] == -1).all() and (x[2:] == 1).all()
    x, _ = load_image_folder(tmp_path, image_size=4, channels=1)
    assert x.shape == (4, 1, 4, 4)
    Image.new("RGB", (5, 6)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(tmp_path)
    _, y = load_image_folder(tmp_path, image_size=4)
    assert y is None  # not every image lies in a class directory
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "dogs" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    with pytest.raises(ValueError, match=r"dogs/2.png is not a readable image"):
        load_image_folder(tmp_path, image_size=4)


def test_load_dataset_names():
    assert set(TOY_DATASETS) < set(DATASETS)
    x, labels = load_dataset("rings", n=7, generator=gen())
    assert x.shape == (7, 2) and labels is None
    with pytest.raises(ValueError, match="data must be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="data_root"):
        load_dataset("cifar10")
