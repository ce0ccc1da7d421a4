"""The photograph-like generator the benchmark measures the data path on."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

import semseg.data.photolike as photolike
from semseg.data.pairing import list_pairs
from semseg.data.photolike import PHOTO_CLASS_NAMES, PhotoSpec, generate_photolike
from semseg.errors import DataError

SPEC = PhotoSpec(num_train=3, num_val=2, height=72, width=96, seed=1)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def read(path: Path) -> np.ndarray:
    # IMREAD_UNCHANGED: the file's own channels and depth (the default would turn any image into 3 x uint8).
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_one_spec_gives_byte_identical_sets_and_another_seed_another_set(tmp_path: Path):
    a = tree(generate_photolike(tmp_path / "a", SPEC))
    assert len([k for k in a if k.endswith(".png")]) == 2 * (3 + 2) and "photolike.json" in a
    assert tree(generate_photolike(tmp_path / "b", SPEC)) == a
    other = tree(generate_photolike(tmp_path / "c", PhotoSpec(**asdict(SPEC) | {"seed": 2})))
    assert other["images/train/train_00000.png"] != a["images/train/train_00000.png"]


def test_the_set_pairs_up_with_the_reader(tmp_path: Path):
    root = generate_photolike(tmp_path / "set", SPEC)
    for split, count in (("train", 3), ("val", 2)):
        pairs = list_pairs(root, split)
        assert len(pairs) == count
        assert all(image.stem == mask.stem and mask.parent == root / "masks" / split for image, mask in pairs)


def test_masks_are_single_channel_indices_of_several_classes(tmp_path: Path):
    root = generate_photolike(tmp_path / "set", SPEC)
    masks = [read(p) for p in sorted((root / "masks").rglob("*.png"))]
    assert all(m.shape == (72, 96) and m.dtype == np.uint8 for m in masks)
    present = np.unique(np.stack(masks))
    assert present.max() < len(PHOTO_CLASS_NAMES) == 8 and len(present) > 3


def test_images_are_rgb_with_texture_where_a_flat_or_smooth_image_has_none(tmp_path: Path):
    root = generate_photolike(tmp_path / "set", SPEC)
    smooth = np.tile(np.linspace(0, 255, 96, dtype=np.float32), (72, 1))  # a gradient: no texture
    for path in sorted((root / "images").rglob("*.png")):
        image = read(path)
        assert image.shape == (72, 96, 3) and image.dtype == np.uint8
        assert np.abs(np.diff(image.astype(np.int16), axis=-1)).mean() > 5  # colour, not grey
        # Texture and noise: a mean |Laplacian| of ~17 where the gradient has < 1, and PNG keeps
        # ~2 bytes a pixel where a flat image needs ~0.03 (photographs: ~1.5).
        assert np.abs(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F)).mean() > 5
        assert np.abs(cv2.Laplacian(smooth, cv2.CV_32F)).mean() < 1
        assert path.stat().st_size > 72 * 96


def test_a_second_call_reuses_the_set_and_another_spec_is_refused(tmp_path: Path):
    root = generate_photolike(tmp_path / "set", SPEC)
    assert json.loads((root / "photolike.json").read_text()) == asdict(SPEC)
    before = stamps(root)
    assert generate_photolike(root, SPEC) == root
    assert stamps(root) == before  # nothing rewritten
    with pytest.raises(DataError, match=rf"{re.escape(str(root))}.*another spec.*new folder"):
        generate_photolike(root, PhotoSpec(**asdict(SPEC) | {"seed": 2}))
    assert stamps(root) == before


def test_a_folder_without_our_manifest_is_refused_and_left_untouched(tmp_path: Path):
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    before = stamps(mine)
    with pytest.raises(DataError, match=rf"{re.escape(str(mine))}.*no photolike\.json.*new folder") as error:
        generate_photolike(mine, SPEC)
    assert "delete" not in str(error.value).lower()  # it may hold someone's data
    assert stamps(mine) == before and sorted(tmp_path.iterdir()) == [mine]


def test_an_interrupted_run_leaves_no_half_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    render, root, seen = photolike.render_street, tmp_path / "set", []

    def interrupted(*args):
        seen.append(root.exists())  # a hard kill (no cleanup) now must not leave ``root`` behind
        if len(seen) == 3:
            raise KeyboardInterrupt
        return render(*args)

    monkeypatch.setattr(photolike, "render_street", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_photolike(root, SPEC)
    assert seen == [False] * 3 and list(tmp_path.iterdir()) == []  # neither the set nor its staging folder
