"""data.mode=binary end to end on tiny generated data: one foreground logit, its losses, metrics,
eval, predict and export from the checkpoint alone, and the bad configs refused."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from semseg.data.inspection import inspect_data
from semseg.data.palette import colorize_mode
from semseg.errors import ConfigError
from semseg.inference.checkpoint import load_module
from semseg.inference.evaluate import evaluate
from semseg.inference.export import export
from semseg.inference.predict import predict
from semseg.reporting import figures
from semseg.reporting.figures import prediction_grid_figure
from semseg.reporting.leaderboard import find_runs
from semseg.task.losses import build_loss
from semseg.training.train import train
from tests.conftest import assert_per_image_scores_match, compose_named, folder_cfg, new_samples

BINARY = ["data.mode=binary", "data.num_classes=1", "data.class_names=[blob]", "data.label_map={0: 0, 255: 1}"]


def write_blobs(root: Path, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """Bright squares on noisy dark images; masks stored 0/255, with a band of 128 = ignored."""
    rng = np.random.default_rng(seed)
    for split, index in new_samples(root, counts):
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        top, left = rng.integers(2, size // 2, 2)
        side = int(rng.integers(8, size // 2))
        image[top : top + side, left : left + side] = rng.integers(180, 255, (side, side, 3), dtype=np.uint8)
        mask[top : top + side, left : left + side] = 255
        mask[0, :] = 128  # an ignored row
        cv2.imwrite(str(root / "images" / split / f"{split}{index}.png"), image)
        cv2.imwrite(str(root / "masks" / split / f"{split}{index}.png"), mask)
    return root


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_blobs(tmp_path_factory.mktemp("binary") / "blobs", {"train": 16, "val": 4, "test": 4})


@pytest.fixture(scope="module")
def binary_run(blobs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A binary U-Net trained on the blobs; its run folder."""
    out = tmp_path_factory.mktemp("binary_run")
    cfg = _cfg(blobs, out, "loss=ce_dice", "trainer.max_epochs=20", "optimizer.lr=0.01", "data.batch_size=8")
    metrics = train(cfg)
    assert metrics["val/miou"] > 0.9, metrics  # an easy foreground is found
    return out


def _cfg(root: Path, out: Path, *overrides: str):
    return folder_cfg(root, out, *BINARY, "data.ignore_index=128", *overrides)


def test_binary_training_finds_the_foreground_and_logs_its_scores(binary_run: Path):
    metrics = json.loads((binary_run / "metrics.json").read_text())
    for name in ("miou", "dice", "pixel_acc", "boundary_iou", "iou/blob", "dice/blob", "precision/blob", "recall/blob"):
        assert f"val/{name}" in metrics and f"test/{name}" in metrics, name
    assert metrics["val/miou"] == pytest.approx(metrics["val/iou/blob"])
    assert metrics["test/iou/blob"] > 0.9
    assert_per_image_scores_match(binary_run)
    module = load_module(binary_run / "checkpoints" / "best.ckpt")
    assert module.mode == "binary" and module.hparams.threshold == 0.5
    assert module.net(torch.zeros(1, 3, 32, 32)).shape[1] == 1  # one logit
    assert tuple(module.palette[0]) != (0, 0, 0)  # the foreground is not drawn black


def test_eval_and_predict_from_the_binary_checkpoint_alone(binary_run: Path, blobs: Path, tmp_path: Path):
    ckpt = binary_run / "checkpoints" / "best.ckpt"
    cfg = compose_named("eval", [f"ckpt_path={ckpt}", "trainer=cpu"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "eval")
    metrics = evaluate(cfg)
    trained = json.loads((binary_run / "metrics.json").read_text())
    assert metrics["test/miou"] == pytest.approx(trained["test/miou"], abs=1e-6)
    rows = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("blob,")

    out = tmp_path / "pred"
    cfg = compose_named(
        "predict", [f"ckpt_path={ckpt}", f"input={blobs / 'images' / 'test'}", f"output={out}", "device=cpu"]
    )
    assert predict(cfg)["predicted"] == 4
    mask = cv2.imread(str(out / "masks" / "test0.png"), cv2.IMREAD_UNCHANGED)
    truth = cv2.imread(str(blobs / "masks" / "test" / "test0.png"), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}  # 0/255, as the stored masks
    agree = (mask[1:] == 255) == (truth[1:] == 255)
    assert agree.mean() > 0.9
    assert (out / "overlay" / "test0.png").is_file() and (out / "colour" / "test0.png").is_file()


def test_binary_losses_have_their_sigmoid_forms_and_ignore_pixels():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 8, 8))
    target[:, 0] = 128
    for name in ("ce", "dice", "focal", "lovasz", "tversky"):
        loss = build_loss({"terms": {name: 1.0}}, 1, 128, mode="binary")
        total, _ = loss(logits, target)
        assert torch.isfinite(total), name
        total.backward()
        assert logits.grad[:, :, 0].abs().sum() == 0 or name in ("lovasz",), name  # the ignored row adds nothing
        logits.grad = None
    bce = build_loss({"terms": {"ce": 1.0}}, 1, 128, mode="binary")
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0, 1:], target[:, 1:].float())
    assert bce(logits, target)[0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_binary_configs_are_refused_with_the_fix(blobs: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"data.mode=ternary: choose one of multiclass, binary, multilabel"):
        train(_cfg(blobs, tmp_path, "loss=ce_dice", "data.mode=ternary"))
    with pytest.raises(ConfigError, match=r"data.mode=binary takes data.num_classes=1"):
        train(_cfg(blobs, tmp_path, "loss=ce_dice", "data.num_classes=2", "data.class_names=[a,b]"))
    with pytest.raises(ConfigError, match=r"loss.class_weights is not used with data.mode=binary"):
        train(_cfg(blobs, tmp_path))  # data=folder's default loss: wce
    with pytest.raises(ConfigError, match=r"loss.terms.boundary_ce has no binary form"):
        train(_cfg(blobs, tmp_path, "loss=boundary_ce"))
    with pytest.raises(ConfigError, match=r"data.threshold=1.5"):
        train(_cfg(blobs, tmp_path, "loss=ce_dice", "data.threshold=1.5"))


def test_the_binary_export_records_how_to_read_its_logit(binary_run: Path, tmp_path: Path):
    # Every format stores the same record (tests/test_export.py reads it from ONNX and torch.export);
    # the smp folder is the quickest to write and check (an ONNX export takes ~20 s here).
    ckpt = binary_run / "checkpoints" / "best.ckpt"
    result = export(compose_named("export", [f"ckpt_path={ckpt}", "format=smp", f"output={tmp_path / 'smp'}"]))
    assert result["max_abs_diff"] < 1e-3
    info = json.loads((tmp_path / "smp" / "semseg.json").read_text())
    assert info["mode"] == "binary" and info["threshold"] == 0.5 and info["class_names"] == ["blob"]


def test_binary_pictures_paint_the_foreground_in_its_colour():
    palette = np.array([[200, 30, 30]], np.uint8)
    rgb = colorize_mode(np.array([[0, 1], [1, 128]]), palette, "binary", ignore_index=128)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [200, 30, 30] and rgb[1, 1].tolist() == [255] * 3


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_every_loss_config_has_its_sigmoid_form_or_is_refused_in_one_line(mode: str):
    from omegaconf import OmegaConf

    from tests.conftest import CONF_DIR

    classes = 1 if mode == "binary" else 3
    logits = torch.randn(2, classes, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8) if mode == "binary" else (2, classes, 8, 8))
    built = set()
    for path in sorted((CONF_DIR / "loss").glob("*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        weights = [1.0] * classes if cfg.get("class_weights") is not None else None
        try:
            total, _ = build_loss(cfg, classes, 255, weights, mode=mode)(logits, target)
        except ConfigError as error:
            assert "\n" not in str(error) and ("loss.class_weights" in str(error) or "no " + mode in str(error))
            continue
        assert torch.isfinite(total), path.stem
        built.add(path.stem)
    assert built == {"ce", "ce_dice", "dice", "focal", "focal_tversky", "lovasz", "tversky"}


def test_multilabel_losses_ignore_pixels_too():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 3, 8, 8))
    target[:, :, 0] = 128
    for name in ("ce", "dice", "focal", "tversky"):
        total, _ = build_loss({"terms": {name: 1.0}}, 3, 128, mode="multilabel")(logits, target)
        total.backward()
        assert torch.isfinite(total) and logits.grad[:, :, 0].abs().sum() == 0, name
        logits.grad = None


def test_the_reports_prediction_grid_draws_the_binary_foreground(binary_run: Path, blobs: Path, tmp_path: Path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(_cfg(blobs, run, "loss=ce_dice"), run / ".hydra" / "config.yaml")
    (run / "metrics.json").write_text((binary_run / "metrics.json").read_text())
    (run / "checkpoints").symlink_to(binary_run / "checkpoints")
    fig, notes = prediction_grid_figure(find_runs(run), num_images=2)
    assert fig is not None and notes == []
    _, columns, _ = figures._predict(find_runs(run), 2, 0)
    predictions = np.stack(columns[0].predictions)
    # A single logit's argmax would be 0 everywhere: the foreground is its sigmoid above the threshold.
    assert set(np.unique(predictions)) == {0, 1}


def test_the_data_check_suggests_no_class_weights_to_a_sigmoid_task(blobs: Path):
    data = {"root": str(blobs), "label_map": {0: 0, 255: 1}, "ignore_index": 128}
    binary = inspect_data(data | {"num_classes": 1, "class_names": ["blob"], "mode": "binary"})
    assert binary.ok and binary.suggested_weights() == {}  # binary losses take none
    assert "suggested loss.class_weights" not in binary.summary()
    multiclass = inspect_data(data | {"num_classes": 2})
    assert "median_frequency" in multiclass.suggested_weights()
    assert "suggested loss.class_weights" in multiclass.summary()
