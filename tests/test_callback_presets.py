"""The callback presets of conf/callbacks/, added from the command line: early stopping, a
learning-rate monitor, a rich progress bar, weight averaging (EMA), and callbacks=none."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, RichProgressBar

from semseg.callbacks import EMAWeights, LossProgressBar, ValidationPictures
from semseg.errors import ConfigError
from semseg.run_folder import RunFolder
from semseg.training.checkpoints import build_callbacks
from semseg.training.train import train
from tests.conftest import compose_cfg

PRESETS = ["early_stopping", "lr_monitor", "rich_progress", "ema"]


def _callback_types(*overrides: str, tmp_path: Path) -> list[type]:
    cfg = compose_cfg(list(overrides))
    return [type(c) for c in build_callbacks(cfg.callbacks, RunFolder(tmp_path))]


def test_each_preset_adds_to_the_default_callbacks_with_one_override(tmp_path: Path):
    default = _callback_types(tmp_path=tmp_path)
    added = {EarlyStopping: "early_stopping", LearningRateMonitor: "lr_monitor", EMAWeights: "ema"}
    for kind, preset in added.items():
        assert _callback_types(f"+callbacks={preset}", tmp_path=tmp_path) == [*default, kind]
    together = _callback_types(f"+callbacks=[{','.join(PRESETS)}]", tmp_path=tmp_path)
    assert RichProgressBar in together and LossProgressBar not in together  # one progress bar only
    assert {EarlyStopping, LearningRateMonitor, EMAWeights} <= set(together)


def test_callbacks_none_keeps_only_the_checkpoints_resuming_needs(tmp_path: Path):
    kept = build_callbacks(compose_cfg(["callbacks=none"]).callbacks, RunFolder(tmp_path))
    names = {Path(c.dirpath, c.filename).name for c in kept if hasattr(c, "filename")}
    assert names == {"best", "last"}
    assert not any(isinstance(c, LossProgressBar | ValidationPictures) for c in kept)
    assert [type(c).__name__ for c in kept][-1] == "CheckpointOnSigterm"


class ParameterProbe(L.Callback):
    """Records the sum of the network's first parameter during validation and test batches."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def _record(self, stage: str, pl_module: L.LightningModule) -> None:
        self.seen[stage] = float(next(pl_module.parameters()).detach().sum())

    def on_validation_batch_start(self, trainer, pl_module, *args) -> None:
        self._record("val", pl_module)

    def on_test_batch_start(self, trainer, pl_module, *args) -> None:
        self._record("test", pl_module)


def test_presets_train_together_ema_scores_the_average_and_early_stopping_stops(make_cfg, tmp_path: Path):
    cfg = make_cfg(
        f"+callbacks=[{','.join(PRESETS)}]",
        "trainer.max_epochs=4",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1.0",  # no epoch improves that much: stop after the second
        "callbacks.ema.decay=0.9",
        "+callbacks.probe._target_=tests.test_callback_presets.ParameterProbe",
    )
    probes = []
    original = ParameterProbe.__init__

    def keep(self):
        original(self)
        probes.append(self)

    ParameterProbe.__init__ = keep
    try:
        train(cfg)
    finally:
        ParameterProbe.__init__ = original
    run = RunFolder(cfg.output_dir)
    assert json.loads(run.run_info.read_text())["epochs"] == 2  # early stopping, not max_epochs

    best = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
    first = next(iter(best["state_dict"]))
    averaged, trained = best["state_dict"][first], best["current_model_state"][first]
    assert not torch.equal(averaged, trained)
    # Test scored the average (what best.ckpt's weights are, and what eval.py loads), not the trained weights.
    assert probes[-1].seen["test"] == pytest.approx(float(averaged.sum()), rel=1e-6)
    assert probes[-1].seen["test"] != pytest.approx(float(trained.sum()), rel=1e-6)

    with (Path(cfg.output_dir) / "csv" / "metrics.csv").open() as table:
        columns = next(csv.reader(table))
    assert any(column.startswith("lr-AdamW") for column in columns)  # the learning-rate monitor logged


def test_a_learning_rate_monitor_without_a_logger_is_refused_before_any_work(tmp_path: Path):
    cfg = compose_cfg(["+callbacks=lr_monitor", "logger=none"])
    with pytest.raises(ConfigError, match=r"callbacks.lr_monitor \(LearningRateMonitor\) logs to a logger"):
        build_callbacks(cfg.callbacks, RunFolder(tmp_path), with_logger=False)
