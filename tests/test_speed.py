"""What keeps training fast, checked without timing anything: no host-device synchronisation per
training step, and a benchmark that runs end to end (its numbers are for scripts/benchmark.py to
measure side by side, never for a test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from semseg.bench.architectures import bench_model
from semseg.bench.process import loop_command, train_command
from semseg.bench.run import check_parts
from semseg.bench.scan import startup_seconds
from semseg.errors import ConfigError
from semseg.training.train import train
from tests.conftest import TINY_ENCODER, compose_named

ROOT = Path(__file__).resolve().parents[1]
# Tensor methods that wait for the device's queued work when the tensor lives on a GPU.
SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


class SyncsPerStep(L.Callback):
    """Counts syncing calls between the start of one batch and the next (the batch's optimizer
    step, callbacks and module hooks included), per (stage, batch index); not between epochs."""

    def __init__(self):
        self.batch: tuple[str, int] | None = None
        self.calls: Counter[tuple[str, int]] = Counter()
        self.callers: list[str] = []

    def record(self) -> None:
        if self.batch is not None:
            caller = traceback.extract_stack(limit=3)[0]  # [caller, counted, record]
            # Adam keeps its step counter on the host (unless capturable): its .item() never waits.
            if "torch/optim/" not in caller.filename:
                self.calls[self.batch] += 1
                self.callers.append(f"{self.batch} {caller.filename}:{caller.lineno}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batch = ("train", batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # The epochs' validation only: the final scoring of the best checkpoint (trainer.validate)
        # copies each image's confusion matrix to the host once, for report.py's intervals.
        self.batch = ("val", batch_idx) if trainer.state.fn == "fit" else None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.batch = None  # (callbacks' epoch-end hooks run before the module's metric computation)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.batch = None


COUNTER: SyncsPerStep | None = None


def the_counter() -> SyncsPerStep | None:
    """The test's counter, for Hydra to instantiate as a callback."""
    return COUNTER


def test_training_steps_do_not_synchronise_with_the_device(make_cfg, monkeypatch: pytest.MonkeyPatch):
    counter = SyncsPerStep()
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counter.record()
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # 8 images, batch 2: 4 steps; logging and the progress bar every 2 steps (every 10 by default).
    # Pictures on: ValidationPictures looks at every validation batch.
    cfg = make_cfg(
        "data.batch_size=2", "trainer.log_every_n_steps=2", "callbacks.progress_bar.refresh_rate=2", pictures=True
    )
    with open_dict(cfg):
        cfg.callbacks.syncs = {"_target_": "tests.test_speed.the_counter"}
    monkeypatch.setattr("tests.test_speed.COUNTER", counter)
    train(cfg)
    # Only where Lightning logs or refreshes the progress bar (after steps 2 and 4: batch indices 1
    # and 3; the module's non-finite check rides on the logging steps); no validation batch.
    assert set(counter.calls) <= {("train", 1), ("train", 3)}, (counter.calls, counter.callers)
    assert counter.calls["train", 1] > 0  # the counting works: logging does sync


def test_the_gpu_check_runs_every_part_on_photolike_data_and_writes_its_results(tmp_path: Path):
    """A CPU dry run of `make gpu-check` (bench=gpu) at tiny sizes, with every part, so it cannot rot."""
    run = tmp_path / "bench"
    photolike = "{num_train: 4, num_val: 2, height: 36, width: 48, seed: 0}"
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "trainer=cpu", "bench=gpu", TINY_ENCODER,
               f"data.root={tmp_path / 'photolike'}", f"bench.photolike={photolike}", "bench.image_size=[32,32]",
               "data.batch_size=2", "data.num_workers=0", "bench.warmup=1", "bench.steps=2", "bench.repeats=1",
               "bench.size=32", "bench.batch_size=2", "bench.models=[unet]", "bench.compile=[false]",
               "bench.parts=[pipeline,loader,models,optimizer,scan,ddp]", "bench.scan_pairs=300",
               f"hydra.run.dir={run}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "photolike" / "images" / "train").iterdir())) == 4  # generated
    results = json.loads((run / "benchmark.json").read_text())
    ratios = ("pipeline_over_preloaded", "pipeline_over_plain", "loader_over_consumption", "fused_over_unfused")
    for key in (*ratios, "pipeline_images_per_s", "preloaded_loop_images_per_s", "loader_images_per_s"):
        assert 0 < results[key] < float("inf"), key
    assert 0 < results["scan_s"] < 60 and 0 < results["check_warm_s"] < 60
    rows = results["models"]
    assert [(r["model"], r["precision"], r["channels_last"]) for r in rows] == [
        ("unet", "bf16-mixed", last) for last in (False, True)
    ]
    assert all(r["images_per_s"] > 0 and r["train_gflops_per_image"] > 0 for r in rows)
    assert results["ddp"]["ok"] and results["ddp"]["backend"] == "gloo", results["ddp"]
    assert math.isfinite(results["host_overhead_ms_per_step"])
    for line in ("(a) pipeline / loop over the set preloaded in memory:", "(f) one-device DDP training (gloo): ok"):
        assert line in result.stdout
    assert "| unet | bf16-mixed |" in result.stdout


def test_the_whole_process_commands_are_the_loops_recipe_as_train_py_overrides(tmp_path: Path):
    """Part (g)'s commands, composed as train.py composes them (the end-to-end run is slow)."""
    cfg = compose_named("benchmark", ["data.root=/data/roads", "data.num_classes=11", "data.ignore_index=11"])
    command = train_command(cfg, tmp_path / "run", ["reuse_host_memory=false"])
    overrides = [o for o in command[2:] if not o.startswith("hydra.")]
    trains = compose_named("train", overrides)
    assert (trains.model.arch, trains.model.encoder_name, trains.model.encoder_weights) == ("unet", "resnet18", None)
    assert dict(trains.loss.terms) == {"ce": 1.0} and trains.loss.class_weights is None  # the loop's plain CE
    assert trains.trainer.limit_val_batches == 0 and trains.trainer.max_epochs == cfg.bench.process.epochs
    assert list(trains.data.image_size) == [192, 256] and trains.data.ignore_index == 11
    assert trains.reuse_host_memory is False and not trains.logger  # logger=none
    loop = loop_command(cfg)
    assert loop[loop.index("--size") + 1 : loop.index("--size") + 3] == ["192", "256"]
    assert "--no-eval" in loop and loop[loop.index("--ignore-index") + 1] == "11"
    assert loop[loop.index("--lr") + 1] == str(trains.optimizer.lr)


@pytest.mark.slow
def test_the_whole_process_part_times_train_py_and_the_loop(tmp_path: Path):
    run = tmp_path / "bench"
    photolike = "{num_train: 4, num_val: 2, height: 36, width: 48, seed: 0}"
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), f"data.root={tmp_path / 'photolike'}",
               f"bench.photolike={photolike}", "bench.image_size=[32,32]", "data.batch_size=2", "bench.parts=[process]",
               "bench.process.repeats=1", "bench.process.epochs=1", f'bench.process.overrides=["{TINY_ENCODER}"]',
               f"hydra.run.dir={run}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "benchmark.json").read_text())
    whole = results["process_semseg_over_loop"]
    assert 0 < whole["whole_process"] < float("inf") and 0 < whole["training_rate"] < float("inf")
    assert [len(results["process_runs"][name]) for name in ("loop", "semseg")] == [1, 1]
    assert "(g) whole process (epochs: 1, validation off), train.py (semseg) / the loop:" in result.stdout


def test_model_measurements_stop_at_the_deadline():
    model = compose_named("train", ["model=unet", TINY_ENCODER]).model
    settings = {"num_classes": 2, "in_channels": 3, "size": 32, "batch_size": 2, "precisions": ["32-true"],
                "channels_last": [False, True], "compile_modes": [False], "warmup": 0, "steps": 1,
                "device": torch.device("cpu")}  # fmt: skip
    assert bench_model("unet", model, **settings, deadline=time.monotonic() - 1) == []
    assert len(bench_model("unet", model, **settings)) == 2


def test_the_start_up_measure_pairs_and_checks_every_file():
    # It raises if the scan missed a pair or the check a file; its caches are its own.
    before = os.environ.get("SEMSEG_CACHE_DIR")
    seconds = startup_seconds(500, repeats=1)
    assert os.environ.get("SEMSEG_CACHE_DIR") == before
    assert set(seconds) == {"scan_s", "check_cold_s", "check_warm_s"} and all(s > 0 for s in seconds.values())


def test_parts_that_cannot_run_stop_the_benchmark_before_any_part_runs():
    with pytest.raises(ConfigError, match=r"unknown part 'nope'"):
        check_parts(compose_named("benchmark", ["bench.parts=[scan,nope]"]))
    without_fused = compose_named("benchmark", ["~optimizer.fused", "bench.parts=[optimizer]"])
    with pytest.raises(ConfigError, match=r"no fused key\. Fix: leave 'optimizer' out of bench\.parts"):
        check_parts(without_fused)
    check_parts(compose_named("benchmark"))  # the shipped parts
