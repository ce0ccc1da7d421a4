"""comparisons.png: paired differences with their intervals, as a forest plot (one line per compared
row against the best; and per class for one chosen pair)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # on the Agg backend, which semseg.reporting.run_pictures chooses
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from semseg.reporting.comparisons import Comparison
from semseg.reporting.intervals import ABSENT, CONFIDENCE, UNDECIDED, Difference
from semseg.reporting.run_pictures import TITLE_PT, save_figure

VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", UNDECIDED: "0.4", ABSENT: "0.8"}
TITLE = "paired differences (the same images on both sides): green better, red worse, grey not distinguishable"
ROW_IN = 0.32  # the height of one line of the plot, in inches


def _forest(ax: Axes, labels: Sequence[str], differences: Sequence[Difference], title: str) -> None:
    """One horizontal line per difference: its interval, its mean as a dot, coloured by its verdict."""
    for position, diff in enumerate(differences):
        colour = VERDICT_COLOURS[diff.verdict]
        ax.plot([diff.low, diff.high], [position, position], color=colour, linewidth=2)
        ax.plot([diff.mean], [position], "o", color=colour)
    ax.axvline(0, color="0.2", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(labels)), [textwrap.shorten(label, 40) for label in labels])
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first line on top, as in the tables
    ax.set_xlabel(f"difference ({CONFIDENCE:.0%} interval)")
    ax.set_title(title, fontsize=TITLE_PT)


def comparisons_figure(against_best: Sequence[Comparison], pair: Comparison | None) -> Figure:
    """Left: each row's mIoU minus the best row's, per split. Right (with ``pair``): the pair's
    difference in each class's IoU. Green: better; red: worse; grey: not distinguishable."""
    panels = [p for p in (against_best, pair) if p]
    lines = max([len(against_best), len(pair.per_class) + 1 if pair else 0, 1])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 1.4 + ROW_IN * lines),
                             layout="constrained", squeeze=False)  # fmt: skip
    axes = list(axes[0])
    if against_best:
        best = against_best[0].against
        labels = [f"{c.run} ({c.split})" for c in against_best]
        _forest(axes.pop(0), labels, [c.miou for c in against_best], f"mIoU against the best: {best}")
    if pair:
        labels = ["mIoU", *(f"IoU {name}" for name in pair.per_class)]
        title = f"{pair.run} minus {pair.against} ({pair.split})"
        _forest(axes.pop(0), labels, [pair.miou, *pair.per_class.values()], textwrap.shorten(title, 70))
    for ax in axes:  # nothing to compare: a single row
        ax.text(0.5, 0.5, "one row: nothing to compare", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.suptitle(TITLE, fontsize=TITLE_PT)
    return fig


def comparisons_plot(against_best: Sequence[Comparison], pair: Comparison | None, path: Path) -> None:
    """Writes ``comparisons_figure``."""
    save_figure(comparisons_figure(against_best, pair), path)
