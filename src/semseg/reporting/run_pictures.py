"""The run folder's pictures (``<run>/pictures/*.png``), drawn with matplotlib and written atomically.

Each picture is a function that returns its figure, and ``save_figure`` writes it: tests read the
figure itself (legend, title, font sizes), not the PNG. Every picture says in its title what it
shows (split, epoch, checkpoint), names the classes with their colours, and has no text smaller
than ``MIN_FONT_PT``, so that it reads at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from semseg.data.palette import IGNORE_COLOUR, colorize_mode
from semseg.files import atomic_path

MIN_FONT_PT = 8  # the smallest text of any picture: tick labels, legends, values, captions
TITLE_PT = 10
LEGEND_ROW_IN = 0.22  # the height of one legend entry at MIN_FONT_PT, in inches
BESIDE = "outside right center"  # where a class legend goes when the height is given
OUTLINE = "0.5"  # grey edge of colour patches and bars: black class 0 and white ignored stay visible


@dataclass
class Classes:
    """What a picture needs to paint and name the classes."""

    names: Sequence[str]
    palette: np.ndarray  # (num_classes, 3) uint8 RGB
    ignore_index: int | None = None
    mode: str = "multiclass"  # data.mode: binary masks are 0/1, multilabel ones (K, H, W) planes, blended

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        return colorize_mode(mask, self.palette, self.mode, self.ignore_index)

    def any_ignored(self, masks: Sequence[np.ndarray]) -> bool:
        return self.ignore_index is not None and any((m == self.ignore_index).any() for m in masks)


def save_figure(fig: Figure, path: Path) -> None:
    """Saves atomically (a reader never sees half a PNG) and closes the figure."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def class_legend(fig: Figure, classes: Classes, loc: str, ncols: int = 1, ignored: bool = False) -> Legend:
    """The class names with their colours, outside the axes (``loc`` "outside ..." of a constrained
    layout), so the legend never hides a picture."""
    handles = [Patch(facecolor=classes.palette[i] / 255, edgecolor=OUTLINE, label=name)
               for i, name in enumerate(classes.names)]  # fmt: skip
    if ignored:
        handles.append(Patch(facecolor=np.asarray(IGNORE_COLOUR) / 255, edgecolor=OUTLINE, label="ignored"))
    return fig.legend(handles=handles, loc=loc, ncols=ncols, fontsize=MIN_FONT_PT, title="classes",
                      title_fontsize=MIN_FONT_PT, frameon=False)  # fmt: skip


def legend_columns(entries: int, figure_height_in: float) -> int:
    """Columns a legend of ``entries`` beside the axes (``BESIDE``) needs to keep clear of the
    figure's title: vertically centred, it may take the height less a title's room above and below."""
    rows = int((figure_height_in - 1.0) / LEGEND_ROW_IN) - 1  # a row for the legend's title
    return math.ceil(entries / max(1, rows))


def legend_width(names: Sequence[str], ncols: int) -> float:
    """Inches a right-hand legend of ``names`` in ``ncols`` columns takes (patch, gap and text)."""
    return ncols * (0.45 + 0.075 * max(len(n) for n in [*names, "ignored"]))


def image_panel(ax: Axes, picture: np.ndarray, title: str | None = None) -> None:
    """An image, pixel for pixel (masks are not blurred), without ticks."""
    ax.imshow(picture, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


PANEL_IN = 2.2  # the side of one image panel of a grid, in inches


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    row_labels: Sequence[str],
    classes: Classes,
    title: str,
    ignored: bool,
    legend_below: bool = False,
) -> Figure:
    """Rows of image panels, ``PANEL_IN`` inches each, the columns titled above the first row and
    each row labelled on its left; the class legend (with "ignored" when ``ignored``) beside the
    grid, or below it when ``legend_below`` (a wide grid: many columns and few rows)."""
    entries = len(classes.names) + ignored
    width, height = PANEL_IN * len(column_titles), PANEL_IN * len(rows)
    if legend_below:
        ncols = max(1, min(entries, int(width / legend_width(classes.names, 1))))
        legend_rows = -(-entries // ncols) + 1  # and its title
        figsize, loc = (width, height + 0.9 + LEGEND_ROW_IN * legend_rows), "outside lower center"
    else:  # the height stays PANEL_IN a row: the legend takes columns rather than rows
        ncols = legend_columns(entries, height)
        figsize, loc = (width + legend_width(classes.names, ncols), height), BESIDE
    fig, axes = plt.subplots(len(rows), len(column_titles), figsize=figsize, squeeze=False, layout="constrained")
    for row, (panels, label) in enumerate(zip(rows, row_labels, strict=True)):
        for col, picture in enumerate(panels):
            image_panel(axes[row, col], picture, column_titles[col] if row == 0 else None)
        axes[row, 0].set_ylabel(label, fontsize=MIN_FONT_PT)
    fig.suptitle(title, fontsize=TITLE_PT)
    class_legend(fig, classes, loc, ncols, ignored)
    return fig


def overlay_grid(shown: Sequence, classes: Classes, title: str) -> Figure:
    """Rows of image | ground truth | prediction, captioned with the name and per-image mIoU; the
    class legend on the right."""
    ignored = classes.any_ignored([s.mask for s in shown] + [s.prediction for s in shown])
    rows = [(s.image, classes.colorize(s.mask), classes.colorize(s.prediction)) for s in shown]
    labels = [f"{s.name}\nmIoU {s.miou:.3f}" for s in shown]
    return image_grid(rows, ("image", "ground truth", "prediction"), labels, classes, title, ignored)


def confusion_matrix(confusion: torch.Tensor, classes: Classes, title: str) -> Figure:
    """Rows (true classes) normalised to 1, so rare classes are as readable as common ones."""
    counts = confusion.double().cpu().numpy()
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    names = classes.names
    size = 2 + 0.5 * len(names)
    ncols = legend_columns(len(names), size)
    fig, ax = plt.subplots(figsize=(size + 1.2 + legend_width(names, ncols), size), layout="constrained")
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, aspect="auto")  # a fixed aspect defeats the layout
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=MIN_FONT_PT)
    ax.set_yticks(ticks, names, fontsize=MIN_FONT_PT)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 20:  # beyond, the values would not fit their cells
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=MIN_FONT_PT,
                        color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.suptitle(title, fontsize=TITLE_PT)
    class_legend(fig, classes, BESIDE, ncols)
    return fig


def per_class_iou(metrics: Mapping[str, float], classes: Classes, title: str) -> Figure:
    """Bars of ``val/iou/<class>`` in the class colours, each with its value (n/a: the class was
    neither in the targets nor predicted), and the mIoU as a labelled line."""
    names = classes.names
    values = np.array([metrics.get(f"val/iou/{name}", np.nan) for name in names], float)
    ncols = legend_columns(len(names), 3.6)
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * len(names) + legend_width(names, ncols), 3.6), layout="constrained")
    colours = classes.palette[: len(names)] / 255
    bars = ax.bar(range(len(names)), np.nan_to_num(values), color=colours, edgecolor=OUTLINE)
    ax.bar_label(bars, [f"{v:.2f}" if np.isfinite(v) else "n/a" for v in values], padding=2, fontsize=MIN_FONT_PT)
    miou = metrics.get("val/miou", np.nanmean(values) if np.isfinite(values).any() else np.nan)
    if np.isfinite(miou):
        ax.axhline(miou, color="0.2", linestyle="--", linewidth=1, label=f"mIoU {miou:.3f}")
        # Beside the axes, at the line's height: inside, the label could sit on a bar's value.
        ax.annotate(f"mIoU\n{miou:.3f}", (1, miou), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=MIN_FONT_PT)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=MIN_FONT_PT)
    ax.set_ylim(0, 1.12)  # room for the value of a bar at 1
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("IoU")
    fig.suptitle(title, fontsize=TITLE_PT)
    class_legend(fig, classes, BESIDE, ncols)
    return fig


def training_curves(
    history: Sequence[Mapping[str, float]],
    learning_rates: Sequence[tuple[int, float]],
    checkpoint: tuple[str, int | None] | None = None,
) -> Figure:
    """Losses, scores (one point per validation, against the epoch) and the learning rate (against
    the optimizer step); ``checkpoint`` (name, epoch), the one validated after training, is marked."""
    epochs = [h["epoch"] for h in history]
    fig, (losses, scores, rate) = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for key, ax in (("train/loss", losses), ("val/loss", losses), ("val/miou", scores), ("val/dice", scores),
                    ("val/boundary_iou", scores)):  # fmt: skip
        if any(key in h for h in history):
            ax.plot(epochs, [h.get(key, np.nan) for h in history], marker=".", label=key)
    title = f"train and val, epochs {epochs[0]}–{epochs[-1]}" if epochs else "train and val: no validation yet"
    if checkpoint and checkpoint[1] is not None:
        title += f"; {checkpoint[0]} is epoch {checkpoint[1]}"
        for ax in (losses, scores):
            ax.axvline(checkpoint[1], color="0.4", linestyle=":", label=checkpoint[0])
    for ax, ylabel in ((losses, "loss"), (scores, "score")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # validations are at whole epochs
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=MIN_FONT_PT)
    _learning_rate_panel(rate, learning_rates)
    fig.suptitle(title, fontsize=TITLE_PT)
    return fig


def _learning_rate_panel(ax: Axes, learning_rates: Sequence[tuple[int, float]]) -> None:
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    if not learning_rates:
        ax.text(0.5, 0.5, "no learning rate recorded", transform=ax.transAxes, ha="center", va="center")
        return
    steps, rates = zip(*learning_rates, strict=True)
    ax.plot(steps, rates, color="tab:purple")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
