"""The data check of images' stored depth and bands: 16-bit PNGs and multi-band TIFFs pass and are
reported (dtype, bands, a note on their normalisation), what semseg cannot read is a problem naming
its file, a data set of two depths is one problem, and a second check takes the headers from the cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from semseg.data import image_checks, image_headers
from semseg.data.inspection import inspect_folder
from tests.conftest import new_samples

SIZE = 16


def mask() -> np.ndarray:
    index = np.zeros((SIZE, SIZE), np.uint8)
    index[4:12, 4:12] = 1
    return index


def image(bands: int, dtype=np.uint16) -> np.ndarray:
    """A square on a background, bright in every band; H x W (x bands)."""
    deep = np.dtype(dtype).itemsize > 1
    pixels = np.full((SIZE, SIZE, bands), 1000 if deep else 30, dtype)
    pixels[4:12, 4:12] = 40000 if deep else 200
    return pixels[..., 0] if bands == 1 else pixels


def write_tiff(path: Path, pixels: np.ndarray, layout: str) -> None:
    """``layout``: "planar" (bands x H x W, planarconfig separate), "pages" (one band per page),
    or "contig" (H x W x bands)."""
    if layout == "planar":
        tifffile.imwrite(path, np.moveaxis(pixels, -1, 0), planarconfig="separate", photometric="minisblack")
    elif layout == "pages":
        with tifffile.TiffWriter(path) as tif:
            for band in np.moveaxis(pixels, -1, 0):
                tif.write(band, photometric="minisblack")
    else:
        tifffile.imwrite(path, pixels, photometric="minisblack" if pixels.ndim == 2 else None)


def make_set(root: Path, write, suffix: str = ".png") -> Path:
    """A data set of ``write(path, index)`` images (index over all splits) and 8-bit index masks."""
    for index, (split, i) in enumerate(new_samples(root, {"train": 3, "val": 2})):
        write(root / "images" / split / f"{split}{i}{suffix}", index)
        cv2.imwrite(str(root / "masks" / split / f"{split}{i}.png"), mask())
    return root


def inspect(root: Path, in_channels: int):
    return inspect_folder(root, num_classes=2, in_channels=in_channels)


def test_16_bit_grey_pngs_pass_without_a_depth_warning(tmp_path: Path):
    root = make_set(tmp_path, lambda path, _: cv2.imwrite(str(path), image(1)))
    report = inspect(root, in_channels=1)
    assert report.ok, report.problems
    assert not [w for w in report.warnings if "16-bit" in w or "8-bit" in w], report.warnings
    assert (report.image_dtype, report.image_bands) == ("uint16", 1)
    assert report.to_json()["images"] == {"dtype": "uint16", "bands": 1}
    assert "images: 16-bit, 1 band(s)" in report.summary()
    assert any("16-bit" in note and "normalised with the train split" in note for note in report.notes), report.notes


def test_8_bit_colour_pngs_are_reported_without_a_note(tmp_path: Path):
    root = make_set(tmp_path, lambda path, _: cv2.imwrite(str(path), image(3, np.uint8)))
    report = inspect(root, in_channels=3)
    assert report.ok and (report.image_dtype, report.image_bands) == ("uint8", 3)
    assert "images: 8-bit, 3 band(s)" in report.summary()
    assert not [note for note in report.notes if "normalised" in note]


def test_a_16_bit_rgb_png_is_uint16_by_its_png_header(tmp_path: Path):
    # Pillow reports this file as mode "RGB", as it does an 8-bit one.
    root = make_set(tmp_path, lambda path, _: cv2.imwrite(str(path), image(3)))
    report = inspect(root, in_channels=3)
    assert report.ok, report.problems
    assert (report.image_dtype, report.image_bands) == ("uint16", 3)


@pytest.mark.parametrize("layout", ["planar", "pages"])
def test_five_band_tiffs_pass_with_five_in_channels(tmp_path: Path, layout: str):
    root = make_set(tmp_path, lambda path, _: write_tiff(path, image(5), layout), suffix=".tif")
    report = inspect(root, in_channels=5)
    assert report.ok, report.problems
    assert (report.image_dtype, report.image_bands) == ("uint16", 5)
    assert "images: 16-bit, 5 band(s)" in report.summary()
    assert any("5 band(s)" in note for note in report.notes), report.notes


@pytest.mark.parametrize("layout", ["planar", "pages"])
def test_five_band_tiffs_are_a_problem_with_four_in_channels(tmp_path: Path, layout: str):
    root = make_set(tmp_path, lambda path, _: write_tiff(path, image(5), layout), suffix=".tif")
    report = inspect(root, in_channels=4)
    assert len(report.problems) == 5, report.problems  # one per image
    problem = report.problems[0]
    assert problem.file == str(root / "images" / "train" / "train0.tif")
    assert "5 band" in problem.problem and "in_channels=4" in problem.problem


def test_a_five_band_tiff_is_not_converted_to_colour(tmp_path: Path):
    # OpenCV would not read it, so it is not converted as 1- or 4-band TIFFs are: refused.
    root = make_set(tmp_path, lambda path, _: write_tiff(path, image(5), "planar"), suffix=".tif")
    report = inspect(root, in_channels=3)
    assert len(report.problems) == 5 and not report.warnings, report.problems


def test_a_float32_tiff_is_a_problem_with_the_fix(tmp_path: Path):
    def write(path: Path, index: int) -> None:
        write_tiff(path, image(1, np.float32) if index == 1 else image(1), "contig")

    root = make_set(tmp_path, write, suffix=".tif")
    report = inspect(root, in_channels=1)
    float_file = str(root / "images" / "train" / "train1.tif")
    depth = [p for p in report.problems if p.file == float_file]
    assert len(depth) == 1 and "float32" in depth[0].problem, report.problems
    assert "16-bit" in depth[0].fix


def test_a_set_of_two_depths_is_one_problem_naming_an_example_of_each(tmp_path: Path):
    def write(path: Path, index: int) -> None:
        cv2.imwrite(str(path), image(1, np.uint8) if index % 2 else image(1))

    root = make_set(tmp_path, write)
    report = inspect(root, in_channels=1)
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    # The first image of each depth, with its type.
    assert (
        problem.file
        == f"{root / 'images' / 'train' / 'train0.png'} (uint16), {root / 'images' / 'train' / 'train1.png'} (uint8)"
    )
    assert "more than one depth" in problem.problem
    assert "one depth" in problem.fix
    assert report.image_dtype is None and report.image_bands == 1


def test_a_tiff_cut_short_is_a_problem(tmp_path: Path):
    root = make_set(tmp_path, lambda path, _: write_tiff(path, image(5), "planar"), suffix=".tif")
    cut = root / "images" / "val" / "val1.tif"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    report = inspect(root, in_channels=5)
    assert [p.file for p in report.problems] == [str(cut)], report.problems
    assert "truncated" in report.problems[0].problem


def test_a_second_check_reads_the_headers_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = make_set(tmp_path, lambda path, _: write_tiff(path, image(5), "pages"), suffix=".tif")
    first = inspect(root, in_channels=5)

    def fail(*args, **kwargs):
        raise AssertionError("a TIFF was opened although its header is cached")

    monkeypatch.setattr(image_headers.tifffile, "TiffFile", fail)
    monkeypatch.setattr(image_checks, "read_header", fail)
    second = inspect(root, in_channels=5)
    assert second.ok and first.ok
    assert (second.image_dtype, second.image_bands) == (first.image_dtype, first.image_bands) == ("uint16", 5)
