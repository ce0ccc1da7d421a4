"""eval.py: the contract metrics of a checkpoint, agreeing with training's and with predict's PNGs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import open_dict

from semseg.errors import ConfigError, DataError
from semseg.inference.evaluate import evaluate
from semseg.inference.predict import predict
from tests.conftest import assert_per_image_scores_match, compose_named


def eval_cfg(trained_run: Path, out: Path, *overrides: str):
    cfg = compose_named("eval", [f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}", "trainer=cpu", *overrides])
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return cfg


def test_eval_reproduces_the_training_test_metrics_from_the_checkpoint_alone(trained_run, tmp_path):
    metrics = evaluate(eval_cfg(trained_run, tmp_path))  # no data overrides: the checkpoint's data
    trained = json.loads((trained_run / "metrics.json").read_text())
    for key in ("test/miou", "test/dice", "test/pixel_acc", "test/iou/background"):
        assert metrics[key] == pytest.approx(trained[key], abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["test/miou"] == pytest.approx(metrics["test/miou"])
    assert_per_image_scores_match(tmp_path, ("test",))  # report.py compares runs from these
    assert_per_image_scores_match(trained_run)  # what training wrote, for val and test
    with open(tmp_path / "per_class.csv") as f:
        rows = {row["class"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["background", "disk", "square", "triangle", "speck"]
    for name, row in rows.items():
        if f"test/iou/{name}" in metrics:
            assert float(row["iou"]) == pytest.approx(metrics[f"test/iou/{name}"], abs=1e-6)
    assert "| background |" in (tmp_path / "per_class.md").read_text()
    confusion = np.loadtxt(tmp_path / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 6))
    assert confusion.sum() == 4 * 32 * 32  # every test pixel, none ignored


def iou_from_pngs(predicted: Path, truth: Path, num_classes: int) -> tuple[float, float]:
    """mIoU and pixel accuracy by hand (numpy) from index-mask PNG folders: an independent check."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for mask_path in sorted(truth.iterdir()):
        target = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED).astype(np.int64)
        pred = cv2.imread(str(predicted / mask_path.name), cv2.IMREAD_UNCHANGED).astype(np.int64)
        assert pred.shape == target.shape
        confusion += np.bincount(target.ravel() * num_classes + pred.ravel(), minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0])), float(tp.sum() / confusion.sum())


@pytest.mark.parametrize("inference", [["inference=whole"], ["inference=tta", "inference.scales=[0.75,1.0]"]])
def test_eval_numbers_match_metrics_recomputed_from_predicted_pngs(trained_run, tiny_root, tmp_path, inference):
    metrics = evaluate(eval_cfg(trained_run, tmp_path / "eval", *inference))
    cfg = compose_named(
        "predict",
        [
            f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}",
            f"input={tiny_root / 'images' / 'test'}",
            f"output={tmp_path / 'pred'}",
            *inference,
            "device=cpu",
        ],
    )
    predict(cfg)
    miou, pixel_acc = iou_from_pngs(tmp_path / "pred" / "masks", tiny_root / "masks" / "test", 5)
    assert metrics["test/miou"] == pytest.approx(miou, abs=1e-6)
    assert metrics["test/pixel_acc"] == pytest.approx(pixel_acc, abs=1e-6)


def test_eval_scores_any_split_under_its_own_name(trained_run, tmp_path):
    metrics = evaluate(eval_cfg(trained_run, tmp_path, "split=train"))
    assert "train/miou" in metrics and not any(k.startswith("test/") for k in metrics)


def test_data_overrides_change_the_checkpoints_data_config(trained_run, tiny_root, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(tiny_root, other)
    for mask in (other / "masks" / "test").iterdir():  # every test pixel now says "disk"
        cv2.imwrite(str(mask), np.ones_like(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)))
    overrides = [f"data.root={other}"]
    metrics = evaluate(eval_cfg(trained_run, tmp_path / "eval", *overrides), overrides)
    assert set(k for k in metrics if k.startswith("test/iou/")) == {
        f"test/iou/{c}" for c in ("background", "disk", "square", "triangle", "speck")
    }
    assert metrics["test/iou/background"] == 0.0  # no background pixel left in the target


def test_data_with_other_classes_is_refused_with_the_fix(trained_run, tmp_path):
    overrides = ["data.num_classes=3", "data.class_names=null"]
    with pytest.raises(ConfigError, match=r"trained on 5 classes \(background, disk"):
        evaluate(eval_cfg(trained_run, tmp_path, *overrides), overrides)


def test_a_split_without_masks_is_refused(trained_run, tiny_root, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(tiny_root, other)
    shutil.rmtree(other / "masks" / "test")
    overrides = [f"data.root={other}"]
    with pytest.raises(DataError, match=r"masks/test: no such folder"):
        evaluate(eval_cfg(trained_run, tmp_path / "eval", *overrides), overrides)


def test_the_scripts_run_from_the_command_line(trained_run, tiny_root, tmp_path):
    """eval.py reads the data overrides from Hydra's command line; predict.py refuses to overwrite
    with one clear line and exit 2, no traceback."""
    root = Path(__file__).resolve().parents[1]
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    run = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / "eval.py"), f"ckpt_path={checkpoint}", "trainer=cpu",
         "split=val", "data.num_workers=0", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| speck |" in result.stdout
    assert json.loads((run / "metrics.json").read_text())["val/miou"] == pytest.approx(
        json.loads((trained_run / "metrics.json").read_text())["val/miou"], abs=1e-6
    )

    out = tmp_path / "pred"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "test_00000.png").write_bytes(b"keep me")
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / "predict.py"), f"ckpt_path={checkpoint}",
         f"input={tiny_root / 'images' / 'test'}", f"output={out}", f"hydra.run.dir={tmp_path / 'log'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "1 output file(s) exist already" in result.stderr and "overwrite=true" in result.stderr
    assert (out / "masks" / "test_00000.png").read_bytes() == b"keep me"
