"""report.py: runs found from their files, grouped across seeds, Markdown and CSV (mean ± std where
runs have no per-image scores: tests/test_comparisons.py has the intervals), and pictures that say
what they show."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from semseg.errors import DataError
from semseg.reporting import comparisons as comparisons_module
from semseg.reporting import report as report_module
from semseg.reporting import tables as tables_module
from semseg.reporting.figures import bar_chart_figure, prediction_grid_figure
from semseg.reporting.leaderboard import find_runs, leaderboard, metric_columns
from semseg.reporting.report import write_report
from semseg.reporting.tables import costs_table, headline_table, per_class_table
from semseg.run_folder import checkpoint_epoch
from tests.conftest import compose_cfg
from tests.figures import assert_readable, legend_labels
from tests.per_image_runs import sweep

ROOT = Path(__file__).resolve().parents[1]


def fake_run(folder: Path, loss: str, seed: int, miou: float, *overrides: str) -> None:
    (folder / ".hydra").mkdir(parents=True)
    overrides = [f"loss={loss}", f"seed={seed}", "logger=csv", *overrides]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    choices = {"model": "unet", "loss": loss, "hydra/launcher": "basic"}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    metrics = {"val/miou": miou, "val/dice": miou + 0.1, "val/iou/speck": miou / 2, "test/miou": None}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    info = {"params": 14_300_000, "gflops": 2.5, "train_images_per_s": 10.0 + seed, "train_time_s": 60 * seed}
    (folder / "run_info.json").write_text(json.dumps(info))


def test_runs_that_differ_in_seed_only_are_one_row_with_mean_and_std(tmp_path: Path):
    fake_run(tmp_path / "0", "ce", 0, 0.50)
    fake_run(tmp_path / "1", "ce", 1, 0.60)
    fake_run(tmp_path / "2", "wce", 0, 0.70)
    runs = find_runs(tmp_path)
    rows = leaderboard(runs)
    assert [row.name for row in rows] == ["loss=wce", "loss=ce"]  # best val/miou first
    mean, std = rows[1].mean_std("val/miou")
    assert mean == pytest.approx(0.55) and std == pytest.approx(statistics.stdev([0.5, 0.6]))
    assert rows[0].mean_std("val/miou") == (0.7, None)
    assert rows[0].mean_std("test/miou") == (None, None)  # null in metrics.json: no test split
    headline, per_class = metric_columns(runs)
    assert headline == ["val/miou", "val/dice"] and per_class == {"val": ["val/iou/speck"]}
    # No per-image scores in these runs: the spread of their metrics.json values, no images counted.
    assert "| loss=ce | unet | ce | 0,1 | - | 0.550 ± 0.071 | 0.650 ± 0.071 |" in headline_table(rows, headline, {})
    costs = "14.3 ± 0.0 | 2.5 ± 0.0 | 10.5 ± 0.7 | 0.5 ± 0.7"  # params (M), GFLOPs, train img/s, train (min)
    assert f"| loss=ce | {costs} |" in costs_table(rows)
    assert "| loss=ce | 0.275 |" in per_class_table(rows, per_class["val"], {})


def test_a_seed_run_by_a_sweep_of_its_own_joins_the_row_of_the_seeds_sweep(tmp_path: Path):
    fake_run(tmp_path / "sweep" / "0", "ce", 0, 0.50, "seeds=2")
    fake_run(tmp_path / "sweep" / "1", "wce", 0, 0.70, "seeds=2")
    fake_run(tmp_path / "rerun_of_seed_1" / "0", "ce", 1, 0.60)  # seed=1 loss=ce alone
    rows = leaderboard(find_runs(tmp_path))
    assert [(row.name, row.mean_std("val/miou")[0]) for row in rows] == [("loss=wce", 0.7), ("loss=ce", 0.55)]


def test_the_script_writes_markdown_and_csv_and_compares_named_rows(tmp_path: Path):
    folder = sweep(tmp_path / "runs", {"ce": [0.80, 0.82], "wce": [0.90, 0.91]})
    command = [sys.executable, str(ROOT / "scripts" / "report.py"), str(folder), "--compare", "loss=ce", "loss=wce",
               "--resamples", "200"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    markdown = (folder / "leaderboard.md").read_text()
    assert markdown in result.stdout and "## loss=ce against loss=wce (val)" in markdown
    with open(folder / "leaderboard.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["loss=wce", "loss=ce"] and table[1]["val images"] == "40"
    with open(folder / "comparisons.csv") as f:
        compared = {(line["run"], line["against"], line["metric"]) for line in csv.DictReader(f)}
    assert ("loss=ce", "loss=wce", "miou") in compared and ("loss=ce", "loss=wce", "iou/pole") in compared


def test_write_leaderboard_writes_its_tables_atomically_and_returns_what_to_print(tmp_path: Path, monkeypatch):
    fake_run(tmp_path / "runs" / "0", "ce", 0, 0.5)
    fake_run(tmp_path / "runs" / "1", "dice", 0, 0.4)
    staged = []
    atomic_path = report_module.atomic_path

    @contextmanager
    def recording_atomic_path(path: Path):
        with atomic_path(path) as tmp:
            staged.append(path.name)
            yield tmp

    for module in (report_module, tables_module, comparisons_module):
        monkeypatch.setattr(module, "atomic_path", recording_atomic_path)
    out = tmp_path / "out"
    printed = write_report(tmp_path / "runs", output=out, pictures=False)
    assert staged == ["leaderboard.md", "leaderboard.csv", "comparisons.csv"]  # a reader never sees half a table
    tables = ["comparisons.csv", "comparisons.png", "leaderboard.csv", "leaderboard.md", "leaderboard.png"]
    assert sorted(p.name for p in out.iterdir()) == tables
    assert printed.startswith((out / "leaderboard.md").read_text())
    assert printed.endswith(f"2 runs in 2 rows; wrote leaderboard.md, .csv, .png, comparisons.csv, .png to {out}")


def test_a_folder_without_runs_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DataError, match=r"no metrics\.json under"):
        find_runs(tmp_path)


def test_the_bar_chart_says_which_splits_and_checkpoints_it_scores(tmp_path: Path):
    fake_run(tmp_path / "0", "ce", 0, 0.5)
    fake_run(tmp_path / "1", "dice", 0, 0.4)
    (tmp_path / "1" / "checkpoints").mkdir()
    torch.save({"epoch": 7}, tmp_path / "1" / "checkpoints" / "best.ckpt")  # Lightning counts from 0
    fig = bar_chart_figure(leaderboard(find_runs(tmp_path)))
    assert_readable(fig, "val of each run's best.ckpt")
    assert legend_labels(fig) == ["val/miou"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["loss=ce", "loss=dice\n(epoch 8)"]


def test_the_prediction_grid_names_the_classes_and_each_runs_checkpoint(trained_run: Path, tiny_root: Path,
                                                                         tmp_path: Path):  # fmt: skip
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg(["data=synthetic", f"data.root={tiny_root}"]), run / ".hydra" / "config.yaml")
    (run / "metrics.json").write_text((trained_run / "metrics.json").read_text())
    (run / "checkpoints").symlink_to(trained_run / "checkpoints")
    fig, notes = prediction_grid_figure(find_runs(run), num_images=2)
    assert notes == []
    epoch = checkpoint_epoch(trained_run / "checkpoints" / "best.ckpt")
    assert_readable(fig, f"val, epoch {epoch}, best.ckpt", ["background", "disk", "square", "triangle", "speck"])
    assert fig.axes[2].get_title() == f"defaults\nbest.ckpt, epoch {epoch}"  # the run's column


def test_runs_come_in_job_order_and_seeds_in_order(tmp_path: Path):
    for job in range(12):  # a sweep of 12 jobs: 10 and 11 after 2, not before it
        fake_run(tmp_path / str(job), "ce", job, 0.5)
    runs = find_runs(tmp_path)
    assert [run.folder.name for run in runs] == [str(job) for job in range(12)]
    assert [run.seed for run in leaderboard(runs)[0].runs] == list(range(12))
