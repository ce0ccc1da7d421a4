"""What a run tells its user: the epoch lines and closing summary (console and train.log), plain
lines without a terminal, the progress bar's scores, no upstream noise, and a quick --help."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.trainer.states import TrainerFn

from semseg.callbacks import LossProgressBar
from semseg.callbacks.progress import EPOCH_VAL_METRICS
from semseg.reporting.console import training_summary
from tests.conftest import console_output

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))
HEAVY = ("torch", "lightning", "segmentation_models_pytorch")
SCORES = " ".join(rf"{name} [\d.]+" for name in ("train/loss", *EPOCH_VAL_METRICS))


def test_train_log_has_a_line_per_epoch_and_the_closing_summary(trained_run: Path):
    text = (trained_run / "train.log").read_text()
    for epoch in (1, 2):
        assert re.search(rf"epoch {epoch}/2: {SCORES}  lr [\d.e+-]+  [\d.]+ s\n", text), text
    best = trained_run / "checkpoints" / "best.ckpt"
    assert re.search(r"training finished: 2 epochs in [\d.]+ s; best epoch [12] \(val/miou [\d.]+\)", text)
    assert re.search(r"\n  val +[\d.]+ +[\d.]+ +[\d.]+\n  test +[\d.]+ +[\d.]+ +[\d.]+\n", text)
    assert f"run folder:   {trained_run}  (metrics.json, run_info.json, train.log)" in text
    assert f"checkpoint:   {best}\n" in text
    run, ckpt = re.escape(str(trained_run)), f"ckpt_path={re.escape(str(best))}"
    assert re.search(rf"python \S*scripts/eval.py {ckpt}\n", text)
    assert re.search(rf"python \S*scripts/predict.py {ckpt} input=\S+/images/test output={run}/predictions\n", text)
    assert re.search(rf"python \S*scripts/export.py {ckpt} format=onnx\n", text)
    assert re.search(rf"python \S*scripts/report.py {run}\n", text)


def test_without_a_terminal_the_console_has_plain_lines_and_no_upstream_noise(trained_run: Path):
    console = console_output(trained_run)
    assert b"\r" not in console and b"\x1b[" not in console  # no tqdm redrawing, no cursor moves
    text = console.decode()
    assert len(re.findall(rf"epoch \d/2: {SCORES}", text)) == 2
    assert "training finished: 2 epochs" in text
    for noise in ("litlogger", "LeafSpec", "You have overridden `on_after_batch_transfer`", "to estimate number of"):
        assert noise not in text
    # The model summary counts the FLOPs (Lightning's own says 0), and says it once.
    assert re.search(r"\n\d+(\.\d)? [KMG]? *Total Flops\n", text) and text.count("Total Flops") == 1


def test_the_progress_bar_shows_the_last_validation_scores():
    metrics = {"train/loss": 0.9, "val/loss": 0.4, "val/miou": 0.6, "val/dice": 0.7}
    trainer = SimpleNamespace(
        sanity_checking=False, state=SimpleNamespace(fn=TrainerFn.FITTING), loggers=[], progress_bar_metrics={},
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
    )  # fmt: skip
    bar = LossProgressBar()
    for sanity_checking, expected in ((True, {}), (False, {"val/loss": 0.4, "val/miou": 0.6})):
        trainer.sanity_checking = sanity_checking  # the sanity check's scores are not shown
        bar.val_progress_bar = Tqdm(disable=True)
        bar.on_validation_end(trainer, None)
        assert bar.get_metrics(trainer, None) == pytest.approx({"train/loss": 0.9, **expected})


def test_without_a_terminal_the_bar_prints_plain_progress_lines(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal, whatever runs the tests
    bar = LossProgressBar(line_every_s=0)
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=2, max_epochs=30, num_training_batches=500,
                              callback_metrics={"train/loss": torch.tensor(0.4123)})  # fmt: skip
    bar.setup(trainer, None, "fit")
    assert bar.is_disabled
    line = bar.progress_line(trainer, 120, 41.2)
    assert line == "epoch 3/30, batch 120/500: train/loss 0.412, 41 s into the epoch"


def test_summary_of_a_run_without_validation_names_the_last_checkpoint(tmp_path: Path):
    run, data = tmp_path / "run", tmp_path / "data"
    (data / "masks" / "val").mkdir(parents=True)  # no test split: eval.py is told split=val
    metrics = {"validation": "off", "checkpoint": "last"}
    info = {"epochs": 3, "train_time_s": 75.0, "checkpoint": "checkpoints/last.ckpt"}
    text = training_summary(run, metrics, info, data, wandb_sync="wandb sync /somewhere")
    last = run / "checkpoints" / "last.ckpt"
    assert text.startswith("training finished: 3 epochs in 1 min 15 s; validation was off, so the last checkpoint")
    assert "(last.ckpt) is the result\n" in text
    assert f"eval.py ckpt_path={last} split=val\n" in text
    assert f"input={data}/images/val output={run}/predictions" in text
    assert "mIoU" not in text  # no scores: nothing was evaluated
    assert text.endswith("\n  wandb sync /somewhere   # uploads the offline W&B run")


def test_train_help_loads_neither_torch_nor_lightning():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "scripts" / "train.py"), "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and "Powered by Hydra" in result.stdout, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines}
    assert "hydra" in imported and not imported & set(HEAVY)


def test_no_script_loads_torch_or_lightning_before_reading_its_command_line():
    # Loaded, not run: what a script imports before main() parses the command line.
    code = "\n".join([
        "import runpy, sys",
        "for path in sys.argv[2:]: runpy.run_path(path)",
        "print(sorted(set(sys.argv[1].split(',')) & set(sys.modules)))",
    ])  # fmt: skip
    command = [sys.executable, "-c", code, ",".join(HEAVY), *map(str, SCRIPTS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
