"""Class weights: the two balancing formulas, every way of giving weights, the cached counting pass,
and the weights reaching the run (checkpoint hyper-parameters, data_report.json, the loss)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import semseg.data.mask_stats as mask_stats
from semseg.data.class_weights import ClassCounts, resolve_class_weights, weights_from_counts
from semseg.data.inspection import inspect_folder
from semseg.errors import ConfigError
from semseg.training.train import train

NAMES = ["background", "cell", "speck"]


def counts_of(*masks: np.ndarray, num_classes: int = 3) -> ClassCounts:
    counts = ClassCounts.zeros(num_classes)
    for mask in masks:
        counts.add(np.bincount(mask.ravel(), minlength=num_classes))
    return counts


def test_inverse_frequency_is_balanced_so_the_mean_pixel_weight_is_one():
    counts = counts_of(np.array([0] * 90 + [1] * 10), num_classes=2)
    weights = weights_from_counts(counts, "inverse_frequency")
    assert weights == pytest.approx([1 / 1.8, 5.0], abs=1e-4)
    assert (90 * weights[0] + 10 * weights[1]) / 100 == pytest.approx(1.0, abs=1e-3)


def test_median_frequency_divides_by_the_pixels_of_the_images_where_the_class_appears():
    a = np.array([0] * 80 + [1] * 20)  # class 1 in image a only
    b = np.array([0] * 100)
    c = np.array([0] * 50 + [2] * 50)  # class 2 in image c only
    counts = counts_of(a, b, c)
    # class frequencies over the images where each class appears: 230/300, 20/100, 50/100; median 0.5
    assert weights_from_counts(counts, "median_frequency") == pytest.approx([0.5 / (230 / 300), 2.5, 1.0], abs=1e-4)
    assert counts.images.tolist() == [3, 1, 1] and counts.num_images == 3


def test_a_class_without_training_pixels_weighs_one():
    weights = weights_from_counts(counts_of(np.array([0] * 30 + [1] * 10)), "inverse_frequency")
    assert weights[2] == 1.0


def test_weights_as_a_list_a_mapping_or_a_file(tmp_path: Path):
    assert resolve_class_weights(None, NAMES, None) is None
    assert resolve_class_weights([0.5, 1, 4], NAMES, None) == [0.5, 1.0, 4.0]
    assert resolve_class_weights({"speck": 4, "background": 0.5, "cell": 1}, NAMES, None) == [0.5, 1.0, 4.0]
    (tmp_path / "w.json").write_text(json.dumps({"background": 0.5, "cell": 1, "speck": 4}))
    (tmp_path / "w_list.json").write_text("[0.5, 1, 4]")
    (tmp_path / "w.txt").write_text("0.5, 1\n4\n")
    for name in ("w.json", "w_list.json", "w.txt"):
        assert resolve_class_weights(str(tmp_path / name), NAMES, None) == [0.5, 1.0, 4.0], name


def test_auto_is_median_frequency_from_the_training_counts():
    counts = counts_of(np.array([0] * 80 + [1] * 20), np.array([0] * 50 + [2] * 50))
    assert resolve_class_weights("auto", NAMES, counts) == weights_from_counts(counts, "median_frequency")
    assert resolve_class_weights("inverse_frequency", NAMES, counts) == weights_from_counts(counts, "inverse_frequency")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([1.0, 2.0], "2 weights but data.num_classes=3"),
        ([1.0, -1.0, 1.0], "finite and non-negative"),
        ({"background": 1.0, "cat": 2.0}, r"names weights for \['cat'\] and misses \['cell', 'speck'\]"),
        ("balanced", "neither a method .*auto, median_frequency, inverse_frequency.* nor an existing file"),
    ],
)
def test_bad_weights_name_the_key_and_what_to_give(spec, message: str):
    with pytest.raises(ConfigError, match=message):
        resolve_class_weights(spec, NAMES, counts_of(np.array([0, 1, 2])))


def test_the_counting_pass_is_cached_and_reads_again_only_changed_masks(tiny_root: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "data"
    for folder in ("images", "masks"):
        for split in ("train", "val"):
            (root / folder / split).mkdir(parents=True)
            for path in sorted((tiny_root / folder / split).iterdir()):
                (root / folder / split / path.name).write_bytes(path.read_bytes())
    reads = []
    original = mask_stats.summarize_mask
    monkeypatch.setattr(mask_stats, "summarize_mask", lambda path: reads.append(path) or original(path))
    args = (root, 5, None, None, None, 3)
    first = inspect_folder(*args)
    assert len(reads) == 12  # 8 train + 4 val masks, each read once
    reads.clear()
    second = inspect_folder(*args)
    assert reads == [] and second.train_counts.pixels.tolist() == first.train_counts.pixels.tolist()

    changed = root / "masks" / "train" / "train_00000.png"
    mask = cv2.imread(str(changed), cv2.IMREAD_UNCHANGED)
    mask[:] = 4  # every pixel a speck now
    cv2.imwrite(str(changed), mask)
    third = inspect_folder(*args)
    assert reads == [changed]
    expected = np.zeros(5, np.int64)
    for path in sorted((root / "masks" / "train").iterdir()):
        expected += np.bincount(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ravel(), minlength=5)
    assert third.train_counts.pixels.tolist() == expected.tolist()


def test_wce_trains_with_auto_weights_logged_with_the_run(make_cfg, tiny_root: Path):
    cfg = make_cfg("loss=wce", "run_test=false")
    train(cfg)
    out = Path(cfg.output_dir)
    report = json.loads((out / "data_report.json").read_text())
    expected = report["suggested_class_weights"]["median_frequency"]
    checkpoint = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["class_weights"] == expected
    assert checkpoint["state_dict"]["loss.terms.ce.weight"].tolist() == pytest.approx(expected)
    assert "class_weights:\n- " in (out / "csv" / "hparams.yaml").read_text()
    pixels = np.zeros(5, np.int64)
    for path in (tiny_root / "masks" / "train").iterdir():
        pixels += np.bincount(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ravel(), minlength=5)
    counted = [report["splits"]["train"]["classes"][name]["pixels"] for name in report["class_names"]]
    assert counted == pixels.tolist()
