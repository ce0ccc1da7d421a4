"""The decoded-sample cache (data.cache) and the uint8 batches normalised on the device."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from semseg.data.batch import MASK_PAD_CODE, BatchPreparer
from semseg.data.mask_encoding import MaskEncoder
from semseg.data.pairing import list_pairs
from semseg.data.samples import FileSamples, PackedSamples, sample_source
from semseg.errors import ConfigError
from tests.test_data import write_pair


@pytest.fixture
def mixed_root(tmp_path: Path) -> Path:
    """Textured RGB pairs of two sizes (a cache must keep each sample's own shape)."""
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(30, 40), (24, 36), (30, 40)]):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = rng.integers(0, 3, (height, width), dtype=np.uint8)
        write_pair(tmp_path / "data", "train", f"s{i}", image, mask)
    return tmp_path / "data"


def files(root: Path, image_size=None) -> FileSamples:
    return FileSamples(list_pairs(root, "train"), MaskEncoder(3, None, None), 3, image_size)


def assert_same_samples(a, b) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        (image_a, mask_a), (image_b, mask_b) = a[i], b[i]
        assert image_a.dtype == np.uint8 and np.array_equal(image_a, image_b)
        assert np.array_equal(mask_a, mask_b)


@pytest.mark.parametrize("image_size", [None, [20, 28]])
def test_memory_and_disk_caches_give_exactly_the_files_samples(mixed_root: Path, image_size):
    source = files(mixed_root, image_size)
    memory = sample_source(source, "memory", 1.0, "train")
    disk = sample_source(source, "disk", 1.0, "train")
    assert isinstance(memory, PackedSamples) and isinstance(disk, PackedSamples)
    assert isinstance(disk.images, np.memmap)
    assert_same_samples(source, memory)
    assert_same_samples(source, disk)
    if image_size is None:
        assert [memory[i][0].shape for i in range(3)] == [(30, 40, 3), (24, 36, 3), (30, 40, 3)]


def test_a_cached_sample_cannot_be_changed_through_what_it_returns(mixed_root: Path):
    cache = sample_source(files(mixed_root), "memory", 1.0, "train")
    image, mask = cache[0]
    image[:] = 0
    mask[:] = 0
    assert cache[0][0].any() and cache[0][1].any()


def test_the_disk_cache_is_reused_and_rebuilt_when_a_file_changes(mixed_root: Path, caplog):
    sample_source(files(mixed_root), "disk", 1.0, "train")
    first = files(mixed_root).key()
    image = mixed_root / "images" / "train" / "s1.png"
    with caplog.at_level(logging.INFO, logger="semseg.data.samples"):
        again = sample_source(files(mixed_root), "disk", 1.0, "train")
    assert str(again.images.filename).startswith(str(Path(os.environ["SEMSEG_CACHE_DIR"]) / "samples" / first))
    changed = np.full((24, 36, 3), 7, np.uint8)
    cv2.imwrite(str(image), changed)
    assert files(mixed_root).key() != first
    rebuilt = sample_source(files(mixed_root), "disk", 1.0, "train")
    assert np.array_equal(rebuilt[1][0], changed)


def test_the_disk_cache_folder_stays_under_its_limit(mixed_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(tmp_path / "cache"))
    one_split = files(mixed_root).estimated_bytes() / 2**30
    sample_source(files(mixed_root), "disk", 1.0, "train")
    sample_source(files(mixed_root, [16, 16]), "disk", 1.0, "train")
    assert len(list((tmp_path / "cache" / "samples").iterdir())) == 2
    # Room for half the full-size split: the least recently used cache (that split) goes.
    sample_source(files(mixed_root, [8, 8]), "disk", one_split / 2, "train")
    kept = {p.name for p in (tmp_path / "cache" / "samples").iterdir()}
    assert kept == {files(mixed_root, [16, 16]).key(), files(mixed_root, [8, 8]).key()}


def test_auto_caches_in_memory_only_what_fits(mixed_root: Path):
    assert isinstance(sample_source(files(mixed_root), "auto", 1.0, "train"), PackedSamples)
    assert isinstance(sample_source(files(mixed_root), "auto", 1e-9, "train"), FileSamples)
    assert isinstance(sample_source(files(mixed_root), "off", 1.0, "train"), FileSamples)
    with pytest.raises(ConfigError, match=r"data\.cache=ram: choose one of auto, memory, disk, off"):
        sample_source(files(mixed_root), "ram", 1.0, "train")


def test_batches_are_normalised_on_the_device_as_albumentations_would():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    expected = np.stack([A.Normalize(mean=mean, std=std)(image=i)["image"] for i in image]).transpose(0, 3, 1, 2)
    mask = torch.tensor([[0, 1, MASK_PAD_CODE]], dtype=torch.uint8)
    batch = {"image": torch.from_numpy(image).permute(0, 3, 1, 2), "mask": mask, "name": ["a", "b"]}
    prepared = BatchPreparer(mean, std, ignore_index=-1)(batch)
    assert prepared["image"].dtype == torch.float32
    torch.testing.assert_close(prepared["image"], torch.from_numpy(expected), rtol=0, atol=1e-5)
    assert prepared["mask"].dtype == torch.long and prepared["mask"].tolist() == [[0, 1, -1]]
    assert prepared["name"] == ["a", "b"] and batch["image"].dtype == torch.uint8  # the input is left as it was
    again = BatchPreparer(mean, std, ignore_index=-1)(prepared)  # preparing twice changes nothing
    assert torch.equal(again["image"], prepared["image"]) and torch.equal(again["mask"], prepared["mask"])
    assert "offset" not in BatchPreparer(mean, std, 0).state_dict()  # checkpoints keep their keys
