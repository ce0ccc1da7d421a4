"""The leaderboard's tables: Markdown (headline metrics with intervals first, then the comparisons,
the costs and the per-class scores) and CSV."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from semseg.files import atomic_path
from semseg.markdown import markdown_table
from semseg.reporting.comparisons import Comparison, SplitSamples
from semseg.reporting.intervals import CONFIDENCE, Interval
from semseg.reporting.leaderboard import COSTS, Row

PERCENT = f"{CONFIDENCE:.0%}"


def _split_metric(key: str) -> tuple[str, str]:
    split, metric = key.split("/", 1)
    return split, metric


def interval_of(row: Row, key: str, samples: Mapping[str, SplitSamples]) -> Interval | None:
    """``key``'s (``val/miou``, ``test/iou/car``) mean and interval for ``row``, where its runs have
    per-image scores of that split."""
    split, metric = _split_metric(key)
    found = samples.get(split)
    row_samples = found.samples.get(row.name) if found else None
    if row_samples is None:
        return None
    if metric.startswith("iou/"):
        names = row_samples.class_names
        name = metric.removeprefix("iou/")
        return row_samples.interval("class/iou")[names.index(name)] if name in names else None
    return row_samples.interval(metric) if metric in row_samples.full else None


def _cell(row: Row, key: str, samples: Mapping[str, SplitSamples], with_interval: bool = True) -> str:
    interval = interval_of(row, key, samples)
    if interval is not None:
        return str(interval) if with_interval else f"{interval.mean:.3f}"
    mean, std = row.mean_std(key)  # no per-image scores: the spread of the runs' metrics.json
    if mean is None:
        return "-"
    return f"{mean:.3f}" + ("" if std is None or not with_interval else f" ± {std:.3f}")


def _images(row: Row, samples: Mapping[str, SplitSamples]) -> str:
    counts = [f"{s.samples[row.name].images}" for s in samples.values() if row.name in s.samples]
    return " / ".join(counts) or "-"


def headline_table(rows: Sequence[Row], columns: Sequence[str], samples: Mapping[str, SplitSamples]) -> str:
    """run, model, loss, seeds, images (per split), then each headline metric as mean [interval]."""
    header = ["run", "model", "loss", "seeds", f"images ({' / '.join(samples) or '-'})", *columns]
    lines = []
    for row in rows:
        first = row.runs[0].choices
        seeds = ",".join(str(run.seed) for run in row.runs)
        cells = [_cell(row, key, samples) for key in columns]
        lines.append([row.name, first.get("model", "-"), first.get("loss", "-"), seeds, _images(row, samples), *cells])
    return markdown_table(header, lines)


def against_best_table(comparisons: Sequence[Comparison]) -> str:
    header = ["run", "against", "split", f"mIoU difference [{PERCENT} interval]", "P(difference > 0)", "verdict"]
    lines = [[c.run, c.against, c.split, str(c.miou), f"{c.miou.above_zero:.3f}", c.miou.verdict] for c in comparisons]
    return markdown_table(header, lines)


def pair_table(comparison: Comparison, samples: SplitSamples) -> str:
    """One pair on one split: mIoU, then each class's IoU, both sides and their difference."""
    a, b = samples.samples[comparison.run], samples.samples[comparison.against]
    header = ["metric", comparison.run, comparison.against, f"difference [{PERCENT} interval]", "P(> 0)", "verdict"]
    lines = [["mIoU", str(a.interval("miou")), str(b.interval("miou")), str(comparison.miou),
              f"{comparison.miou.above_zero:.3f}", comparison.miou.verdict]]  # fmt: skip
    for (name, diff), ia, ib in zip(
        comparison.per_class.items(), a.interval("class/iou"), b.interval("class/iou"), strict=True
    ):
        lines.append([f"IoU {name}", str(ia), str(ib), str(diff), f"{diff.above_zero:.3f}", diff.verdict])
    return markdown_table(header, lines)


def costs_table(rows: Sequence[Row]) -> str:
    header = ["run", *(title for title, _ in COSTS.values())]
    lines = []
    for row in rows:
        cells = []
        for key, (_, scale) in COSTS.items():
            mean, std = row.mean_std(key)
            cells.append(
                "-" if mean is None else f"{mean * scale:.1f}" + ("" if std is None else f" ± {std * scale:.1f}")
            )
        lines.append([row.name, *cells])
    return markdown_table(header, lines)


def per_class_table(rows: Sequence[Row], columns: Sequence[str], samples: Mapping[str, SplitSamples]) -> str:
    """One split's per-class IoU (``columns``: ``<split>/iou/<class>``), means only (leaderboard.csv
    has the intervals)."""
    header = ["run", *(key.split("/iou/", 1)[1] for key in columns)]
    return markdown_table(header, [[row.name, *(_cell(row, k, samples, False) for k in columns)] for row in rows])


def notes(rows: Sequence[Row], samples: Mapping[str, SplitSamples]) -> list[str]:
    """What a reader must know to weigh the intervals: rows of one seed, rows without them."""
    lines = []
    single = [row.name for row in rows if len(row.runs) == 1 and any(row.name in s.samples for s in samples.values())]
    if single:
        lines.append(
            f"- One seed ({', '.join(single)}): the interval is the images' chance only; "
            "the seeds' is not in it (train with seeds=3)."
        )
    for split, found in samples.items():
        for name, why in found.missing.items():
            lines.append(f"- {name}, {split}: mean ± standard deviation over seeds, no interval: {why}.")
    return lines


def write_leaderboard_csv(
    path: Path, rows: Sequence[Row], columns: Sequence[str], samples: Mapping[str, SplitSamples]
) -> None:
    """leaderboard.csv, atomically: per metric its mean and std over the runs, and the interval's
    low and high where there are per-image scores."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        splits = [f"{split} images" for split in samples]
        costs = [f"{key} {stat}" for key in COSTS for stat in ("mean", "std")]
        metrics = [f"{key} {stat}" for key in columns for stat in ("mean", "std", "low", "high")]
        writer.writerow(["run", "model", "loss", "seeds", *splits, *costs, *metrics])
        for row in rows:
            first = row.runs[0].choices
            values = [v for key in COSTS for v in row.mean_std(key)]
            for key in columns:
                interval = interval_of(row, key, samples)
                values += [*row.mean_std(key), *((interval.low, interval.high) if interval else (None, None))]
            images = [found.samples[row.name].images if row.name in found.samples else "" for found in samples.values()]
            seeds = " ".join(str(run.seed) for run in row.runs)
            writer.writerow([row.name, first.get("model", ""), first.get("loss", ""), seeds, *images, *values])
