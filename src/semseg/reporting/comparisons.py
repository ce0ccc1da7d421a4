"""The leaderboard's rows with intervals, against the best row and against each other
(``semseg.reporting.intervals`` says how), from the runs' ``per_image_scores.npz`` alone."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from semseg.errors import DataError
from semseg.files import atomic_path
from semseg.reporting.intervals import Difference, Resampler, RowSamples, row_samples
from semseg.reporting.leaderboard import Row, find_runs
from semseg.task.per_image import PerImageScores

HEADLINE_SCORES = ("miou", "dice", "pixel_acc", "boundary_iou")
COMPARISON_COLUMNS = (
    "split",
    "run",
    "against",
    "metric",
    "difference",
    "low",
    "high",
    "p_above_zero",
    "verdict",
    "seeds",
    "seeds_against",
    "images",
)


@dataclass
class SplitSamples:
    """Every row's resampled scores on one split, and why a row has none."""

    split: str
    samples: dict[str, RowSamples] = field(default_factory=dict)  # by row name
    image_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # by row name: its images
    missing: dict[str, str] = field(default_factory=dict)  # by row name: why no samples

    def comparable(self, a: str, b: str) -> bool:
        """Both rows have samples on the same images (then resampled alike: paired)."""
        return a in self.samples and b in self.samples and self.image_sets[a] == self.image_sets[b]


def _row_records(row: Row, split: str) -> list[PerImageScores] | str:
    """The row's runs' records of ``split``, or why there are none."""
    records = []
    for run in row.runs:
        if run.per_image is None:
            return f"no per_image_scores.npz in {run.folder} (a run from before semseg kept them: train it again)"
        if split not in run.per_image:
            return f"{run.folder} has no per-image {split} scores"
        records.append(run.per_image[split])
    names = {tuple(sorted(r.names.tolist())) for r in records}
    if len(names) > 1:
        return "its seeds scored different images"
    return records


def split_samples(rows: Sequence[Row], split: str, resamples: int, seed: int = 0) -> SplitSamples:
    """The rows' samples on ``split``: rows scored on the same images share one ``Resampler``."""
    result = SplitSamples(split)
    resamplers: dict[tuple[str, ...], Resampler] = {}
    for row in rows:
        records = _row_records(row, split)
        if isinstance(records, str):
            result.missing[row.name] = records
            continue
        images = tuple(sorted(records[0].names.tolist()))
        resampler = resamplers.setdefault(images, Resampler(images, resamples, seed))
        result.samples[row.name] = row_samples([r.in_order(resampler.names) for r in records], resampler)
        result.image_sets[row.name] = images
    return result


@dataclass
class Comparison:
    """Row ``run`` against row ``against`` on one split: the mIoU's and each class IoU's differences."""

    split: str
    run: str
    against: str
    miou: Difference
    per_class: dict[str, Difference]
    seeds: int
    seeds_against: int
    images: int

    def csv_rows(self) -> list[list]:
        rows = []
        for metric, diff in {"miou": self.miou, **{f"iou/{c}": d for c, d in self.per_class.items()}}.items():
            values = [diff.mean, diff.low, diff.high, diff.above_zero, diff.verdict]
            rows.append(
                [self.split, self.run, self.against, metric, *values, self.seeds, self.seeds_against, self.images]
            )
        return rows


def compare(samples: SplitSamples, run: str, against: str) -> Comparison:
    """Row ``run`` minus row ``against`` on ``samples``' split (``comparable`` rows)."""
    a, b = samples.samples[run], samples.samples[against]
    per_class = dict(zip(a.class_names, a.difference(b, "class/iou"), strict=True))
    return Comparison(samples.split, run, against, a.difference(b, "miou"), per_class, a.seeds, b.seeds, a.images)


def against_best(samples: SplitSamples, best: str) -> list[Comparison]:
    """Every other row with samples, against the ``best`` row."""
    return [compare(samples, name, best) for name in samples.samples if name != best and samples.comparable(name, best)]


def named_row(rows: Sequence[Row], spec: str) -> Row:
    """The row ``spec`` names: a row's name, the overrides of exactly one row (``"loss=ce"``,
    ``"loss=ce model=fcn"``), or a run or multirun folder (its runs as one row).

    Raises:
        DataError: no row, or several, match (their names listed).
    """
    by_name = {row.name: row for row in rows}
    if spec in by_name:
        return by_name[spec]
    if Path(spec).is_dir():
        return Row(spec, find_runs(spec))
    wanted = set(spec.split())
    matches = [row for row in rows if all(wanted <= set(run.overrides) for run in row.runs)]
    if len(matches) == 1:
        return matches[0]
    listed = "; ".join(f'"{row.name}"' for row in (matches or rows))
    what = "several rows" if matches else "no row"
    raise DataError(f'--compare "{spec}" names {what}: give one of {listed}, or a run folder.')


def write_comparisons_csv(path: Path, comparisons: Sequence[Comparison]) -> None:
    """comparisons.csv: one line per compared pair, split and metric (mIoU, then each class's IoU)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COMPARISON_COLUMNS)
        for comparison in comparisons:
            writer.writerows(comparison.csv_rows())
