"""Training data: toy sets generated in code and image sets read from local files.

:func:`load_dataset` gives any of :data:`DATASETS` by name as ``(x, labels)``: ``x`` a
float32 ``(N, *data_shape)`` tensor (images in :math:`[-1, 1]`, see :mod:`sdekit.data.images`),
``labels`` an int64 ``(N,)`` tensor or ``None``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checks import check_choice
from .images import (
    FASHION_MNIST_DEBIAN,
    load_cifar10,
    load_digits,
    load_image_folder,
    load_mnist,
    model_range_log_det,
    read_idx,
    to_model_range,
    to_pixel_range,
)
from .toy import GMM_1D, GMM_2D, TOY_DATASETS

#: image data sets by name (``digits`` is embedded; the others read ``root``)
IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "folder")
#: every name :func:`load_dataset` accepts
DATASETS = (*TOY_DATASETS, *IMAGE_DATASETS)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    n: int = 10_000,
    split: str = "train",
    image_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The data set ``name`` as ``(x, labels)``.

    Args:
        name: one of :data:`DATASETS`.
        root: the directory for ``mnist``, ``fashion_mnist`` (default: the Debian package's),
            ``cifar10`` and ``folder``.
        n: the number of points drawn for a toy set (from ``generator``).
        split: ``"train"`` or ``"test"`` for MNIST, Fashion-MNIST and CIFAR-10.
        image_size: resize a folder's images to this square side.
    """
    if name in TOY_DATASETS:
        return TOY_DATASETS[name](n, generator), None
    if name == "digits":
        return load_digits()
    if name == "fashion_mnist":
        return load_mnist(FASHION_MNIST_DEBIAN if root is None else root, split)
    check_choice("data", name, DATASETS)
    if root is None:
        raise ValueError(f"data {name!r} is read from local files: pass data_root (the directory)")
    if name == "mnist":
        return load_mnist(root, split)
    if name == "cifar10":
        return load_cifar10(root, split)
    return load_image_folder(root, image_size=image_size)


__all__ = [
    "DATASETS",
    "IMAGE_DATASETS",
    "TOY_DATASETS",
    "GMM_1D",
    "GMM_2D",
    "FASHION_MNIST_DEBIAN",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_cifar10",
    "load_image_folder",
    "read_idx",
    "to_model_range",
    "to_pixel_range",
    "model_range_log_det",
]
