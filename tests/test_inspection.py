"""Data inspection (scripts/inspect_data.py and training's start-up check): each broken folder gets
a problem naming its file and the fix; good folders get correct class frequencies;
scripts/inspect_data.py writes the report and exits non-zero."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from semseg.data import SegmentationDataModule
from semseg.data.inspection import inspect_data, inspect_folder
from semseg.errors import DataError
from semseg.training.train import train

ROOT = Path(__file__).resolve().parents[1]


def square_pair(size: int = 32, value: int = 1) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((size, size), 30, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    image[8:20, 10:24] = 220
    mask[8:20, 10:24] = value
    return image, mask


def good_folder(root: Path, value: int = 1) -> Path:
    """Two classes; train 3 pairs, val 2, each mask a square of ``value`` on 0."""
    for split, count in (("train", 3), ("val", 2)):
        for folder in ("images", "masks"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = square_pair(value=value)
            cv2.imwrite(str(root / "images" / split / f"{split}{i}.png"), image)
            cv2.imwrite(str(root / "masks" / split / f"{split}{i}.png"), mask)
    return root


def inspect(root: Path, **kwargs):
    return inspect_folder(root, **({"num_classes": 2, "in_channels": 1} | kwargs))


def only_problem(report, file: Path):
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    assert problem.file == str(file)
    return problem


def test_a_good_folder_has_no_problems_and_exact_class_counts(tmp_path: Path):
    report = inspect(good_folder(tmp_path), class_names=["background", "square"])
    assert report.ok and report.warnings == []
    train = report.splits["train"]
    assert train.pairs == 3 and train.counts.pixels.tolist() == [3 * (32 * 32 - 12 * 14), 3 * 12 * 14]
    assert train.counts.images.tolist() == [3, 3]
    saved = report.to_json()
    assert saved["splits"]["val"]["classes"]["square"] == {
        "pixels": 2 * 168, "frequency": round(168 / 1024, 6), "images": 2, "presence": 1.0
    }  # fmt: skip
    assert set(saved["suggested_class_weights"]) == {"median_frequency", "inverse_frequency"}


def test_an_empty_test_split_is_no_test_split(tmp_path: Path):
    root = good_folder(tmp_path)
    (root / "images" / "test").mkdir()
    (root / "masks" / "test").mkdir()
    report = inspect(root)
    assert report.ok and set(report.splits) == {"train", "val"}
    dm = SegmentationDataModule(str(root), num_classes=2, in_channels=1, num_workers=0)
    assert not dm.has_test_split


def test_unpaired_files_and_duplicate_stems_name_each_file(tmp_path: Path):
    root = good_folder(tmp_path)
    cv2.imwrite(str(root / "images" / "train" / "lonely.png"), square_pair()[0])
    cv2.imwrite(str(root / "masks" / "val" / "orphan.png"), square_pair()[1])
    cv2.imwrite(str(root / "images" / "train" / "train0.jpg"), square_pair()[0])
    report = inspect(root)
    found = {Path(p.file).name: p for p in report.problems}
    assert set(found) == {"lonely.png", "orphan.png", "train0.png"}
    assert "has no mask" in found["lonely.png"].problem and "lonely.png" in found["lonely.png"].fix
    assert "has no image" in found["orphan.png"].problem
    assert "shares its stem with train0.jpg" in found["train0.png"].problem


def test_size_mismatch_names_the_mask_and_both_sizes(tmp_path: Path):
    root = good_folder(tmp_path)
    mask = root / "masks" / "train" / "train1.png"
    cv2.imwrite(str(mask), np.zeros((30, 32), np.uint8))
    problem = only_problem(inspect(root), mask)
    assert "is 32x30 but its image is 32x32 (WxH)" in problem.problem and "re-export" in problem.fix


def test_0_255_masks_suggest_the_label_map_and_are_fine_with_it(tmp_path: Path):
    root = good_folder(tmp_path, value=255)
    report = inspect(root)
    assert len(report.problems) == 5 and not report.ok
    assert all("data.label_map={0: 0, 255: 1}" in p.fix for p in report.problems)
    assert inspect(root, label_map={0: 0, 255: 1}).ok


def test_values_beyond_the_classes_suggest_num_classes_or_ignore_index(tmp_path: Path):
    root = good_folder(tmp_path, value=7)
    report = inspect(root)
    problem = report.problems[0]
    assert "holds values [7] that are not classes 0..1" in problem.problem
    assert "data.ignore_index=7" in problem.fix and "data.num_classes to 8" in problem.fix
    ignored = inspect(root, ignore_index=7)
    assert ignored.ok and ignored.splits["train"].ignored_pixels == 3 * 168
    assert ignored.splits["train"].counts.pixels.tolist() == [3 * (1024 - 168), 0]
    assert any("['class_1'] have no pixels in the train split" in w for w in ignored.warnings)


def test_colour_masks_are_explained_with_their_colours(tmp_path: Path):
    root = good_folder(tmp_path)
    colour = root / "masks" / "train" / "train0.png"
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[8:20, 10:24] = (255, 0, 0)  # red, in RGB
    cv2.imwrite(str(colour), rgb[..., ::-1])
    gray = root / "masks" / "train" / "train1.png"
    cv2.imwrite(str(gray), np.repeat(square_pair()[1][..., None], 3, axis=2))
    found = {Path(p.file).name: p for p in inspect(root).problems}
    assert "RGB colour mask (colours [0, 0, 0], [255, 0, 0]" in found["train0.png"].problem
    # The fix is a colour label_map of the data set's colours (not the grayscale mask's).
    assert 'data.label_map, e.g. {"[0,0,0]": 0, "[255,0,0]": 1}' in found["train0.png"].fix
    assert "3 identical channels" in found["train1.png"].problem and "single-channel" in found["train1.png"].fix


def test_palette_masks_are_read_as_their_indices(tmp_path: Path):
    root = good_folder(tmp_path)
    for path in (root / "masks" / "train").iterdir():
        palette = Image.fromarray(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), mode="P")
        palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC's colours: index 1 is dark red
        palette.save(path)
    report = inspect(root)
    assert report.ok and report.splits["train"].counts.pixels.tolist() == [3 * (1024 - 168), 3 * 168]
    assert any("3 palette PNG mask(s)" in note for note in report.notes)
    dm = SegmentationDataModule(str(root), num_classes=2, in_channels=1, num_workers=0, augment=None)
    dm.setup("fit")
    assert dm.datasets["train"][0]["mask"].unique().tolist() == [0, 1]


def test_unreadable_files_jpeg_masks_and_truncated_images(tmp_path: Path):
    root = good_folder(tmp_path, value=255)
    broken_mask = root / "masks" / "train" / "train0.png"
    broken_mask.write_bytes(b"not a png")
    jpeg = root / "masks" / "val" / "val0.jpg"
    (root / "masks" / "val" / "val0.png").unlink()
    cv2.imwrite(str(jpeg), square_pair(value=255)[1])  # lossy: edge values that are no class
    truncated = root / "images" / "train" / "train1.png"
    truncated.write_bytes(truncated.read_bytes()[:60])  # the header survives, the pixels do not
    found = {Path(p.file).name: p for p in inspect(root, label_map={0: 0, 255: 1}).problems}
    assert "cannot be read" in found["train0.png"].problem
    assert "store masks as PNG" in found["val0.jpg"].fix
    # The fast path reads image headers, and the file's end: a PNG without its IEND chunk is cut short.
    assert "is truncated: the PNG file ends before its image data does" in found["train1.png"].problem
    full = {Path(p.file).name: p for p in inspect(root, label_map={0: 0, 255: 1}, full=True).problems}
    assert "is truncated" in full["train1.png"].problem


def test_images_that_opencv_converts_are_warned_and_impossible_channels_refused(tmp_path: Path):
    root = good_folder(tmp_path)
    rgba = root / "images" / "train" / "train0.png"
    cv2.imwrite(str(rgba), np.zeros((32, 32, 4), np.uint8))
    report = inspect(root, in_channels=3)
    assert report.ok
    assert any(
        w.startswith("1 RGBA images lose their alpha channel (data.in_channels=3), e.g.") for w in report.warnings
    )
    assert any("4 1-band images are converted" in w for w in report.warnings)
    four = inspect(root, in_channels=4)
    assert len(four.problems) == 4  # the grayscale images; the RGBA one has 4 channels
    assert "has 1 band(s) but data.in_channels=4" in four.problems[0].problem


def test_training_stops_at_start_up_with_the_inspections_message(make_cfg, tmp_path: Path):
    root = good_folder(tmp_path / "data", value=255)
    cfg = make_cfg("data=folder", "data.num_classes=2", "data.in_channels=1", root=root)
    with pytest.raises(DataError) as error:
        train(cfg)
    assert "has 5 problem(s); nothing was trained" in str(error.value)
    assert "train0.png: holds values [255] that are not classes 0..1. Fix: 0/255 masks" in str(error.value)
    assert not (Path(cfg.output_dir) / "checkpoints").exists()


def run_inspect_data(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "inspect_data.py"), f"hydra.run.dir={tmp_path / 'out'}", *overrides],
        capture_output=True, text=True, timeout=120, env=os.environ | {"HYDRA_FULL_ERROR": "0"},
    )  # fmt: skip


def test_the_script_prints_the_report_writes_json_and_exits_non_zero_on_problems(tmp_path: Path):
    root = good_folder(tmp_path / "data", value=255)
    data = ["data=folder", f"data.root={root}", "data.num_classes=2", "data.in_channels=1"]
    bad = run_inspect_data(tmp_path, *data)
    assert bad.returncode == 1, bad.stderr
    assert "5 problem(s):" in bad.stdout and "masks/train/train0.png: holds values [255]" in bad.stdout
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["ok"] is False and len(report["problems"]) == 5

    good = run_inspect_data(tmp_path, *data, "data.label_map={0: 0, 255: 1}", "data.class_names=[background,square]")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "no problems found" in good.stdout and "suggested loss.class_weights (median_frequency)" in good.stdout
    assert "square" in good.stdout and "16.41%" in good.stdout  # 168 of 1024 pixels


def test_the_script_lists_the_stored_values_when_num_classes_is_not_set(tmp_path: Path):
    root = good_folder(tmp_path / "data", value=255)
    result = run_inspect_data(tmp_path, "data=folder", f"data.root={root}")
    assert result.returncode == 1
    assert "store the values 0 (83.6%), 255 (16.4%)" in result.stdout  # 168 of 1024 pixels are 255
    assert "error: data.num_classes is not set" in result.stderr and "data.label_map" in result.stderr


def test_a_second_check_opens_no_image_unless_it_changed(tiny_root: Path, tmp_path: Path, monkeypatch):
    from semseg.data import image_headers

    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    opened = []
    real_open = image_headers.Image.open
    monkeypatch.setattr(
        image_headers.Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k)
    )
    data = {"root": str(root), "num_classes": 5}
    first = inspect_data(data)
    assert len(opened) == 16 and not first.problems  # 8 train, 4 val, 4 test images
    opened.clear()
    assert inspect_data(data).splits["train"].image_sizes == first.splits["train"].image_sizes
    assert opened == []  # every header from the cache
    changed = sorted((root / "images" / "val").iterdir())[0]
    changed.write_bytes(changed.read_bytes()[:40])  # cut short: read again, reported, and not cached
    for _ in range(2):
        opened.clear()
        report = inspect_data(data)
        assert [str(p) for p in opened] == [str(changed)]
        assert any(p.file == str(changed) for p in report.problems)


def test_the_data_check_and_its_script_load_neither_torch_nor_lightning():
    # What scripts/inspect_data.py runs: its error wrapper (lightning=False) and the check itself,
    # in a fresh process. Loading torch and Lightning would add seconds to every start.
    probe = (
        "import logging, sys\n"
        "logging.basicConfig()\n"
        "from semseg.cli import exit_on_user_error\n"
        "exit_on_user_error(lightning=False)(lambda: __import__('semseg.data.inspection'))()\n"
        "print(sorted(name for name in ('torch', 'lightning', 'albumentations') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
