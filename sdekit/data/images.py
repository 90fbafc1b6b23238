r"""Image data sets from local files, scaled to the model range :math:`[-1, 1]`.

Every loader returns ``(x, labels)``: ``x`` a float32 ``(N, C, H, W)`` tensor in
:math:`[-1, 1]` and ``labels`` an int64 ``(N,)`` tensor (``None`` where the data has no classes).
Nothing is downloaded: a missing file raises :class:`FileNotFoundError` saying what to download
and where to put it.

The pixel map
-------------
Integer pixels :math:`p \in \{0, \dots, m\}` (:math:`m = 255` for 8-bit images, 16 for the
scikit-learn digits) go to

.. math:: x = \frac{2p}{m} - 1, \qquad p = \frac{m}{2}(x + 1),

an affine map with Jacobian :math:`2/m` per coordinate, so for an image of :math:`D` values
:math:`\log\lvert\det \partial x/\partial p\rvert = D\log(2/m)` (:func:`model_range_log_det`).
A model density on :math:`x` gives the density on pixel space
:math:`\log p(p) = \log p(x) + D\log(2/m)`, and bits per dimension are
:math:`-\log p(p) / (D\log 2)` (of dequantised pixels; Ho et al. 2020, §3.3).
"""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from ..checks import check_choice

#: where ``apt-get install dataset-fashion-mnist`` (Debian) puts the official IDX files
FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def to_model_range(pixels: torch.Tensor, max_value: float = 255.0) -> torch.Tensor:
    """Pixels in ``[0, max_value]`` to :math:`x = 2p/m - 1` in :math:`[-1, 1]`, float32."""
    return pixels.float() * (2.0 / max_value) - 1.0


def to_pixel_range(x: torch.Tensor, max_value: float = 255.0) -> torch.Tensor:
    """The exact inverse of :func:`to_model_range`, :math:`p = m(x + 1)/2` (neither rounded nor
    clipped: samples may overshoot :math:`[-1, 1]`)."""
    return (x + 1.0) * (max_value / 2.0)


def model_range_log_det(num_dims: int, max_value: float = 255.0) -> float:
    r""":math:`\log\lvert\det\partial x/\partial p\rvert = D\log(2/m)` of :func:`to_model_range`."""
    return num_dims * math.log(2.0 / max_value)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8×8 handwritten digits (they ship with the wheel), ``(1797, 1, 8, 8)``.

    Pixels are integers 0–16, so the model range uses :math:`m = 16`.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError("the digits ship with scikit-learn: pip install scikit-learn") from e

    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32))[:, None]
    return to_model_range(x, 16.0), torch.from_numpy(bunch.target.astype(np.int64))


# IDX type codes (http://yann.lecun.com/exdb/mnist/, bottom of the page); data is big-endian
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> torch.Tensor:
    """Parse one IDX file (raw or ``.gz``) into a tensor of its declared shape and type.

    The header is two zero bytes, a type code, the number of dimensions :math:`k`, then :math:`k`
    big-endian uint32 sizes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path must be an IDX file, {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(
                f"{path} is a truncated or corrupt gzip file ({e}): download it again"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes), file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(data.astype(dtype.newbyteorder("=")))


def _idx_file(root: Path, stem: str) -> Path | None:
    # the official names use '-' before idx, some mirrors '.'; either may be gzipped
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in (".gz", ""):
            if (root / (name + suffix)).is_file():
                return root / (name + suffix)
    return None


def load_mnist(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST (same IDX layout) from ``root``, ``(N, 1, 28, 28)`` with labels 0–9.

    ``root`` holds ``{train,t10k}-images-idx3-ubyte`` and ``{train,t10k}-labels-idx1-ubyte``, raw or
    ``.gz``, as distributed.
    """
    check_choice("split", split, ("train", "test"))
    root, prefix = Path(root), "train" if split == "train" else "t10k"
    images = _idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        raise FileNotFoundError(
            f"no {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] in {root}: "
            "download the four IDX files of MNIST (https://yann.lecun.com/exdb/mnist/) or "
            "Fashion-MNIST "
            "(https://github.com/zalandoresearch/fashion-mnist, or on Debian "
            f"`apt-get install dataset-fashion-mnist`, which puts them in {FASHION_MNIST_DEBIAN}) "
            "and pass that directory"
        )
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.shape != (x.shape[0],):
        raise ValueError(
            f"{images}: expected (N, H, W) images and (N,) labels, got {x.shape}, {y.shape}"
        )
    return to_model_range(x[:, None]), y.long()


def load_cifar10(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from its python version, ``(N, 3, 32, 32)`` with labels 0–9.

    ``root`` is the extracted ``cifar-10-batches-py`` directory: ``data_batch_1`` … ``data_batch_5``
    and ``test_batch``, pickles of ``{b"data": (n, 3072) uint8, b"labels": [int]}``.
    """
    check_choice("split", split, ("train", "test"))
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not found in {root}: download "
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it and pass the "
            "cifar-10-batches-py directory"
        )
    xs, ys = [], []
    for name in names:
        with open(root / name, "rb") as f:
            # the batches are trusted local files in the format published by the data set's authors
            batch = pickle.load(f, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs))
    return to_model_range(x), torch.from_numpy(np.concatenate(ys))


def load_image_folder(
    root: str | Path, *, image_size: int | None = None, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every image file under ``root`` (recursively, in sorted order), read with Pillow.

    Images are converted to ``channels`` (1: grey, 3: RGB) and, with ``image_size``, resized to a
    square of that side (bicubic); without it they must all have the same size. When every image
    lies in a subdirectory of ``root``, the subdirectory names (sorted) are the classes, as in
    torchvision's ``ImageFolder``; otherwise ``labels`` is ``None``.
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading a folder of images needs Pillow: pip install pillow") from e

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root must be a directory of images, {root} does not exist")
    check_choice("channels", channels, (1, 3))
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"no image files ({', '.join(sorted(_IMAGE_SUFFIXES))}) under {root}"
        )
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if image_size is not None:
                    im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, channels))
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for broken files
            raise ValueError(
                f"{p} is not a readable image ({type(e).__name__}: {e}): repair or remove it"
            ) from None
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(
            f"images under {root} have different sizes {sorted(sizes)}: pass image_size"
        )
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    labels = None
    if all(p.parent != root for p in files):
        classes = sorted({p.relative_to(root).parts[0] for p in files})
        labels = torch.tensor([classes.index(p.relative_to(root).parts[0]) for p in files])
    return to_model_range(x), labels
