"""Experiment presets run as the README says: `-m experiment=compare_losses` is one job per loss."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import cv2
import torch
import yaml
from hydra import compose, initialize_config_dir

from semseg.reporting.report import write_report
from tests import wandb_records
from tests.conftest import CONF_DIR
from tests.sweeps import run_sweep


def test_compare_losses_sweeps_the_four_losses():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=compare_losses"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.loss == "ce,wce,dice,ce_dice" and cfg.data.root == "data/synthetic"


def test_a_seeded_sweep_is_grouped_in_the_loggers_reported_and_compared(tiny_root: Path, tmp_path: Path):
    """One sweep (two losses x seeds=2, as experiment=compare_losses runs them) checked end to end:
    its jobs, W&B groups and MLflow parent run, and report.py's leaderboard and comparisons."""
    from mlflow.tracking import MlflowClient

    sweep, store = tmp_path / "sweep", tmp_path / "mlruns"
    result = run_sweep(
        sweep,
        tiny_root,
        ["experiment=compare_losses", "loss=ce,wce", "seeds=2"],
        "logger=wandb",
        "+logger@logger.mlflow=mlflow",
        f"logger.mlflow.save_dir={store}",
        "trainer.limit_train_batches=1",
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert len(jobs) == 4  # two losses x seeds=2, without seed=0,1 on the command line
    runs = {}
    for job in jobs:
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        metrics = json.loads((job / "metrics.json").read_text())
        assert 0.0 <= metrics["val/miou"] <= 1.0 and "test/pixel_acc" in metrics
        (folder,) = (job / "wandb").glob("offline-run-*")
        run = next(r.run for r in wandb_records.records(next(folder.glob("*.wandb"))) if r.HasField("run"))
        loss = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]["loss"]
        runs[(loss, config["seed"])] = run
        assert run.display_name == f"unet-{loss}-s{config['seed']}" and f"loss:{loss}" in run.tags
        assert run.job_type == "train"
    assert list(runs) == [("ce", 0), ("wce", 0), ("ce", 1), ("wce", 1)]  # every loss's first seed first
    wce = json.loads((jobs[1] / "data_report.json").read_text())
    saved = torch.load(jobs[1] / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["class_weights"] == wce["suggested_class_weights"]["median_frequency"]
    # A group per configuration, its seeds together: W&B draws their mean and spread.
    assert runs[("ce", 0)].run_group == runs[("ce", 1)].run_group != runs[("wce", 0)].run_group
    assert "loss=ce" in runs[("ce", 0)].run_group and "seed" not in runs[("ce", 0)].run_group
    assert len({run.run_id for run in runs.values()}) == 4

    # MLflow: the four runs under one parent run of the sweep, ended with it; the same groups.
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("semseg")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if r.info.run_id != parent.info.run_id]
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    groups = {r.info.run_name: r.data.tags["group"] for r in children}
    assert groups["unet-ce-s0"] == groups["unet-ce-s1"] == runs[("ce", 0)].run_group != groups["unet-wce-s0"]

    # The leaderboard with its pictures and a comparison, from the finished runs alone (in process:
    # tests/test_report.py runs the script).
    printed = write_report(sweep, images=3, compare_specs=[("loss=ce", "loss=wce")], resamples=500)
    assert "4 runs in 2 rows" in printed and "left out" not in printed
    grid = cv2.imread(str(sweep / "predictions.png"))
    assert grid.shape[1] == round(2.2 * (2 + 4) * 100)  # image, ground truth and 4 runs side by side
    assert (
        cv2.imread(str(sweep / "leaderboard.png")) is not None
        and cv2.imread(str(sweep / "comparisons.png")) is not None
    )

    # Intervals and paired comparisons from the per-image scores alone: no checkpoint needed.
    for checkpoints in sweep.glob("*/checkpoints"):
        shutil.rmtree(checkpoints)
    (sweep / "comparisons.csv").unlink()
    write_report(sweep, pictures=False, compare_specs=[("loss=ce", "loss=wce")], resamples=500)
    markdown = (sweep / "leaderboard.md").read_text()
    assert "## loss=ce against loss=wce (val)" in markdown and "## loss=ce against loss=wce (test)" in markdown
    assert "| 0,1 | 4 / 4 |" in markdown and "images' chance only" not in markdown  # two seeds, 4 images a split
    with open(sweep / "comparisons.csv") as f:
        metrics = {(line["split"], line["run"], line["against"], line["metric"]) for line in csv.DictReader(f)}
    assert ("val", "loss=ce", "loss=wce", "miou") in metrics and ("test", "loss=ce", "loss=wce", "iou/speck") in metrics


def test_a_failing_job_does_not_stop_the_multirun_and_is_reported_at_the_end(tiny_root: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    # data.num_classes=2 does not fit the 5-class masks: job 0 fails at its data check.
    result = run_sweep(
        sweep,
        tiny_root,
        ["data.num_classes=2,5", "data.class_names=null"],
        "trainer.limit_train_batches=1",
        "run_test=false",
    )
    assert result.returncode == 1
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert "data.num_classes=2" in failed["overrides"] and "not classes 0..1" in failed["error"]
    assert (sweep / "1" / "metrics.json").is_file() and not (sweep / "1" / "failed.json").exists()
    assert f"1 of 2 jobs failed:\n  {sweep / '0'} (data.num_classes=2" in result.stderr


def test_ddp_jobs_in_a_multirun_train_their_own_job_once(tiny_root: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = run_sweep(
        sweep,
        tiny_root,
        ["loss=ce,dice"],
        "trainer=ddp_cpu",
        "trainer.limit_train_batches=2",
        "data.batch_size=2",
        "run_test=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("Launching 2 jobs") == 1  # no rank re-ran the sweep
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no stray run folder
    for job in ("0", "1"):
        folder = sweep / job
        assert json.loads((folder / "metrics.json").read_text())["val/miou"] >= 0
        rank0 = re.search(r"rank 0: config digest (\w+), output (\S+)", (folder / "train.log").read_text())
        rank1 = re.search(
            r"rank 1: config digest (\w+), output (\S+)", (folder / "train_ddp_process_1.log").read_text()
        )
        assert rank0 and rank1 and rank0.groups() == rank1.groups() == (rank0[1], str(folder))


def test_gpu_pool_runs_jobs_in_parallel_each_on_its_own_devices(tiny_root: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    # The jobs train on the CPU; the launcher still hands each its CUDA_VISIBLE_DEVICES.
    result = run_sweep(
        sweep,
        tiny_root,
        ["loss=ce,dice,focal"],  # three jobs on two slots: the third waits for a free one
        "trainer.limit_train_batches=1",
        "run_test=false",
        "hydra/launcher=gpu_pool",
        "hydra.launcher.gpus=[0,1,2,3]",
        "hydra.launcher.gpus_per_job=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    launches = [json.loads((sweep / str(n) / "launch.json").read_text()) for n in range(3)]
    assert all(json.loads((sweep / str(n) / "metrics.json").read_text())["val/miou"] >= 0 for n in range(3))
    assert {launch["devices"] for launch in launches} == {"0,1", "2,3"}
    overlapping = [
        (a, b) for i, a in enumerate(launches) for b in launches[i + 1 :]
        if a["started"] < b["ended"] and b["started"] < a["ended"]
    ]  # fmt: skip
    assert overlapping, "the jobs ran one after the other"
    assert all(a["devices"] != b["devices"] for a, b in overlapping)
    for launch in launches:  # never more than the 2 slots at once
        running = sum(other["started"] <= launch["started"] < other["ended"] for other in launches)
        assert running <= 2


def test_submitit_runs_the_sweep_through_its_local_executor(tiny_root: Path, tmp_path: Path):
    # hydra/launcher=slurm is the same launcher with the SLURM executor; the local one runs here.
    sweep = tmp_path / "sweep"
    result = run_sweep(
        sweep,
        tiny_root,
        ["loss=ce,dice"],
        "trainer.limit_train_batches=1",
        "run_test=false",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, loss in (("0", "ce"), ("1", "dice")):
        assert f"loss={loss}" in yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        assert json.loads((sweep / job / "metrics.json").read_text())["val/miou"] >= 0
    assert list((sweep / ".submitit").iterdir())  # submitit's own job folders: it ran them
