"""Figures of a training run: sample grids (:func:`save_samples`) and the loss curve
(:func:`save_loss_curve`), written as PNG files with matplotlib's object API (no global state, any
backend)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from .data import to_pixel_range


def save_samples(
    x: torch.Tensor, path: str | Path, *, reference: torch.Tensor | None = None
) -> int:
    """Save samples as a PNG: images ``(n, C, H, W)`` in :math:`[-1, 1]` as a square grid, 2D
    points as a scatter (over ``reference`` points in grey), 1D points as a histogram; a legend
    tells data from samples.

    Image values outside :math:`[-1, 1]` are clipped for display only, and not hidden: their
    count is written under the grid and returned (0 for points)."""
    from matplotlib.figure import Figure

    x = x.detach().float().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    outside = 0
    if x.ndim == 4:
        n, c, h, w = x.shape
        outside = int((x.abs() > 1).sum())
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
        pixels = to_pixel_range(x, 1.0).clamp(0, 1)
        for i in range(n):
            r, q = divmod(i, cols)
            grid[
                :, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w
            ] = pixels[i]
        img = grid.permute(1, 2, 0).numpy()
        # at least 3.5 inches wide, so the caption fits under a small grid
        width, height, caption = max(cols * 0.6 + 0.4, 3.5), rows * 0.6 + 0.4, 0.3
        fig = Figure(figsize=(width, height + caption))
        ax = fig.add_axes((0, caption / (height + caption), 1, height / (height + caption)))
        ax.imshow(
            img[..., 0] if c == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest"
        )
        ax.axis("off")
        fig.text(
            0.5, 0.5 * caption / (height + caption), outside_pixels_text(outside, x.numel()),
            ha="center", va="center", fontsize=7,
        )  # fmt: skip
    elif x.ndim == 2 and x.shape[1] in (1, 2):
        fig = Figure(figsize=(5, 5))
        ax = fig.subplots()
        ref = None if reference is None else reference.detach().float().cpu()
        if x.shape[1] == 2:
            if ref is not None:
                ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", label="data")
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, label="samples")
            ax.set_aspect("equal")
        else:
            if ref is not None:
                ax.hist(ref[:, 0], bins=80, density=True, color="0.75", label="data")
            ax.hist(x[:, 0], bins=80, density=True, histtype="step", label="samples")
        ax.legend(loc="upper right", markerscale=4)
    else:
        raise ValueError(
            f"x must be images (n, C, H, W) or points (n, 1 or 2), got {tuple(x.shape)}"
        )
    fig.savefig(path, dpi=100)
    return outside


def outside_pixels_text(outside: int, total: int) -> str:
    """``"12 of 50176 pixels (0.02%) outside [-1, 1], clipped for display"``."""
    return f"{outside} of {total} pixels ({100 * outside / total:.2f}%) outside [-1, 1]" + (
        ", clipped for display" if outside else ""
    )


def save_loss_curve(steps: Sequence[int], losses: Sequence[float], path: str | Path) -> None:
    """Save the training loss against the step as a PNG (log scale when every loss is > 0)."""
    from matplotlib.figure import Figure

    if len(steps) != len(losses):
        raise ValueError(f"steps and losses must match, got {len(steps)} and {len(losses)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, losses, lw=1, marker="." if len(steps) < 50 else None)
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean since the previous point)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def save_image_rows(
    rows: Sequence[torch.Tensor],
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
    per_line: int = 16,
) -> None:
    """Save rows of images side by side as a PNG: ``rows[k][i]`` is drawn under ``rows[k - 1][i]``
    (e.g. a hint's source image, the hint, the sample drawn with it), in bands of ``per_line``
    columns. Each row is ``(n, C, H, W)`` in :math:`[-1, 1]` with the same ``n``, ``H``, ``W``
    and 1 or 3 channels (a hint's first channels are shown); ``names`` label the rows."""
    from matplotlib.figure import Figure

    rows = [r.detach().float().cpu() for r in rows]
    n, _, h, w = rows[0].shape
    if any(r.ndim != 4 or r.shape[0] != n or r.shape[2:] != (h, w) for r in rows):
        raise ValueError(
            f"rows must be images (n, C, H, W) of one n, H and W, got {[tuple(r.shape) for r in rows]}"
        )
    if names is not None and len(names) != len(rows):
        raise ValueError(f"names must name the {len(rows)} rows, got {len(names)}")
    c = 3 if any(r.shape[1] >= 3 for r in rows) else 1
    rows = [r[:, :c] if r.shape[1] >= c else r[:, :1].expand(-1, c, -1, -1) for r in rows]
    cols, bands = min(n, per_line), math.ceil(n / per_line)
    lines = bands * len(rows)
    grid = torch.ones(c, lines * (h + 1) + bands, cols * (w + 1) + 1)
    for k, row in enumerate(rows):
        pixels = to_pixel_range(row, 1.0).clamp(0, 1)
        for i in range(n):
            band, q = divmod(i, per_line)
            top = 1 + band * (len(rows) * (h + 1) + 1) + k * (h + 1)
            grid[:, top : top + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = pixels[i]
    img = grid.permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    left = 1.2 if names else 0.0
    fig = Figure(figsize=(left + cols * 0.45 + 0.2, lines * 0.45 + 0.2))
    ax = fig.add_axes((left / fig.get_figwidth(), 0, 1 - left / fig.get_figwidth(), 1))
    ax.imshow(img[..., 0] if c == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for band in range(bands if names else 0):
        for k, name in enumerate(names):
            top = 1 + band * (len(rows) * (h + 1) + 1) + k * (h + 1)
            ax.text(-1, top + h / 2, name, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=100)
