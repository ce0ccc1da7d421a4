"""The leaderboard's pictures: a bar chart of the scores, and the same validation images predicted by
every run side by side (the book's FCN-vs-U-Net view)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch
from omegaconf import OmegaConf, open_dict

from semseg.checkpoint import load_module
from semseg.module import SegmentationModule
from semseg.report import Row, Run
from semseg.train import build_datamodule
from semseg.visualize import colorize, to_display


def bar_chart(rows: Sequence[Row], path: Path, metrics: Sequence[str] = ("val/miou", "test/miou")) -> None:
    """Horizontal bars of each row's mean score, with the standard deviation across seeds."""
    metrics = [m for m in metrics if any(row.values(m) for row in rows)]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows) * len(metrics)))
    height = 0.8 / max(len(metrics), 1)
    positions = np.arange(len(rows))
    for i, metric in enumerate(metrics):
        stats = [row.mean_std(metric) for row in rows]
        means = [mean or 0.0 for mean, _ in stats]
        errors = [std or 0.0 for _, std in stats]
        ax.barh(positions + i * height, means, height, xerr=errors, label=metric, capsize=3)
    ax.set_yticks(positions + height * (len(metrics) - 1) / 2, [row.name for row in rows])
    ax.invert_yaxis()  # the best row on top, as in the table
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (mean ± std across seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _checkpoint(run: Run) -> Path | None:
    for name in ("best.ckpt", "last.ckpt"):
        if (path := run.folder / "checkpoints" / name).is_file():
            return path
    return None


def _validation_set(run: Run):
    cfg = OmegaConf.load(run.folder / ".hydra" / "config.yaml")
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
    """Draws the same validation images (a seeded choice) predicted by every run's best checkpoint.

    Runs need their checkpoint and the same validation set as the first run; the others are left
    out, and the returned notes say which and why.
    """
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
            rng = np.random.default_rng(seed)
            picked = sorted(rng.choice(len(names), min(num_images, len(names)), replace=False).tolist())
            reference = (names, picked, dataset, module)
        elif names != reference[0]:
            notes.append(f"{run.folder}: another validation set, left out of the picture")
            continue
        with torch.no_grad():
            predictions = [module(_prepared(module, dataset[i])["image"]).argmax(1)[0].numpy() for i in reference[1]]
        columns.append((run, predictions))
    if reference is None:
        return notes
    names, picked, dataset, module = reference
    hp = module.hparams
    palette = module.palette
    mean, std = module.normalization
    fig, axes = plt.subplots(len(picked), 2 + len(columns), figsize=(2.2 * (2 + len(columns)), 2.2 * len(picked) + 0.6))
    axes = np.atleast_2d(axes)
    common = set.intersection(*(set(r.overrides) for r, _ in columns)) if len(columns) > 1 else set()
    for row, index in enumerate(picked):
        sample = _prepared(module, dataset[index])
        panels = [
            ("image", to_display(sample["image"][0].numpy(), mean, std)),
            ("ground truth", colorize(sample["mask"][0].numpy(), palette, hp.ignore_index)),
        ]
        panels += [(run.name(common), colorize(p[row], palette, hp.ignore_index)) for run, p in columns]
        for col, (title, picture) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        axes[row, 0].set_ylabel(names[index], fontsize=7)
    handles = [Patch(color=palette[i] / 255, label=name) for i, name in enumerate(hp.class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return notes
