"""Confidence intervals and paired comparisons from the runs' per-image scores.

A leaderboard row is several runs of one configuration (its seeds) scored on the same images. How
sure is its mean mIoU, and is it really above another row's? Both sources of chance are resampled,
a bootstrap (Efron & Tibshirani 1993) over a design where every seed scores every image:

- images: each resample draws N of the split's N images with replacement (a weight per image,
  how often it was drawn), one draw shared by every seed and by both sides of a comparison: the
  pairing (the same images on both sides) that cancels how hard the images are;
- seeds: each resample draws S of a row's S runs with replacement, each side of a comparison on its
  own (seed i of one configuration has nothing in common with seed i of another).

In each resample every drawn run's dataset scores are recomputed from its confusion matrices
summed over the drawn images (mIoU of the summed matrix, as the metrics are defined; not a mean of
per-image mIoUs), and averaged over the drawn runs: the row's mean, as metrics.json's scores
averaged over seeds. The interval is the 2.5th to 97.5th percentile of those resampled means (or of
the resampled differences). With one seed the seed draw changes nothing: the interval is the
images' chance only, and says less than it seems (report.py says so).

The verdict of a difference: ``better`` or ``worse`` when its 95% interval leaves out zero, else
``not distinguishable at this sample size``; ``P(>0)`` is the share of resamples in which the
difference is above zero (ties count half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # NumPy only here: report.py's command line is read before torch loads
    from semseg.task.per_image import PerImageScores

RESAMPLES = 2000
CONFIDENCE = 0.95
BETTER, WORSE, UNDECIDED = "better", "worse", "not distinguishable at this sample size"
ABSENT = "no score: the class is in neither target nor prediction"


@dataclass(frozen=True)
class Interval:
    """A mean (over the seeds, of the full data) and its confidence interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        if np.isnan(self.mean):
            return "-"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class Difference(Interval):
    """A paired difference (A - B), its interval, the share of resamples above zero, the verdict."""

    above_zero: float

    @property
    def verdict(self) -> str:
        if np.isnan(self.mean):
            return ABSENT
        if self.low > 0:
            return BETTER
        if self.high < 0:
            return WORSE
        return UNDECIDED

    def __str__(self) -> str:
        if np.isnan(self.mean):
            return "-"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


class Resampler:
    """The shared random draws of one split's images: every row scored on that split is resampled
    with the same image weights, so that any two rows' resamples are paired."""

    def __init__(self, names: Sequence[str], resamples: int = RESAMPLES, seed: int = 0):
        self.names = list(names)
        self.rng = np.random.default_rng(seed)
        count = len(self.names)
        # (B, N): how often each image is drawn in each resample.
        self.weights = self.rng.multinomial(count, np.full(count, 1 / count), size=resamples).astype(np.float64)

    def seed_draws(self, seeds: int) -> np.ndarray:
        """(B, S) the runs drawn (with replacement) in each resample, from a row's ``seeds`` runs."""
        return self.rng.integers(0, seeds, size=(len(self.weights), seeds))


@dataclass
class RowSamples:
    """One row's scores on one split: per run (seed) on the full data, and per resample."""

    # metric (``miou``, ``class/iou``: per class) -> (S,) or (S, C): each run's scores on all the images
    full: dict[str, np.ndarray]
    resampled: dict[str, np.ndarray]  # metric -> (B,) or (B, C): the resamples' seed-averaged scores
    seeds: int
    images: int
    class_names: list[str]

    def interval(self, metric: str) -> Interval | list[Interval]:
        """``metric``'s mean over the seeds and its interval (a list, one per class, for per-class ones)."""
        return _intervals(_nanmean(self.full[metric], axis=0), self.resampled[metric])

    def difference(self, other: RowSamples, metric: str) -> Difference | list[Difference]:
        """This row's ``metric`` minus ``other``'s, paired (both resampled alike: ``Resampler``)."""
        mean = _nanmean(self.full[metric], axis=0) - _nanmean(other.full[metric], axis=0)
        resampled = self.resampled[metric] - other.resampled[metric]
        above = _nanmean(np.where(np.isnan(resampled), np.nan, (resampled > 0) + 0.5 * (resampled == 0)), axis=0)
        intervals = _intervals(mean, resampled)
        if isinstance(intervals, Interval):
            return Difference(intervals.mean, intervals.low, intervals.high, float(above))
        return [Difference(i.mean, i.low, i.high, float(a)) for i, a in zip(intervals, above, strict=True)]


def row_samples(records: Sequence[PerImageScores], resampler: Resampler) -> RowSamples:
    """The full and resampled scores of a row whose runs (seeds) scored ``records``, each in the
    resampler's image order (``PerImageScores.in_order``)."""
    first = records[0]
    # (S, N, ...) records -> (B, S, ...) sums over each resample's drawn images: one matrix product.
    confusion = np.stack([r.confusion.reshape(len(r), -1) for r in records]).astype(np.float64)
    boundary = np.stack([r.boundary.reshape(len(r), -1) for r in records]).astype(np.float64)
    resampled_confusion = np.einsum("bn,snk->bsk", resampler.weights, confusion)
    resampled_boundary = np.einsum("bn,snk->bsk", resampler.weights, boundary)
    means, per_class = first.scores_of(
        resampled_confusion.reshape(*resampled_confusion.shape[:2], *first.confusion.shape[1:]),
        resampled_boundary.reshape(*resampled_boundary.shape[:2], *first.boundary.shape[1:]),
    )
    full_means, full_per_class = first.scores_of(
        confusion.sum(1).reshape(len(records), *first.confusion.shape[1:]),
        boundary.sum(1).reshape(len(records), *first.boundary.shape[1:]),
    )
    draws = resampler.seed_draws(len(records))  # (B, S)
    resampled = {}
    for key, values in {**means, **_per_class_keys(per_class)}.items():  # (B, S) or (B, S, C)
        index = draws if values.ndim == 2 else draws[..., None].repeat(values.shape[-1], axis=-1)
        resampled[key] = _nanmean(np.take_along_axis(values, index, axis=1), axis=1)
    return RowSamples(
        {**full_means, **_per_class_keys(full_per_class)},
        resampled,
        len(records),
        len(first),
        first.scored_class_names(),
    )


def _per_class_keys(per_class: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch_scores``' per-class scores under ``class/<score>``: mean Dice and per-class Dice apart."""
    return {f"class/{key}": values for key, values in per_class.items()}


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` without its warning where every value is NaN (a class no drawn image holds)."""
    counts = np.sum(~np.isnan(values), axis=axis)
    sums = np.nansum(values, axis=axis)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _intervals(mean: np.ndarray, resampled: np.ndarray) -> Interval | list[Interval]:
    tail = (1 - CONFIDENCE) / 2 * 100
    finite = ~np.isnan(resampled)
    lows, highs = [], []
    for column, ok in zip(np.atleast_2d(resampled.T), np.atleast_2d(finite.T), strict=True):
        values = column[ok]
        lows.append(np.percentile(values, tail) if len(values) else np.nan)
        highs.append(np.percentile(values, 100 - tail) if len(values) else np.nan)
    if np.ndim(mean) == 0:
        return Interval(float(mean), float(lows[0]), float(highs[0]))
    return [Interval(float(m), float(lo), float(hi)) for m, lo, hi in zip(mean, lows, highs, strict=True)]
