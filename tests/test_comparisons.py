"""report.py's intervals and paired comparisons, from per-image scores alone: a side built to be
better is found better, the same model on both sides is not distinguishable, one seed is said to be
images only, and the numbers agree with the runs' metrics.json."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from semseg.errors import DataError
from semseg.reporting.comparisons import compare, named_row, split_samples
from semseg.reporting.intervals import ABSENT, BETTER, UNDECIDED, WORSE, Resampler, row_samples
from semseg.reporting.leaderboard import find_runs, leaderboard
from semseg.reporting.report import write_report
from semseg.task.per_image import PerImageScores
from tests.figures import assert_readable
from tests.per_image_runs import CLASSES, records, sweep


def comparison(folder: Path, a: str, b: str):
    rows = leaderboard(find_runs(folder))
    samples = split_samples(rows, "val", resamples=1000)
    return compare(samples, named_row(rows, a).name, named_row(rows, b).name), samples


def test_a_side_built_to_be_better_is_better_in_miou_and_in_each_class(tmp_path: Path):
    folder = sweep(tmp_path, {"good": [0.90, 0.91, 0.89], "poor": [0.80, 0.81, 0.79]})
    diff, _ = comparison(folder, "loss=good", "loss=poor")
    assert diff.miou.verdict == BETTER and diff.miou.low > 0 and diff.miou.above_zero > 0.99
    assert all(d.verdict == BETTER for d in diff.per_class.values())
    reverse, _ = comparison(folder, "loss=poor", "loss=good")
    assert reverse.miou.verdict == WORSE and reverse.miou.mean == pytest.approx(-diff.miou.mean)


def test_the_same_model_on_both_sides_is_not_distinguishable(tmp_path: Path):
    # The same runs twice: only the resampling differs between the sides.
    folder = sweep(tmp_path / "copies", {"a": [0.85, 0.87, 0.83]})
    for job in ("0", "1", "2"):
        copy = tmp_path / "copies" / f"copy{job}"
        copy.mkdir()
        for path in (folder / job).rglob("*"):
            if path.is_file():
                target = copy / path.relative_to(folder / job)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes().replace(b"loss=a", b"loss=b"))
    diff, _ = comparison(folder, "loss=a", "loss=b")
    assert diff.miou.mean == pytest.approx(0) and diff.miou.verdict == UNDECIDED
    assert diff.miou.low < 0 < diff.miou.high and 0.3 < diff.miou.above_zero < 0.7
    # The same recipe trained again (other seeds and noise): still not distinguishable.
    again = sweep(tmp_path / "again", {"a": [0.85, 0.87, 0.83], "b": [0.84, 0.86, 0.85]}, seed=1)
    diff, _ = comparison(again, "loss=a", "loss=b")
    assert diff.miou.verdict == UNDECIDED and all(d.verdict == UNDECIDED for d in diff.per_class.values())


def test_intervals_center_on_the_runs_metrics_and_widen_with_the_seeds_spread(tmp_path: Path):
    folder = sweep(tmp_path, {"steady": [0.85, 0.85, 0.85], "erratic": [0.75, 0.85, 0.95]})
    rows = {row.name: row for row in leaderboard(find_runs(folder))}
    samples = split_samples(list(rows.values()), "val", resamples=1000)
    for name, row in rows.items():
        interval = samples.samples[name].interval("miou")
        assert interval.mean == pytest.approx(row.mean_std("val/miou")[0])  # metrics.json's mean over seeds
        assert interval.low < interval.mean < interval.high
    width = {name: s.interval("miou").high - s.interval("miou").low for name, s in samples.samples.items()}
    assert width["loss=erratic"] > 3 * width["loss=steady"]  # the seeds' chance is in the interval


def test_resamples_are_paired_on_the_images_and_recompute_dataset_miou():
    rng = np.random.default_rng(0)
    names, confusion, boundary = records(0.8, rng)
    scores = PerImageScores(names, confusion, boundary, CLASSES, None, "multiclass")
    resampler = Resampler(names.tolist(), resamples=50)
    samples = row_samples([scores], resampler)
    # Resample 0's mIoU is that of the confusion matrix summed over its drawn images (with repeats).
    drawn = resampler.weights[0]
    expected, _ = scores.scores_of((confusion * drawn[:, None, None]).sum(0), (boundary * drawn[:, None, None]).sum(0))
    assert samples.resampled["miou"][0] == pytest.approx(float(expected["miou"]))
    # The same records in another order are paired by name, not by position.
    shuffled = scores.in_order(list(reversed(names.tolist())))
    assert np.array_equal(shuffled.in_order(names.tolist()).confusion, confusion)
    with pytest.raises(DataError, match="different images"):
        scores.in_order(names.tolist()[:-1])


def test_report_compares_named_rows_from_per_image_scores_alone(tmp_path: Path):
    folder = sweep(tmp_path / "runs", {"wce": [0.90, 0.91, 0.89], "ce": [0.80, 0.81, 0.79], "dice": [0.895]})
    # In process (tests/test_report.py runs the script with --compare).
    printed = write_report(folder, pictures=False, compare_specs=[("loss=ce", "loss=wce")], resamples=500)
    markdown = (folder / "leaderboard.md").read_text()
    assert printed.startswith(markdown)
    headline, rest = markdown.split("## Against the best (loss=wce)")
    assert "| loss=wce | unet | wce | 0,1,2 | 40 |" in headline and "iou/" not in headline  # per-class after
    assert "| loss=ce | loss=wce | val |" in rest and WORSE in rest
    assert "## loss=ce against loss=wce (val)" in rest and "| IoU pole |" in rest
    assert "One seed (loss=dice): the interval is the images' chance only" in markdown
    with open(folder / "comparisons.csv") as f:
        lines = list(csv.DictReader(f))
    ce = [line for line in lines if line["run"] == "loss=ce" and line["metric"] == "miou"]
    assert len(ce) == 1 and ce[0]["verdict"] == WORSE and float(ce[0]["high"]) < 0  # not listed twice
    assert {line["metric"] for line in lines} == {"miou", "iou/road", "iou/car", "iou/pole"}
    with open(folder / "leaderboard.csv") as f:
        table = {line["run"]: line for line in csv.DictReader(f)}
    assert float(table["loss=wce"]["val/miou low"]) < float(table["loss=wce"]["val/miou mean"])
    assert table["loss=wce"]["val images"] == "40"


def test_the_comparisons_picture_shows_each_row_and_the_pairs_classes(tmp_path: Path):
    from semseg.reporting.comparisons import against_best
    from semseg.reporting.difference_plot import TITLE, comparisons_figure

    folder = sweep(tmp_path, {"wce": [0.90, 0.91], "ce": [0.80, 0.81], "dice": [0.86, 0.88]})
    diff, samples = comparison(folder, "loss=ce", "loss=wce")
    fig = comparisons_figure(against_best(samples, "loss=wce"), diff)
    assert_readable(fig, TITLE)
    labels = [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes]
    assert labels == [["loss=dice (val)", "loss=ce (val)"], ["mIoU", "IoU road", "IoU car", "IoU pole"]]


def test_rows_without_per_image_scores_keep_their_spread_and_say_why(tmp_path: Path):
    folder = sweep(tmp_path, {"wce": [0.90, 0.91], "ce": [0.80, 0.81]})
    (folder / "2" / "per_image_scores.npz").unlink()  # a run from before the file
    rows = leaderboard(find_runs(folder))
    samples = split_samples(rows, "val", resamples=100)
    assert "loss=ce" not in samples.samples and "no per_image_scores.npz" in samples.missing["loss=ce"]
    with pytest.raises(DataError, match=r'--compare "loss=focal" names no row: give one of "loss=wce"; "loss=ce"'):
        named_row(rows, "loss=focal")


def test_a_class_neither_side_has_gets_no_verdict():
    rng = np.random.default_rng(0)
    names, confusion, boundary = records(0.8, rng)
    confusion[:, 2, :] = 0  # no pole in any target...
    confusion[:, :, 2] = 0  # ...nor in any prediction
    scores = PerImageScores(names, confusion, boundary, CLASSES, None, "multiclass")
    resampler = Resampler(names.tolist(), resamples=50)
    a, b = row_samples([scores], resampler), row_samples([scores], resampler)
    pole = a.difference(b, "class/iou")[2]
    assert np.isnan(pole.mean) and pole.verdict == ABSENT and str(pole) == "-"
    assert not np.isnan(a.interval("miou").mean)  # the mean is over the classes there
