"""Leaderboards of finished runs: every ``metrics.json`` under a folder, grouped across seeds.

A run is a folder with ``metrics.json`` and Hydra's ``.hydra/`` (its overrides and config group
choices), and ``per_image_scores.npz`` (its images' confusion matrices, for the intervals of
``semseg.reporting.intervals``) where it was written. Runs whose overrides differ only in ``seed``
form one leaderboard row. Reads files only: works offline on finished runs.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from semseg.errors import DataError
from semseg.run_folder import METRICS_FILE, RunFolder
from semseg.task.per_image import PerImageScores, read_per_image_scores

# run_info.json keys shown after the seeds, with their column titles and scales.
COSTS = {
    "params": ("params (M)", 1e-6),
    "gflops": ("GFLOPs", 1.0),
    "train_images_per_s": ("train img/s", 1.0),
    "train_time_s": ("train (min)", 1 / 60),
}
HEADLINE = tuple(
    f"{split}/{metric}" for split in ("val", "test") for metric in ("miou", "dice", "pixel_acc", "boundary_iou")
)


@dataclass
class Run:
    """One finished run: where it is, what it was (config choices and overrides), what it scored."""

    folder: Path
    overrides: list[str]
    choices: dict[str, str]
    seed: int | None
    metrics: dict[str, float | None]
    info: dict = field(default_factory=dict)  # run_info.json: params, gflops, train_time_s, epochs
    per_image: dict[str, PerImageScores] | None = None  # per_image_scores.npz by split, where written

    def name(self, common: set[str]) -> str:
        """The overrides that set this run apart from the ``common`` ones, without the seed (``loss=wce``)
        and ``seeds`` (how a sweep chose seeds, not what a run trained: ``seed=1`` runs from a sweep of
        their own join the ``seeds=3`` sweep's rows)."""
        skipped = ("seed=", "seeds=", "hydra.")
        kept = [o for o in self.overrides if o not in common and not o.lstrip("+").startswith(skipped)]
        return " ".join(kept) or "defaults"


@dataclass
class Row:
    """Runs that differ only in their seed: one line of the leaderboard."""

    name: str
    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        found = (run.metrics.get(key, run.info.get(key)) for run in self.runs)
        return [v for v in found if v is not None and not math.isnan(v)]

    def mean_std(self, key: str) -> tuple[float | None, float | None]:
        values = self.values(key)
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _read_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _folder_order(path: Path) -> tuple:
    """Sweep folders in job order: ``2`` before ``10`` (numbers as numbers, names as names)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def find_runs(folder: str | Path) -> list[Run]:
    """Every run under ``folder`` (itself included), in folder order."""
    folder = Path(folder)
    runs = []
    for metrics_path in sorted(folder.rglob(METRICS_FILE), key=_folder_order):
        run_dir = metrics_path.parent
        hydra = _read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
        config = _read_yaml(RunFolder(run_dir).hydra_config) or {}
        choices = hydra.get("hydra", {}).get("runtime", {}).get("choices", {})
        runs.append(
            Run(
                folder=run_dir,
                overrides=_read_yaml(run_dir / ".hydra" / "overrides.yaml") or [],
                choices={k: str(v) for k, v in choices.items() if not k.startswith("hydra/")},
                seed=config.get("seed"),
                metrics=json.loads(metrics_path.read_text()),
                info=json.loads(info.read_text()) if (info := RunFolder(run_dir).run_info).is_file() else {},
                per_image=read_per_image_scores(path)
                if (path := RunFolder(run_dir).per_image_scores).is_file()
                else None,
            )
        )
    if not runs:
        raise DataError(f"no metrics.json under {folder}: point report.py at a run or multirun folder.")
    return runs


def leaderboard(runs: Sequence[Run], sort_by: str = "val/miou") -> list[Row]:
    """Rows of runs grouped by the overrides that differ between runs (the seed aside), best
    ``sort_by`` mean first."""
    common = set.intersection(*(set(run.overrides) for run in runs)) if len(runs) > 1 else set()
    rows: dict[str, Row] = {}
    for run in runs:
        name = run.name(common)
        rows.setdefault(name, Row(name)).runs.append(run)
    return sorted(rows.values(), key=lambda row: -(row.mean_std(sort_by)[0] or -math.inf))


def metric_columns(runs: Sequence[Run]) -> tuple[list[str], dict[str, list[str]]]:
    """The headline metrics where some run has a value, and each split's per-class IoU keys, in the
    classes' order (the per-image scores'; metrics.json's keys are sorted by name)."""
    present = [key for run in runs for key, value in run.metrics.items() if value is not None]
    per_class: dict[str, list[str]] = {}
    for key in dict.fromkeys(present):
        if "/iou/" in key:
            per_class.setdefault(key.split("/", 1)[0], []).append(key)
    scored = [scores for run in runs for scores in (run.per_image or {}).values()]
    if scored:
        order = {name: index for index, name in enumerate(scored[0].scored_class_names())}
        for keys in per_class.values():
            keys.sort(key=lambda key: order.get(key.split("/iou/", 1)[1], len(order)))
    return [k for k in HEADLINE if k in present], per_class
