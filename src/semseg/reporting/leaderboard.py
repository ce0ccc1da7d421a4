"""Leaderboards of finished runs: every ``metrics.json`` under a folder, grouped across seeds.

A run is a folder with ``metrics.json`` and Hydra's ``.hydra/`` (its overrides and config group
choices). Runs whose overrides differ only in ``seed`` form one leaderboard row with the mean and
standard deviation of each metric. Reads files only: works offline on finished runs.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from semseg.errors import DataError
from semseg.files import atomic_path
from semseg.markdown import markdown_table
from semseg.run_folder import METRICS_FILE, RunFolder

# run_info.json keys shown after the seeds, with their column titles and scales.
COSTS = {
    "params": ("params (M)", 1e-6),
    "gflops": ("GFLOPs", 1.0),
    "train_images_per_s": ("train img/s", 1.0),
    "train_time_s": ("train (min)", 1 / 60),
}
HEADLINE = ("val/miou", "val/dice", "val/pixel_acc", "val/boundary_iou", "test/miou", "test/dice", "test/pixel_acc")


@dataclass
class Run:
    """One finished run: where it is, what it was (config choices and overrides), what it scored."""

    folder: Path
    overrides: list[str]
    choices: dict[str, str]
    seed: int | None
    metrics: dict[str, float | None]
    info: dict = field(default_factory=dict)  # run_info.json: params, gflops, train_time_s, epochs

    def name(self, common: set[str]) -> str:
        """The overrides that set this run apart from the ``common`` ones, without the seed (``loss=wce``)."""
        kept = [o for o in self.overrides if o not in common and not o.lstrip("+").startswith(("seed=", "hydra."))]
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


def find_runs(folder: str | Path) -> list[Run]:
    """Every run under ``folder`` (itself included), in folder order."""
    folder = Path(folder)
    runs = []
    for metrics_path in sorted(folder.rglob(METRICS_FILE)):
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


def metric_columns(runs: Sequence[Run]) -> list[str]:
    """The headline metrics, then per-class IoU of every split, where some run has a value."""
    present = {key for run in runs for key, value in run.metrics.items() if value is not None}
    per_class = sorted(k for k in present if "/iou/" in k)
    return [k for k in HEADLINE if k in present] + per_class


def _cell(row: Row, key: str, scale: float = 1.0, digits: int = 3) -> str:
    mean, std = row.mean_std(key)
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f}" + ("" if std is None else f" ± {std * scale:.{digits}f}")


def to_markdown(rows: Sequence[Row], columns: Sequence[str]) -> str:
    header = ["run", "model", "loss", "seeds", *(title for title, _ in COSTS.values()), *columns]
    lines = []
    for row in rows:
        first = row.runs[0].choices
        seeds = ",".join(str(run.seed) for run in row.runs)
        costs = [_cell(row, key, scale, digits=1) for key, (_, scale) in COSTS.items()]
        cells = [
            row.name,
            first.get("model", "-"),
            first.get("loss", "-"),
            seeds,
            *costs,
            *(_cell(row, c) for c in columns),
        ]
        lines.append(cells)
    return markdown_table(header, lines)


def write_csv(path: Path, rows: Sequence[Row], columns: Sequence[str]) -> None:
    """Writes the leaderboard as CSV, a mean and a std column per metric, atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        keys = [*COSTS, *columns]
        writer.writerow(["run", "model", "loss", "seeds", *(f"{c} {s}" for c in keys for s in ("mean", "std"))])
        for row in rows:
            first = row.runs[0].choices
            stats = [v for c in keys for v in row.mean_std(c)]
            seeds = " ".join(str(run.seed) for run in row.runs)
            writer.writerow([row.name, first.get("model", ""), first.get("loss", ""), seeds, *stats])


def write_leaderboard(
    folder: Path, sort: str = "val/miou", output: Path | None = None, images: int = 4, pictures: bool = True
) -> str:
    """Writes the leaderboard of the runs under ``folder`` into ``output`` (default: ``folder``):
    leaderboard.md and leaderboard.csv (ranked by ``sort``), leaderboard.png and, with ``pictures``,
    predictions.png of ``images`` validation images. Returns what to print: the Markdown table, the
    notes of runs that could not be drawn, and a summary line."""
    # Here, not at the top: matplotlib, torch and Lightning take seconds to load, which report.py's
    # --help (and whoever only reads runs) need not wait for.
    from semseg.reporting.figures import bar_chart, prediction_grid

    runs = find_runs(folder)
    rows = leaderboard(runs, sort)
    columns = metric_columns(runs)
    output = output or folder
    markdown = to_markdown(rows, columns)
    with atomic_path(output / "leaderboard.md") as tmp:
        tmp.write_text(markdown)
    write_csv(output / "leaderboard.csv", rows, columns)
    bar_chart(rows, output / "leaderboard.png")
    notes = prediction_grid(runs, output / "predictions.png", images) if pictures else []
    summary = f"{len(runs)} runs in {len(rows)} rows; wrote leaderboard.md, .csv, .png and predictions.png to {output}"
    return "\n".join([markdown, "\n".join(notes), summary])
