"""train(cfg) end to end on tiny data: fit, validate, test, metrics.json, resume, loggers, CLI."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import model_checkpoint
from omegaconf import open_dict

from semseg.builders import build_module
from semseg.errors import ConfigError, TrainingDiverged
from semseg.models import count_gflops
from semseg.task.module import SegmentationModule
from semseg.training.train import train
from tests import wandb_records
from tests.conftest import CONF_DIR, TINY_DPT_OVERRIDES, folder_cfg

ROOT = Path(__file__).resolve().parents[1]


def test_fit_validate_test_write_contract_metrics(make_cfg):
    cfg = make_cfg("model.encoder_name=resnet18")  # the shipped model (other tests use a tiny encoder)
    metrics = train(cfg)
    out = Path(cfg.output_dir)
    for stage in ("val", "test"):
        for key in ("loss", "miou", "dice", "pixel_acc", "boundary_iou", "iou/background", "dice/background"):
            assert f"{stage}/{key}" in metrics, f"{stage}/{key}"
        assert 0.0 <= metrics[f"{stage}/miou"] <= 1.0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    info = json.loads((out / "run_info.json").read_text())
    net = build_module(cfg).net
    assert info["params"] == sum(p.numel() for p in net.parameters())
    assert info["gflops_input"] == [32, 32] and info["gflops"] == pytest.approx(count_gflops(net, 3, 32, 32))
    assert info["epochs"] == 1 and info["train_time_s"] > 0
    # training images over training-batch seconds: validation's time left out, so above the whole fit's rate
    train_images = len(list((Path(cfg.data.root) / "images" / "train").iterdir()))
    assert info["train_images_per_s"] > train_images / info["train_time_s"]
    with open(out / "csv" / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert {"train/loss", "train/loss_ce", "train/loss_dice", "train/lr", "val/miou"} <= set(columns)


# fcn32s and fcn16s are model=fcn with another variant (one architecture: tests/models/test_fcn.py).
# mask2former and eomt train on a loss of their own, not the loss config's: trained, and their loss
# taken on sides no stride divides, in tests/models/test_mask_classification.py.
MODELS = sorted(
    p.stem
    for p in (CONF_DIR / "model").glob("*.yaml")
    if p.stem not in ("smp", "fcn32s", "fcn16s", "mask2former", "eomt")
)
LOSSES = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))


def _model(model: str) -> list[str]:
    """``model=<model>``, DPT on its tiny stand-in (as the others on TINY_ENCODER)."""
    return [f"model={model}", *(TINY_DPT_OVERRIDES if model == "dpt" else [])]


# A loss reads only the network's logits (N, classes, H, W), which every model gives at the input's
# size, so each loss is trained once, on the models in turn (every model under a loss of its own;
# under the default loss on odd-sized images below), rather than the whole models x losses grid.
LOSS_ON_MODEL = [(loss, MODELS[index % len(MODELS)]) for index, loss in enumerate(LOSSES)]


@pytest.mark.parametrize(("loss", "model"), LOSS_ON_MODEL)
def test_every_loss_trains_and_every_model_with_a_loss_of_its_own(make_cfg, model: str, loss: str):
    metrics = train(make_cfg(*_model(model), f"loss={loss}", "run_test=false", "trainer.limit_train_batches=1"))
    assert np.isfinite(metrics["val/loss"])
    assert 0.0 <= metrics["val/miou"] <= 1.0 and 0.0 <= metrics["val/boundary_iou"] <= 1.0


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_and_evaluates_on_odd_sized_images(make_cfg, odd_size_root: Path, model: str):
    cfg = make_cfg(*_model(model), "data.batch_size=3", "run_test=false", root=odd_size_root)
    metrics = train(cfg)
    assert np.isfinite(metrics["val/loss"]) and 0.0 <= metrics["val/miou"] <= 1.0


def test_compile_and_channels_last_train_and_keep_plain_checkpoint_names(make_cfg):
    # aot_eager: the dynamo graph capture of torch.compile without inductor's slow C++ build.
    cfg = make_cfg("model.channels_last=true", "model.compile={backend: aot_eager}", "run_test=false")
    metrics = train(cfg)
    assert np.isfinite(metrics["val/loss"])
    state = torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert set(state) == set(build_module(make_cfg()).state_dict())  # no "_orig_mod." prefixes


def test_compile_happens_once_in_configure_model_and_only_when_asked(make_cfg):
    plain = build_module(make_cfg())
    plain.configure_model()
    assert plain.net._compiled_call_impl is None
    compiled = build_module(make_cfg("model.compile=true"))
    assert compiled.net._compiled_call_impl is None  # loading for inference does not compile
    compiled.configure_model()
    first = compiled.net._compiled_call_impl
    compiled.configure_model()  # Lightning calls it before fit, validate and test
    assert first is not None and compiled.net._compiled_call_impl is first


def test_checkpoint_carries_what_inference_needs(make_cfg, tiny_root: Path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]
    # Validation and test run tiled (16-pixel tiles of the 32-pixel images), as inference= asks.
    cfg = make_cfg("data.ignore_index=7", f"data.palette={palette}", "inference=tiled", "inference.tile_size=[16,16]")
    metrics = train(cfg)
    assert 0 <= metrics["test/miou"] <= 1
    ckpt = torch.load(Path(cfg.output_dir) / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["class_names"] == ["background", "disk", "square", "triangle", "speck"]
    assert hp["ignore_index"] == 7 and hp["in_channels"] == 3 and hp["model"]["arch"] == "unet"
    assert len(hp["normalization"]["mean"]) == 3
    assert hp["palette"] == palette and hp["inference"]["tile_size"] == [16, 16]
    assert hp["data"]["root"] == str(tiny_root.resolve()) and hp["data"]["image_size"] is None


def test_a_palette_that_does_not_fit_the_classes_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"data.palette=.*one \[R, G, B\] \(0-255\) per class \(5\)"):
        build_module(make_cfg("data.palette=[[0,0,0],[255,0,0]]"))


def test_resume_from_last_checkpoint_continues_the_run(make_cfg, tmp_path: Path):
    first = make_cfg()
    train(first)
    last = Path(first.output_dir) / "checkpoints" / "last.ckpt"
    steps_per_epoch = torch.load(last, map_location="cpu", weights_only=False)["global_step"]

    second = make_cfg(f"ckpt_path={last}", "trainer.max_epochs=2")
    second.output_dir = str(tmp_path / "resumed")
    train(second)
    resumed = torch.load(Path(second.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 1  # 0-based: the second epoch, not a fresh first one
    assert resumed["global_step"] == 2 * steps_per_epoch


def test_no_logger_still_writes_metrics(make_cfg):
    cfg = make_cfg("logger=none", "run_test=false")
    metrics = train(cfg)
    assert "val/miou" in metrics and not any(k.startswith("test/") for k in metrics)
    assert json.loads((Path(cfg.output_dir) / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize("off", ["trainer.limit_val_batches=0", "trainer.check_val_every_n_epoch=3"])
def test_training_without_validation_tests_the_final_weights(make_cfg, off: str):
    cfg = make_cfg(off, "trainer.max_epochs=2")
    model_checkpoint.warning_cache.clear()  # Lightning warns once a process: an earlier test's run must not hide it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(cfg)
    assert not [w for w in caught if "could not find the monitored key" in str(w.message)]  # off on purpose
    checkpoints = Path(cfg.output_dir) / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and not (checkpoints / "best.ckpt").exists()
    assert metrics["validation"] == "off" and metrics["checkpoint"] == "last"
    assert not any(k.startswith("val/") for k in metrics)
    assert 0.0 <= metrics["test/miou"] <= 1.0
    assert json.loads((Path(cfg.output_dir) / "metrics.json").read_text()) == metrics
    # The tested weights are the final ones, which last.ckpt holds.
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * 2  # 2 epochs of 8 images in batches of 4


def test_a_callback_watching_validation_is_refused_when_validation_is_off(make_cfg):
    cfg = make_cfg("trainer.limit_val_batches=0", "+callbacks=early_stopping")
    with pytest.raises(ConfigError, match=r"callbacks.early_stopping watches val/miou, and validation is off"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()  # refused before any output


def test_wandb_logs_offline_without_credentials(make_cfg, monkeypatch, tmp_path: Path, capsys, caplog, tiny_root: Path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    caplog.set_level(logging.INFO, logger="semseg")
    cfg = make_cfg("logger=wandb", "run_test=false", "trainer.max_epochs=2", pictures=True)
    metrics = train(cfg)
    runs = list((Path(cfg.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    # One upload hint, in the closing summary: wandb's own is off (settings.quiet), and so is its
    # warning about the `anonymous` setting Lightning hands it.
    assert f"  wandb sync {runs[0]}   # uploads the offline W&B run" in caplog.text
    printed = capsys.readouterr()
    assert "wandb sync" not in printed.out + printed.err and "anonymous" not in printed.err

    # Read the run back from wandb's own files: the .wandb record log and the media folder.
    log = next(runs[0].glob("*.wandb"))
    run = next(r.run for r in wandb_records.records(log) if r.WhichOneof("record_type") == "run")
    # Composed without a Hydra run, the loss is named by its terms (the CLI names it by its config).
    assert run.display_name == "unet-ce+dice-s0" and set(run.tags) == {"model:unet", "loss:ce+dice", "data:tiny"}
    rows = wandb_records.history(log)
    assert {"val/miou", "val/iou/speck", "val/dice/disk", "train/loss_ce"} <= {k for row in rows for k in row}
    pictures = [row for row in rows if "val/examples/all_masks" in row]
    assert len(pictures) == 3  # two epochs and the re-validation of the best checkpoint
    assert all(
        "val/worst/all_masks" in row and any(k.startswith("val/confusion_matrix") for k in row) for row in pictures
    )
    example = pictures[-1]
    first = example["val/examples/captions"][0].split()[0]  # the examples come sorted by name
    stored = cv2.imread(str(tiny_root / "masks" / "val" / f"{first}.png"), cv2.IMREAD_UNCHANGED)
    masks = example["val/examples/all_masks"][0]
    assert set(masks) == {"ground_truth", "prediction"}
    logged = cv2.imread(str(runs[0] / "files" / masks["ground_truth"]["path"]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(logged, stored)
    summary = {}
    for record in wandb_records.records(log):
        if record.WhichOneof("record_type") == "summary":
            summary |= {item.key: json.loads(item.value_json) for item in record.summary.update}
    assert summary["val/miou_best"] == pytest.approx(metrics["val/miou"])
    assert summary["params"] == json.loads((Path(cfg.output_dir) / "run_info.json").read_text())["params"]


def test_resuming_a_checkpoint_continues_its_wandb_run(make_cfg, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    first = make_cfg("logger=wandb", "run_test=false")
    train(first)
    last = Path(first.output_dir) / "checkpoints" / "last.ckpt"
    run_id = torch.load(last, map_location="cpu", weights_only=True)["wandb_run_id"]
    assert next((Path(first.output_dir) / "wandb").glob("offline-run-*")).name.endswith(run_id)
    resumed = make_cfg("logger=wandb", "run_test=false", "trainer.max_epochs=2", f"ckpt_path={last}")
    with open_dict(resumed):
        resumed.output_dir = str(tmp_path / "resumed")
    train(resumed)
    assert next((tmp_path / "resumed" / "wandb").glob("offline-run-*")).name.endswith(run_id)


def test_run_folder_pictures_without_wandb(make_cfg):
    cfg = make_cfg("run_test=false", pictures=True)
    train(cfg)
    pictures = Path(cfg.output_dir) / "pictures"
    names = {"val_examples", "val_worst", "confusion_matrix", "per_class_iou", "training_curves"}
    assert {p.stem for p in pictures.glob("*.png")} == names
    assert all(cv2.imread(str(pictures / f"{name}.png")) is not None for name in names)
    examples = cv2.imread(str(pictures / "val_examples.png"))
    assert examples.shape[0] == round(2.2 * 4 * 100)  # 4 rows: all 4 validation images (8 asked)


def run_train_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
         *overrides],
        capture_output=True, text=True, timeout=300, env=os.environ | {"HYDRA_FULL_ERROR": "0"},
    )  # fmt: skip


def test_cli_reports_a_bad_data_root_without_a_traceback(tmp_path: Path):
    missing = tmp_path / "nowhere"
    result = run_train_cli(tmp_path, "data=folder", f"data.root={missing}", "data.num_classes=2")
    assert result.returncode == 2, result.stderr
    assert f"{missing}/images/train: no such folder. Fix: data.root must hold images/" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_0_255_mask_stops_training_at_start_up_with_the_file_and_the_fix(tmp_path: Path, entry_point, capsys):
    root = tmp_path / "binary"
    for split in ("train", "val"):
        for folder in ("images", "masks"):
            (root / folder / split).mkdir(parents=True)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = 255
        cv2.imwrite(str(root / "images" / split / "a.png"), mask)
        cv2.imwrite(str(root / "masks" / split / "a.png"), mask)
    # As scripts/train.py runs it (test_cli_reports_a_bad_data_root_without_a_traceback runs the script).
    with pytest.raises(SystemExit) as exited:
        entry_point(train)(folder_cfg(root, tmp_path / "run", "data.num_classes=2", "data.num_workers=1"))
    message = capsys.readouterr().err
    assert exited.value.code == 2, message
    assert "error: the data set" in message and "nothing was trained" in message
    for split in ("train", "val"):
        assert f"masks/{split}/a.png: holds values [255] that are not classes 0..1." in message
    assert "Fix: 0/255 masks: set data.label_map={0: 0, 255: 1}" in message
    assert "Traceback" not in message
    assert not list(tmp_path.rglob("*.ckpt"))


def test_the_same_seed_gives_the_same_run_with_or_without_loader_workers(make_cfg):
    # Every sample's augmentation is seeded from (seed, epoch, index), whichever worker reads it.
    overrides = ("run_test=false", "trainer.max_epochs=2")
    first = train(make_cfg(*overrides, "data.num_workers=2"))
    assert train(make_cfg(*overrides, "data.num_workers=0")) == first
    assert train(make_cfg(*overrides, "data.num_workers=0", "seed=1"))["val/loss"] != first["val/loss"]


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(make_cfg, monkeypatch):
    first = make_cfg()
    train(first)
    last = Path(first.output_dir) / "checkpoints" / "last.ckpt"
    good, metrics = last.read_bytes(), (Path(first.output_dir) / "metrics.json").read_text()

    original = SegmentationModule._shared_step

    def diverging(self, batch, stage):  # the loss of every training batch becomes NaN
        loss, preds = original(self, batch, stage)
        return (loss * float("nan") if stage == "train" else loss), preds

    monkeypatch.setattr(SegmentationModule, "_shared_step", diverging)
    resumed = make_cfg("trainer.max_epochs=3", f"ckpt_path={last}")
    diverged = r"became NaN or infinite \(epoch 1, step 3\).*last good checkpoint is untouched"
    with pytest.raises(TrainingDiverged, match=diverged):
        train(resumed)
    assert last.read_bytes() == good
    assert (Path(resumed.output_dir) / "metrics.json").read_text() == metrics  # not rewritten
