"""The run folder's pictures (``<run>/pictures/*.png``), drawn with matplotlib and written atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt
import numpy as np
import torch

from semseg.files import atomic_path
from semseg.visualize import colorize


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Saves atomically (a reader never sees half a PNG) and closes the figure."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def overlay_grid(shown: Sequence, palette: np.ndarray, ignore_index: int, path: Path) -> None:
    """Rows of image | ground truth | prediction, captioned with the name and per-image mIoU."""
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 3, figsize=(6.6, 2.2 * len(shown)), squeeze=False)
    for row, item in enumerate(shown):
        panels = (
            item.image,
            colorize(item.mask, palette, ignore_index),
            colorize(item.prediction, palette, ignore_index),
        )
        for col, (title, picture) in enumerate(zip(("image", "ground truth", "prediction"), panels, strict=True)):
            axes[row, col].imshow(picture, interpolation="nearest")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(f"{item.name}\nmIoU {item.miou:.3f}", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def confusion_matrix(confusion: torch.Tensor, class_names: Sequence[str], path: Path) -> None:
    """Rows (true classes) normalised to 1, so rare classes are as readable as common ones."""
    counts = confusion.double().cpu().numpy()
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 1.5 + 0.5 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 20:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path)


def per_class_iou(metrics: Mapping[str, float], class_names: Sequence[str], path: Path) -> None:
    """Bars of ``val/iou/<class>`` of the latest validation."""
    values = [metrics.get(f"val/iou/{name}", np.nan) for name in class_names]
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(class_names), 3))
    ax.bar(range(len(class_names)), np.nan_to_num(values), color="tab:blue")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("val IoU")
    fig.tight_layout()
    save_figure(fig, path)


def training_curves(history: Sequence[Mapping[str, float]], path: Path) -> None:
    """Losses (left) and scores (right) against the epoch, one point per validation."""
    epochs = [h["epoch"] for h in history]
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(9, 3))
    for key, ax in (("train/loss", losses), ("val/loss", losses), ("val/miou", scores), ("val/dice", scores),
                    ("val/boundary_iou", scores)):  # fmt: skip
        if any(key in h for h in history):
            ax.plot(epochs, [h.get(key, np.nan) for h in history], marker=".", label=key)
    for ax in (losses, scores):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
