"""The leaderboard's pictures: a bar chart of the scores, and the same validation images predicted by
every run side by side (the book's FCN-vs-U-Net view).

As the run folder's pictures (semseg.reporting.run_pictures): ``*_figure`` functions return the figure (tests
read it), their namesakes save it; titles say the split, checkpoint and epoch shown.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # on the Agg backend, which semseg.reporting.run_pictures chooses
import numpy as np
from matplotlib.figure import Figure
from omegaconf import OmegaConf, open_dict

from semseg.builders import build_datamodule
from semseg.data.palette import to_display
from semseg.inference.checkpoint import load_module
from semseg.inference.tiling import predict_logits
from semseg.reporting.captions import example_names, picture_title
from semseg.reporting.intervals import CONFIDENCE
from semseg.reporting.leaderboard import Row, Run
from semseg.reporting.run_pictures import TITLE_PT, Classes, image_grid, save_figure
from semseg.reporting.tables import interval_of
from semseg.run_folder import RunFolder, checkpoint_epoch
from semseg.task.module import SegmentationModule


def bar_chart(
    rows: Sequence[Row], path: Path, metrics: Sequence[str] = ("val/miou", "test/miou"), samples: Mapping | None = None
) -> None:
    """Writes ``bar_chart_figure``."""
    save_figure(bar_chart_figure(rows, metrics, samples), path)


def bar_chart_figure(
    rows: Sequence[Row], metrics: Sequence[str] = ("val/miou", "test/miou"), samples: Mapping | None = None
) -> Figure:
    """Horizontal bars of each row's mean score, with its 95% interval where ``samples`` (the
    report's ``SplitSamples`` by split) hold the row's per-image scores, else the standard deviation
    across seeds; each row says the epoch of its runs' checkpoint."""
    metrics = [m for m in metrics if any(row.values(m) for row in rows)]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(rows) * len(metrics)), layout="constrained")
    height = 0.8 / max(len(metrics), 1)
    positions = np.arange(len(rows))
    spreads = set()
    for i, metric in enumerate(metrics):
        means, below, above = [], [], []
        for row in rows:
            interval = interval_of(row, metric, samples or {})
            if interval is not None:
                means.append(interval.mean)
                below.append(interval.mean - interval.low)
                above.append(interval.high - interval.mean)
                spreads.add(f"{CONFIDENCE:.0%} interval")
            else:
                mean, std = row.mean_std(metric)
                means.append(mean or 0.0)
                below.append(std or 0.0)
                above.append(std or 0.0)
                spreads.add("std across seeds")
        ax.barh(positions + i * height, means, height, xerr=[below, above], label=metric, capsize=3)
    ax.set_yticks(positions + height * (len(metrics) - 1) / 2, [_row_label(row) for row in rows])
    ax.invert_yaxis()  # the best row on top, as in the table
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"score (mean, {' or '.join(sorted(spreads)) or 'std across seeds'})")
    fig.legend(loc="outside right upper", frameon=False)  # beside the bars: a long bar runs under an inside one
    splits = " and ".join(dict.fromkeys(m.split("/")[0] for m in metrics)) or "no scores"
    # metrics.json says "checkpoint": "last" when validation was off: the final weights were scored.
    checkpoints = " or ".join(sorted({f"{run.metrics.get('checkpoint', 'best')}.ckpt" for r in rows for run in r.runs}))
    fig.suptitle(f"{splits} of each run's {checkpoints}", fontsize=TITLE_PT)
    return fig


def _row_label(row: Row) -> str:
    """The row's name, and the epoch(s) of its runs' checkpoints where they are there to read."""
    epochs = [e for run in row.runs if (path := _checkpoint(run)) and (e := checkpoint_epoch(path)) is not None]
    if not epochs:
        return row.name
    return f"{row.name}\n(epoch{'s' * (len(epochs) > 1)} {', '.join(map(str, epochs))})"


def _checkpoint(run: Run) -> Path | None:
    return RunFolder(run.folder).result_checkpoint()


def _validation_set(run: Run):
    cfg = OmegaConf.load(RunFolder(run.folder).hydra_config)
    with open_dict(cfg):
        cfg.data.num_workers = 0
        cfg.data.synthetic = None  # read what is there; never generate from a report
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("validate")
    return datamodule.datasets["val"]


def _prepared(module: SegmentationModule, sample: dict) -> dict:
    """One data-set sample as a batch of one, normalised as ``module``'s network expects."""
    return module.prepare_batch({"image": sample["image"][None], "mask": sample["mask"][None]})


def prediction_grid(runs: Sequence[Run], path: Path, num_images: int = 4, seed: int = 0) -> list[str]:
    """Writes ``prediction_grid_figure`` (when some run could be drawn); returns its notes."""
    fig, notes = prediction_grid_figure(runs, num_images, seed)
    if fig is not None:
        save_figure(fig, path)
    return notes


@dataclass
class _Column:
    """One run's predictions of the picked images, and which checkpoint made them."""

    run: Run
    predictions: list[np.ndarray]
    checkpoint: str
    epoch: int | None


def prediction_grid_figure(runs: Sequence[Run], num_images: int = 4, seed: int = 0) -> tuple[Figure | None, list[str]]:
    """The same validation images (a seeded choice) predicted by every run's best checkpoint, one
    column a run, titled with its checkpoint and epoch; the class legend below.

    Runs need their checkpoint and the same validation set as the first run; the others are left
    out, and the returned notes say which and why (no figure when no run is left).
    """
    reference, columns, notes = _predict(runs, num_images, seed)
    if reference is None:
        return None, notes
    names, picked, dataset, module = reference
    hp = module.hparams
    classes = Classes(hp.class_names, module.palette, hp.ignore_index, module.mode)
    mean, std = module.normalization
    samples = [_prepared(module, dataset[index]) for index in picked]
    ignored = classes.any_ignored([sample["mask"][0].numpy() for sample in samples])
    common = set.intersection(*(set(c.run.overrides) for c in columns)) if len(columns) > 1 else set()
    titles = ["image", "ground truth", *(_column_title(c, common) for c in columns)]
    rows = [
        [
            to_display(sample["image"][0].numpy(), mean, std, stretch=module.max_pixel_value > 255),
            classes.colorize(sample["mask"][0].numpy()),
            *(classes.colorize(c.predictions[row]) for c in columns),
        ]
        for row, sample in enumerate(samples)
    ]
    shown = {(c.epoch, c.checkpoint) for c in columns}
    title = picture_title("val", *shown.pop()) if len(shown) == 1 else "val, each run's checkpoint and epoch above it"
    # The legend below: the grid is wide (a column a run) and may be a single row high.
    fig = image_grid(rows, titles, [names[i] for i in picked], classes, title, ignored, legend_below=True)
    return fig, notes


def _column_title(column: _Column, common: set[str]) -> str:
    # Wrapped: a run's name of several overrides is wider than its 2.2-inch column.
    name = textwrap.fill(column.run.name(common), 28)
    return f"{name}\n{picture_title(column.checkpoint, column.epoch)}"


def _predict(runs: Sequence[Run], num_images: int, seed: int) -> tuple[tuple | None, list[_Column], list[str]]:
    """(validation image names, picked indices, data set, first module) or None, each drawable
    run's column, and notes on the runs left out."""
    notes, columns, reference = [], [], None
    for run in runs:
        checkpoint = _checkpoint(run)
        if checkpoint is None:
            notes.append(f"{run.folder}: no checkpoint, left out of the picture")
            continue
        module = load_module(checkpoint)
        dataset = _validation_set(run)
        names = [pair[0].stem for pair in dataset.pairs]
        if reference is None:
            chosen = set(example_names(names, num_images, seed))  # as the training callback chooses its examples
            reference = (names, [i for i, name in enumerate(names) if name in chosen], dataset, module)
        elif names != reference[0]:
            notes.append(f"{run.folder}: another validation set, left out of the picture")
            continue
        # As evaluation predicts (whole, tiled or TTA: the checkpoint's inference settings), so the
        # pictures show the predictions that were scored.
        images = (_prepared(module, dataset[i])["image"] for i in reference[1])
        # module.prediction: argmax, or sigmoid > threshold per class in binary and multilabel tasks.
        predictions = [
            module.prediction(predict_logits(module.net, image, module.inference))[0].cpu().numpy() for image in images
        ]
        columns.append(_Column(run, predictions, checkpoint.name, checkpoint_epoch(checkpoint)))
    return reference, columns, notes
