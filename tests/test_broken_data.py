"""Broken data sets, one per way a folder goes wrong (issue 8): training refuses each at start-up,
before any training work, with one error that names the file and its fix; the command line prints it
without a traceback. Odd but readable data (RGBA images, 16-bit masks of class indices) trains,
and the conversion is said at start-up, never silent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pytest

from semseg.data import SegmentationDataModule
from semseg.data.reading import read_mask
from semseg.data.synthetic import SyntheticSpec, generate
from semseg.errors import DataError
from semseg.training.train import train

# A small good data set to break: 4 train and 2 val pairs of 32x32 RGB images with 5 classes
# (background, disk, square, triangle, speck), no test split.
SPEC = SyntheticSpec(4, 2, 0, image_size=32, seed=3)
NUM_CLASSES = 5
FOLDER = ("data=folder", f"data.num_classes={NUM_CLASSES}")


def _pair(root: Path, split: str = "train", index: int = 1) -> tuple[Path, Path]:
    name = f"{split}_{index:05d}.png"
    return root / "images" / split / name, root / "masks" / split / name


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def image_without_mask(root: Path) -> Path:
    image, mask = _pair(root)
    mask.unlink()
    return image


def mask_without_image(root: Path) -> Path:
    image, mask = _pair(root, "val", 0)
    image.unlink()
    return mask


def size_mismatch(root: Path) -> Path:
    mask = _pair(root)[1]
    cv2.imwrite(str(mask), _read(mask)[:24])  # 32x24 beside its 32x32 image
    return mask


def unreadable_image(root: Path) -> Path:
    image = _pair(root)[0]
    image.write_bytes(b"not an image at all " * 8)
    return image


def truncated_image(root: Path) -> Path:
    return _cut_in_half(_pair(root)[0])


def truncated_jpeg_image(root: Path) -> Path:
    # OpenCV decodes a JPEG cut short into a grey-filled image without an error: a silent wrong read.
    png = _pair(root)[0]
    jpeg = png.with_suffix(".jpg")
    cv2.imwrite(str(jpeg), _read(png))
    png.unlink()
    return _cut_in_half(jpeg)


def truncated_mask(root: Path) -> Path:
    return _cut_in_half(_pair(root)[1])


def empty_split(root: Path) -> Path:
    for folder in ("images", "masks"):
        for path in (root / folder / "train").iterdir():
            path.unlink()
    return root / "images" / "train"


def mask_0_255(root: Path) -> Path:
    """Every mask binary, stored as 0/255 (as many tools save them), and no label_map."""
    for mask in sorted((root / "masks").glob("*/*.png")):
        cv2.imwrite(str(mask), np.where(_read(mask) > 0, 255, 0).astype(np.uint8))
    return _pair(root, index=0)[1]  # the first problem listed


def rgb_colour_mask(root: Path) -> Path:
    mask = _pair(root)[1]
    colours = np.array([(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)], np.uint8)
    cv2.imwrite(str(mask), colours[_read(mask)][..., ::-1])  # each class its VOC colour, RGB -> BGR
    return mask


def mask_16bit_beyond_classes(root: Path) -> Path:
    """A 16-bit mask holding an id (1000) that no num_classes can reach."""
    mask = _pair(root)[1]
    stored = _read(mask).astype(np.uint16)
    stored[:4, :4] = 1000
    cv2.imwrite(str(mask), stored)
    return mask


def num_classes_too_small(root: Path) -> Path:
    """The data are good; data.num_classes=3 (see CASES) is not: the first mask with class 3 or 4."""
    return next(m for m in sorted((root / "masks" / "train").iterdir()) if _read(m).max() >= 3)


def mask_16bit(root: Path) -> Path:
    """Class indices stored as 16-bit PNG: read exactly as stored, so accepted."""
    mask = _pair(root)[1]
    cv2.imwrite(str(mask), _read(mask).astype(np.uint16))
    return mask


def rgba_image(root: Path) -> Path:
    """A 4-channel image with data.in_channels=3: its colour channels are read, its alpha dropped."""
    image = _pair(root)[0]
    bgr = _read(image)
    cv2.imwrite(str(image), np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)]))
    return image


class Case(NamedTuple):
    breaks: Callable[[Path], Path]  # breaks a good data set; returns the file the error must name
    says: str  # what the error must say of that file: the fix, and the problem where the fix is generic
    overrides: tuple[str, ...] = ()  # config that makes the case (the data alone are fine)


TRUNCATED = "file ends before its image data does (an interrupted copy?). Fix: copy or re-export the image again"
CASES = {
    case.breaks.__name__: case
    for case in (
        Case(image_without_mask, "has no mask in {root}/masks/train. Fix: add train_00001.png there or remove"),
        Case(mask_without_image, "has no image in {root}/images/val. Fix: add its image or remove the mask."),
        Case(size_mismatch, "is 32x24 but its image is 32x32 (WxH). Fix: re-export the mask at its image's size"),
        Case(unreadable_image, "cannot be read (truncated, empty or not an image). Fix: re-export or remove the"),
        Case(truncated_image, f"is truncated: the PNG {TRUNCATED}"),
        Case(truncated_jpeg_image, f"is truncated: the JPEG {TRUNCATED}"),
        Case(truncated_mask, "cannot be read (truncated, empty or not an image). Fix: re-export the mask, or"),
        Case(empty_split, "holds no images. Fix: add .png, .jpg"),
        Case(mask_0_255, "Fix: 0/255 masks: set data.label_map={0: 0, 255: 1}", ("data.num_classes=2",)),
        Case(rgb_colour_mask, "data.label_map maps no colours. Fix: map each colour to its class (index or name)"),
        Case(
            mask_16bit_beyond_classes,
            "holds values [1000] that are not classes 0..4. Fix: set data.ignore_index=1000 if it marks pixels to "
            "skip, or map every stored value to its class with data.label_map (e.g. {0: 0, 1000: 1})",
        ),
        Case(
            num_classes_too_small,
            "that are not classes 0..2. Fix: raise data.num_classes to 5 (the masks hold values up to 4)",
            ("data.num_classes=3",),
        ),
    )
}
ACCEPTED = {"mask_16bit": mask_16bit, "rgba_image": rgba_image}


def make_broken(root: Path, case: str) -> Path:
    """Generates the good data set at ``root`` and breaks it the one way ``case`` names; returns the
    offending file (or folder)."""
    generate(root, SPEC)
    breaks = CASES[case].breaks if case in CASES else ACCEPTED[case]
    return breaks(root)


def assert_nothing_trained(run: Path) -> None:
    # data_report.json is written once the data check passes: its absence says the run stopped there.
    assert not list(run.rglob("*.ckpt")) and not list(run.rglob("metrics.json"))
    assert not list(run.rglob("data_report.json"))


@pytest.mark.parametrize("case", CASES)
def test_training_refuses_broken_data_at_start_up_naming_the_file_and_the_fix(make_cfg, tmp_path: Path, case: str):
    offending = make_broken(tmp_path / "data", case)
    cfg = make_cfg(*FOLDER, *CASES[case].overrides, root=tmp_path / "data")
    with pytest.raises(DataError) as error:
        train(cfg)
    message = str(error.value)
    assert "nothing was trained" in message
    says = CASES[case].says.replace("{root}", str(tmp_path / "data"))
    # One line per problem, "  <file>: <problem> Fix: <fix>": the offending file's line must say it.
    line = next((line for line in message.splitlines() if line.startswith(f"  {offending}: ")), "")
    assert says in line, message
    assert_nothing_trained(Path(cfg.output_dir))


class Checked(Exception):
    """Raised where train() would build the model: the data check passed."""


def check_only(cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs train(cfg) up to and including its data check, not the (slower) fit."""

    def stop(*args, **kwargs):
        raise Checked

    monkeypatch.setattr("semseg.builders.build_module", stop)
    with pytest.raises(Checked):
        train(cfg)


def first_train_sample(root: Path) -> dict:
    """Train pair 1 (the one ACCEPTED changes) as the data module gives it, pixel values unscaled."""
    dm = SegmentationDataModule(str(root), num_classes=NUM_CLASSES, num_workers=0, augment=None)
    dm.setup("fit")
    return dm.datasets["train"][1]


def test_rgba_images_are_read_without_their_alpha_and_said_so(make_cfg, tmp_path, caplog, monkeypatch):
    # Refusing would make every exported-with-alpha PNG set unusable; dropping alpha keeps the
    # stored colours exactly, and the start-up warning says it happened.
    image = make_broken(tmp_path / "data", "rgba_image")
    with caplog.at_level(logging.WARNING, logger="semseg.data.inspection"):
        check_only(make_cfg(*FOLDER, root=tmp_path / "data"), monkeypatch)
    expected = f"data: 1 RGBA images lose their alpha channel (data.in_channels=3), e.g. {image}"
    assert expected in caplog.messages, caplog.messages
    rgb = _read(image)[..., 2::-1].transpose(2, 0, 1)  # BGRA as stored -> RGB, channels first
    assert np.allclose(first_train_sample(tmp_path / "data")["image"].numpy(), rgb, atol=1e-3)


def test_under_ddp_only_rank_0_says_the_findings(make_cfg, tmp_path, caplog, monkeypatch):
    # Every rank checks the data (a rank must not train on what rank 0 refused), but the warning
    # is said once, not once per process.
    make_broken(tmp_path / "data", "rgba_image")
    monkeypatch.setattr("semseg.training.train.rank_zero_only.rank", 1)
    with caplog.at_level(logging.INFO, logger="semseg"):
        check_only(make_cfg(*FOLDER, root=tmp_path / "data"), monkeypatch)
    assert not [m for m in caplog.messages if m.startswith("data:")], caplog.messages
    assert any(m.startswith("rank 1: config digest") for m in caplog.messages)  # each rank's own line stays


def test_16_bit_masks_of_class_indices_are_read_as_stored(make_cfg, tmp_path, caplog, monkeypatch):
    # A 16-bit PNG of class indices holds the same information as an 8-bit one: accepted. Its
    # broken form, values beyond any class, is mask_16bit_beyond_classes in CASES.
    mask = make_broken(tmp_path / "data", "mask_16bit")
    assert read_mask(mask).dtype == np.uint16
    with caplog.at_level(logging.WARNING, logger="semseg.data.inspection"):
        check_only(make_cfg(*FOLDER, root=tmp_path / "data"), monkeypatch)
    assert not [m for m in caplog.messages if "16-bit" in m]
    assert np.array_equal(first_train_sample(tmp_path / "data")["mask"].numpy(), read_mask(mask))


def test_a_script_prints_the_problem_without_a_traceback(make_cfg, tmp_path: Path, entry_point, capsys):
    offending = make_broken(tmp_path / "data", "truncated_image")
    cfg = make_cfg(*FOLDER, root=tmp_path / "data")
    with pytest.raises(SystemExit) as exited:
        entry_point(train)(cfg)  # as scripts/train.py runs it
    message = capsys.readouterr().err
    assert exited.value.code == 2, message
    assert f"{offending}: is truncated" in message and "Fix: copy or re-export the image" in message
    assert "Traceback" not in message
    assert_nothing_trained(Path(cfg.output_dir))
