"""data.mode=multilabel end to end on tiny generated data: overlapping classes, masks as folders of
per-class PNGs or as multi-channel images, one sigmoid per class, eval and predict from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from semseg.data.batch import MASK_PAD_CODE
from semseg.data.datamodule import SegmentationDataModule
from semseg.data.inspection import inspect_data
from semseg.data.layout import DataLayout
from semseg.data.multilabel_masks import MultilabelMaskEncoder
from semseg.data.palette import blend_planes
from semseg.errors import DataError
from semseg.inference.checkpoint import load_module
from semseg.inference.evaluate import evaluate
from semseg.inference.predict import predict
from semseg.inference.tiling import InferenceSettings, logits_to_prediction, predict_logits
from semseg.task.metrics import PresenceConfusion, scores_from_presence
from semseg.training.train import train
from tests.conftest import assert_per_image_scores_match, compose_named, folder_cfg, new_samples

CLASSES = ["road", "shadow", "car"]
MULTILABEL = ["data.mode=multilabel", "data.num_classes=3", f"data.class_names=[{','.join(CLASSES)}]"]


def _planes(rng: np.random.Generator, size: int) -> np.ndarray:
    """(H, W, 3) 0/1: a road band, a shadow rectangle across it, a small car."""
    planes = np.zeros((size, size, 3), np.uint8)
    top = int(rng.integers(size // 3, size // 2))
    planes[top:, :, 0] = 1
    left, width = int(rng.integers(0, size // 2)), int(rng.integers(8, size // 2))
    planes[top - 6 : top + 10, left : left + width, 1] = 1  # overlaps the road
    row, col = rng.integers(2, size - 10, 2)
    planes[row : row + 8, col : col + 8, 2] = 1
    return planes


def write_overlaps(root: Path, counts: dict[str, int], folders: bool, size: int = 32, seed: int = 0) -> Path:
    """Images whose channels show the classes (red road, green shadow, blue car, plus noise); masks
    as folders of per-class PNGs (0/255; a class absent from an image has no file) or RGB images."""
    rng = np.random.default_rng(seed)
    for split, index in new_samples(root, counts):
        planes = _planes(rng, size)
        image = (planes * 150 + rng.integers(0, 60, planes.shape)).astype(np.uint8)
        stem = f"{split}{index}"
        Image.fromarray(image).save(root / "images" / split / f"{stem}.png")
        if folders:
            (root / "masks" / split / stem).mkdir()
            for plane, name in enumerate(CLASSES):
                if planes[..., plane].any():
                    cv2.imwrite(str(root / "masks" / split / stem / f"{name}.png"), planes[..., plane] * 255)
        else:
            Image.fromarray(planes * 255).save(root / "masks" / split / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def overlaps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_overlaps(tmp_path_factory.mktemp("multilabel") / "roads", {"train": 16, "val": 4, "test": 4}, True)


def _cfg(root: Path, out: Path, *overrides: str):
    # U-Net's own decoder, not the tests' narrow one: overlapping classes need its width to be learnt.
    wide = "model.kwargs.decoder_channels=[256,128,64,32,16]"
    return folder_cfg(root, out, *MULTILABEL, "loss=ce_dice", wide, *overrides)


@pytest.fixture(scope="module")
def multilabel_run(overlaps: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multilabel_run")
    # 20 short epochs: last.ckpt every 10 and the PNGs at the end (and for the best checkpoint) only.
    cfg = _cfg(overlaps, out, "trainer.max_epochs=20", "optimizer.lr=0.01", "data.batch_size=8",
               "callbacks.last_checkpoint.every_n_epochs=10")  # fmt: skip
    with open_dict(cfg):  # this run draws its pictures (a blend of the present classes' colours)
        cfg.callbacks.validation_pictures = compose_named("train", []).callbacks.validation_pictures
        cfg.callbacks.validation_pictures.png_every_n_epochs = 20
    metrics = train(cfg)
    assert metrics["val/miou"] > 0.8, metrics
    return out


def test_both_mask_layouts_read_identically(tmp_path: Path):
    folders = write_overlaps(tmp_path / "folders", {"train": 3, "val": 1}, folders=True)
    images = write_overlaps(tmp_path / "images", {"train": 3, "val": 1}, folders=False)
    encoder = MultilabelMaskEncoder(CLASSES, None)
    for index in range(3):
        from_folder = encoder.encode_file(folders / "masks" / "train" / f"train{index}")
        from_image = encoder.encode_file(images / "masks" / "train" / f"train{index}.png")
        assert from_folder.shape == (32, 32, 3) and from_folder.dtype == np.uint8
        np.testing.assert_array_equal(from_folder, from_image)
        assert ((from_folder[..., 0] == 1) & (from_folder[..., 1] == 1)).any()  # classes overlap
    report = inspect_data({"root": str(folders), "num_classes": 3, "class_names": CLASSES, "mode": "multilabel"})
    assert report.ok and report.train_counts.pixels.min() > 0
    by_image = inspect_data({"root": str(images), "num_classes": 3, "class_names": CLASSES, "mode": "multilabel"})
    assert by_image.ok and (by_image.train_counts.pixels == report.train_counts.pixels).all()


def test_the_data_check_checks_multilabel_images_as_any_others(tmp_path: Path):
    root = write_overlaps(tmp_path / "r", {"train": 3, "val": 1}, folders=True)
    cut = root / "images" / "train" / "train0.png"
    cut.write_bytes(cut.read_bytes()[:60])
    cv2.imwrite(str(root / "images" / "train" / "train1.png"), np.zeros((32, 32, 3), np.uint16))
    report = inspect_data({"root": str(root), "num_classes": 3, "class_names": CLASSES, "mode": "multilabel"})
    assert any(p.file == str(cut) and "truncated" in p.problem for p in report.problems), report.problems
    mixed = [p for p in report.problems if "more than one depth" in p.problem]
    assert len(mixed) == 1 and "train1.png (uint16)" in mixed[0].file


def test_mask_folders_pair_with_list_file_splits(tmp_path: Path):
    root = write_overlaps(tmp_path / "folders", {"train": 3, "val": 1}, folders=True)
    (root / "train.txt").write_text("train0\ntrain2\n")
    (root / "pairs.csv").write_text("image,mask\nimages/val/val0.png,masks/val/val0\n")
    data = {"root": str(root), "num_classes": 3, "class_names": CLASSES, "mode": "multilabel"}
    data |= {"split_files": {"train": "train.txt", "val": "pairs.csv"}, "image_folder": "images/train"}
    data["mask_folder"] = "masks/train"
    layout = DataLayout.of(data)
    assert [mask.name for _, mask in layout.list_pairs("train")] == ["train0", "train2"]
    assert layout.list_pairs("val")[0][1] == root / "masks" / "val" / "val0"
    report = inspect_data(data)
    assert report.ok and report.splits["train"].pairs == 2 and report.train_counts.pixels.min() > 0


def test_bad_multilabel_masks_name_the_file_and_the_fix(tmp_path: Path):
    root = write_overlaps(tmp_path / "r", {"train": 1}, folders=True)
    folder = root / "masks" / "train" / "train0"
    cv2.imwrite(str(folder / "bus.png"), np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r"train0: files \['bus'\] name no class"):
        MultilabelMaskEncoder(CLASSES, None).encode_file(folder)
    with pytest.raises(DataError, match=r"mask has 3 channel\(s\) but data.num_classes=2"):
        MultilabelMaskEncoder(CLASSES[:2], None).encode_file(write_overlaps(tmp_path / "i", {"train": 1}, False)
                                                             / "masks" / "train" / "train0.png")  # fmt: skip
    ignored = MultilabelMaskEncoder(CLASSES, 128)
    (folder / "bus.png").unlink()
    cv2.imwrite(str(folder / "car.png"), np.full((32, 32), 128, np.uint8))
    assert (ignored.encode_file(folder) == MASK_PAD_CODE).all()


def test_presence_scores_and_the_blend():
    confusion = PresenceConfusion(2, ignore_index=255)
    target = torch.tensor([[[[1, 1], [0, 255]], [[1, 0], [0, 0]]]])  # (1, 2, 2, 2)
    preds = torch.tensor([[[[1, 0], [0, 1]], [[1, 0], [0, 0]]]])
    confusion.update(preds, target)
    scores = scores_from_presence(confusion.compute(), ["a", "b"])
    assert scores["iou/a"] == pytest.approx(0.5) and scores["iou/b"] == 1.0
    assert scores["miou"] == pytest.approx(0.75) and scores["precision/a"] == 1.0 and scores["recall/a"] == 0.5
    palette = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    rgb = blend_planes(np.array([[[1, 0]], [[1, 0]]]), palette)
    assert rgb[0, 0].tolist() == [128, 0, 128] and rgb[0, 1].tolist() == [0, 0, 0]


def test_overlapping_classes_are_learned_and_predicted_together(multilabel_run: Path, overlaps: Path, tmp_path: Path):
    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    for name in CLASSES:
        for score in ("iou", "dice", "precision", "recall"):
            assert f"test/{score}/{name}" in metrics
    assert metrics["val/miou"] == pytest.approx(np.mean([metrics[f"val/iou/{n}"] for n in CLASSES]), abs=1e-6)
    assert "val/boundary_iou" in metrics
    assert_per_image_scores_match(multilabel_run)
    for picture in ("val_examples.png", "val_worst.png", "per_class_iou.png"):
        assert (multilabel_run / "pictures" / picture).is_file(), picture
    ckpt = multilabel_run / "checkpoints" / "best.ckpt"
    module = load_module(ckpt)
    assert module.mode == "multilabel"

    cfg = compose_named("eval", [f"ckpt_path={ckpt}", "trainer=cpu"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "eval")
    assert evaluate(cfg)["test/miou"] == pytest.approx(metrics["test/miou"], abs=1e-6)
    assert (tmp_path / "eval" / "confusion_matrix.csv").read_text().startswith("class,tn,fp,fn,tp")

    out = tmp_path / "pred"
    predict(compose_named("predict", [f"ckpt_path={ckpt}", f"input={overlaps / 'images' / 'val'}", f"output={out}",
                                      "device=cpu"]))  # fmt: skip
    encoder = MultilabelMaskEncoder(CLASSES, None)
    both_right = []
    for index in range(4):
        predicted = encoder.encode_file(out / "masks" / f"val{index}")  # the layout training reads
        assert sorted(p.name for p in (out / "masks" / f"val{index}").iterdir()) == sorted(f"{c}.png" for c in CLASSES)
        truth = encoder.encode_file(overlaps / "masks" / "val" / f"val{index}")
        overlap = (truth[..., 0] == 1) & (truth[..., 1] == 1)
        both_right.append(((predicted[..., 0] == 1) & (predicted[..., 1] == 1))[overlap].mean())
        assert (out / "colour" / f"val{index}.png").is_file()
    assert np.mean(both_right) > 0.8  # a pixel that is road and shadow is predicted both


@pytest.mark.parametrize("cache", ["off", "memory", "disk"])
def test_multilabel_batches_are_planes_through_resizing_crops_and_every_cache(overlaps: Path, cache: str):
    data = SegmentationDataModule(
        str(overlaps), 3, CLASSES, mode="multilabel", image_size=[48, 40], crop_size=[24, 24], cache=cache,
        batch_size=4, num_workers=0, seed=0,
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["mask"].shape == (4, 3, 24, 24) and batch["mask"].dtype == torch.uint8
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    val = next(iter(data.evaluation_dataloader("val")))
    assert val["mask"].shape == (4, 3, 48, 40)


def test_tiled_and_tta_inference_average_sigmoid_probabilities():
    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.stack([x[:, 0] * 0 + 2.0, x[:, 0] * 0 - 1.0], dim=1)

    images = torch.zeros(1, 3, 40, 40)
    settings = InferenceSettings.from_config({"tile_size": [16, 16], "flips": ["horizontal"]})
    logits = predict_logits(Constant(), images, settings, sigmoid=True)
    torch.testing.assert_close(logits[0, :, 5, 5], torch.tensor([2.0, -1.0]), atol=1e-4, rtol=0)
    assert logits_to_prediction(logits, "multilabel")[0, :, 0, 0].tolist() == [1, 0]
    assert logits_to_prediction(logits, "multilabel", threshold=0.1)[0, :, 0, 0].tolist() == [1, 1]
