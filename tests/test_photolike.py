"""The photograph-like generator the benchmark measures the data path on."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from semseg.data.dataset import list_pairs
from semseg.data.photolike import PHOTO_CLASS_NAMES, PhotoSpec, generate_photolike
from semseg.errors import DataError

SPEC = PhotoSpec(num_train=3, num_val=2, height=72, width=96, seed=1)


def test_the_set_is_deterministic_textured_and_pairs_up(tmp_path: Path):
    a, b = generate_photolike(tmp_path / "a", SPEC), generate_photolike(tmp_path / "b", SPEC)
    pairs = list_pairs(a, "train")
    assert len(pairs) == 3 and len(list_pairs(a, "val")) == 2
    for image, mask in pairs:
        assert image.read_bytes() == (b / image.relative_to(a)).read_bytes()
        assert mask.read_bytes() == (b / mask.relative_to(a)).read_bytes()
    masks = np.stack([cv2.imread(str(m), cv2.IMREAD_UNCHANGED) for _, m in pairs])
    assert masks.dtype == np.uint8 and masks.ndim == 3 and masks.max() < len(PHOTO_CLASS_NAMES)
    assert len(np.unique(masks)) > 3
    image = cv2.imread(str(pairs[0][0]))
    assert image.shape == (72, 96, 3)
    # Texture and noise: PNG keeps more than a byte a pixel, where a flat image needs almost none.
    flat = cv2.imencode(".png", np.full_like(image, 128))[1].size
    assert pairs[0][0].stat().st_size > 72 * 96 > 20 * flat


def test_a_second_call_reuses_the_set_and_a_foreign_folder_is_refused_untouched(tmp_path: Path):
    root = generate_photolike(tmp_path / "set", SPEC)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    assert generate_photolike(root, SPEC) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == stamps
    with pytest.raises(DataError, match=r"another spec.*Point data\.root at a new folder"):
        generate_photolike(root, PhotoSpec(num_train=3, num_val=2, height=72, width=96, seed=2))
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no photolike\.json\): it may be yours, and nothing is written to it"):
        generate_photolike(mine, SPEC)
    assert [p.name for p in mine.rglob("*")] == ["images"]
