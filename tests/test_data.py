"""The data module: pairing, label_map, ignore_index, aligned augmentations, clear errors."""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from semseg.data import SegmentationDataModule
from semseg.data.batch import MASK_PAD_CODE, BatchPreparer
from semseg.data.pairing import list_pairs
from semseg.data.samples import FileSamples
from semseg.data.synthetic import CLASS_NAMES, SyntheticSpec, generate
from semseg.data.transforms import augment_preset, build_transforms
from semseg.errors import DataError
from tests.conftest import CONF_DIR


def write_pair(
    root: Path, split: str, stem: str, image: np.ndarray, mask: np.ndarray | None, image_ext: str = ".png"
) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / split / f"{stem}{image_ext}"), image)
    if mask is not None:
        cv2.imwrite(str(root / "masks" / split / f"{stem}.png"), mask)


def binary_folder(root: Path, stored_values: tuple[int, int] = (0, 255), size: int = 32) -> Path:
    """Gray images whose mask is the bright square, stored with the given two values."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            image = rng.integers(0, 60, (size, size), dtype=np.uint8)
            mask = np.full((size, size), stored_values[0], np.uint8)
            image[8:20, 10:24] = 220
            mask[8:20, 10:24] = stored_values[1]
            write_pair(root, split, f"{split}{i}", image, mask)
    return root


def datamodule(root: Path, **kwargs) -> SegmentationDataModule:
    args = {
        "num_classes": 2,
        "in_channels": 1,
        "num_workers": 0,
        "batch_size": 2,
        "augment": None,
    } | kwargs
    dm = SegmentationDataModule(str(root), **args)
    dm.setup("fit")
    return dm


def targets(dm: SegmentationDataModule, batch: dict) -> torch.Tensor:
    """A batch's masks as the loss sees them (int64, ignore_index where ignored), after the
    module's preparation on the device."""
    return BatchPreparer([0.0], [1.0], dm.ignore_index)({"image": batch["image"], "mask": batch["mask"]})["mask"]


def test_pairs_are_matched_by_stem_across_extensions(tmp_path: Path):
    image = np.zeros((8, 8, 3), np.uint8)
    write_pair(tmp_path, "train", "b", image, np.zeros((8, 8), np.uint8), image_ext=".jpg")
    write_pair(tmp_path, "train", "a", image, np.zeros((8, 8), np.uint8), image_ext=".tif")
    pairs = list_pairs(tmp_path, "train")
    assert [(p.name, m.name) for p, m in pairs] == [("a.tif", "a.png"), ("b.jpg", "b.png")]


def test_image_without_mask_names_the_file(tmp_path: Path):
    write_pair(tmp_path, "train", "ok", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    write_pair(tmp_path, "train", "lonely", np.zeros((8, 8), np.uint8), None)
    with pytest.raises(DataError, match=r"lonely\.png: has no mask"):
        list_pairs(tmp_path, "train")


def test_missing_split_folder_says_what_the_layout_must_be(tmp_path: Path):
    with pytest.raises(DataError, match=r"images/\{train,val,test\}"):
        list_pairs(tmp_path, "train")


def test_empty_split_is_an_error(tmp_path: Path):
    (tmp_path / "images" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        list_pairs(tmp_path, "val")


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_zero_255_masks_without_label_map_are_refused_with_the_fix(tmp_path: Path, cache: str):
    with pytest.raises(DataError, match=r"train0\.png: mask values \[255\].*data\.label_map"):
        datamodule(binary_folder(tmp_path), cache=cache).datasets["train"][0]


def test_label_map_turns_stored_values_into_classes(tmp_path: Path):
    dm = datamodule(binary_folder(tmp_path), label_map={0: 0, 255: 1})
    sample = dm.datasets["val"][0]
    assert sample["mask"].dtype == sample["image"].dtype == torch.uint8  # as stored, until the device
    assert sample["mask"].unique().tolist() == [0, 1]
    assert int((sample["mask"] == 1).sum()) == 12 * 14
    # The mask's square is where the image is bright.
    assert torch.equal(sample["mask"] == 1, sample["image"][0] > 128)


@pytest.mark.parametrize("ignore_index", [255, 11])
def test_stored_ignore_value_reaches_the_target_as_ignore_index(tmp_path: Path, ignore_index: int):
    dm = datamodule(binary_folder(tmp_path, stored_values=(1, ignore_index)), ignore_index=ignore_index)
    batch = next(iter(dm.val_dataloader()))
    assert set(batch["mask"].unique().tolist()) == {1, MASK_PAD_CODE}  # the loader's uint8 code
    assert set(targets(dm, batch).unique().tolist()) == {1, ignore_index}


def test_label_map_can_send_a_value_to_ignore(tmp_path: Path):
    dm = datamodule(binary_folder(tmp_path, stored_values=(0, 128)), label_map={0: 0, 128: -1}, ignore_index=-1)
    assert set(targets(dm, next(iter(dm.val_dataloader()))).unique().tolist()) == {0, -1}


def test_colour_mask_is_refused(tmp_path: Path):
    write_pair(tmp_path, "train", "x", np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8))
    write_pair(tmp_path, "val", "y", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"x\.png: mask has 3 channels"):
        datamodule(tmp_path).datasets["train"][0]


def test_size_mismatch_names_both_files(tmp_path: Path):
    write_pair(tmp_path, "train", "x", np.zeros((8, 8), np.uint8), np.zeros((8, 6), np.uint8))
    write_pair(tmp_path, "val", "y", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"x\.png: mask is 6x8 but its image x\.png is 8x8"):
        datamodule(tmp_path).datasets["train"][0]


def test_unreadable_image_is_named(tmp_path: Path):
    write_pair(tmp_path, "train", "x", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    (tmp_path / "images" / "train" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_pair(tmp_path, "val", "y", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"x\.png: cannot read this image"):
        datamodule(tmp_path).datasets["train"][0]


AUGMENT_PRESETS = sorted(path.stem for path in (CONF_DIR / "augment").glob("*.yaml"))


def _boxes_image() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((40, 56, 3), np.uint8)
    image[5:17, 9:30] = 200
    image[25:35, 40:52] = 120
    mask = (image[..., 0] // 100).astype(np.uint8)  # 0 background, 1 the dim box, 2 the bright box
    return image, mask


def _assert_aligned(img: np.ndarray, msk: np.ndarray) -> None:
    # Linear interpolation blends the image at edges; where a pixel's 3x3 neighbourhood is flat,
    # its value says the class, and the mask there must agree: the classes' values do not overlap
    # and keep their order (a colour jitter moves every value alike).
    kernel = np.ones((3, 3), np.uint8)
    flat = (cv2.dilate(img, kernel) - cv2.erode(img, kernel)) < 1
    judged = flat & (msk != MASK_PAD_CODE)
    assert judged.sum() > 100
    assert set(np.unique(msk)) <= {0, 1, 2, MASK_PAD_CODE}  # nearest-neighbour: no new values
    present = [c for c in (0, 1, 2) if (judged & (msk == c)).sum() > 5]
    for low, high in itertools.pairwise(present):
        # 0.1% of judged pixels may sit on a one-pixel sliver where both sides look flat.
        assert np.quantile(img[judged & (msk == low)], 0.999) < np.quantile(img[judged & (msk == high)], 0.001)


@pytest.mark.parametrize("preset", ["custom", *AUGMENT_PRESETS])
def test_augmentations_move_image_and_mask_together(preset: str):
    image, mask = _boxes_image()
    augment = augment_preset(preset) if preset != "custom" else [
        {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
        {"_target_": "albumentations.RandomRotate90", "p": 0.5},
        {"_target_": "albumentations.Affine", "rotate": [-30, 30], "scale": [0.8, 1.2], "p": 1.0},
    ]  # fmt: skip
    transform = build_transforms(train=True, crop_size=[32, 32], augment=augment, seed=0)
    for _ in range(30):
        out = transform(image=image, mask=mask)
        _assert_aligned(out["image"][0].numpy(), out["mask"].numpy())


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_augment_presets_keep_each_sample_shape(preset: str):
    image, mask = _boxes_image()  # 40x56: a 90-degree turn would make it 56x40
    transform = build_transforms(train=True, augment=augment_preset(preset), seed=0)
    for _ in range(30):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (3, 40, 56) and out["mask"].shape == (40, 56)
        _assert_aligned(out["image"][0].numpy(), out["mask"].numpy())


def test_rotations_turn_square_samples_by_90_degrees():
    image, mask = _boxes_image()
    image, mask = image[:40, :40], mask[:40, :40]
    transform = build_transforms(train=True, augment=augment_preset("rotations"), seed=0)
    turned = [np.rot90(mask, k) for k in (1, 3)]
    outs = [transform(image=image, mask=mask)["mask"].numpy() for _ in range(40)]
    assert any(np.array_equal(out, t) for out in outs for t in turned)


def test_data_augment_takes_a_preset_name_too():
    named = build_transforms(train=True, augment="street", seed=0)
    listed = build_transforms(train=True, augment=augment_preset("street"), seed=0)
    assert [type(t).__name__ for t in named.transforms] == [type(t).__name__ for t in listed.transforms]
    with pytest.raises(DataError, match=r"data.augment=sideways: no such augment preset \(presets: elastic, hflip"):
        build_transforms(train=True, augment="sideways")


def test_a_shape_turning_augmentation_on_non_square_samples_says_what_it_costs(caplog):
    turning = [{"_target_": "albumentations.RandomRotate90", "p": 0.5}]
    with caplog.at_level(logging.WARNING, logger="semseg.data.transforms"):
        build_transforms(train=True, crop_size=[32, 32], augment=turning)
        assert not caplog.records  # square crops: nothing changes shape
        build_transforms(train=True, augment=turning, image_size=[192, 256])
    assert "RandomRotate90 turns non-square samples on their side" in caplog.text
    assert "augment=rotations" in caplog.text


def test_crop_padding_fills_masks_with_the_ignore_code_never_a_class():
    transform = build_transforms(train=True, crop_size=[48, 48])
    out = transform(image=np.full((20, 20, 3), 7, np.uint8), mask=np.zeros((20, 20), np.uint8))
    values, counts = np.unique(out["mask"], return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {0: 400, MASK_PAD_CODE: 48 * 48 - 400}


def test_linear_mask_interpolation_is_refused():
    augment = [{"_target_": "albumentations.Affine", "mask_interpolation": 1}]
    with pytest.raises(DataError, match="mask_interpolation"):
        build_transforms(train=True, augment=augment)


def test_batches_of_different_sizes_are_padded_with_ignore(tmp_path: Path):
    for stem, size in (("a", (32, 40)), ("b", (24, 32))):
        write_pair(tmp_path, "train", stem, np.zeros(size, np.uint8), np.ones(size, np.uint8))
        write_pair(tmp_path, "val", stem, np.zeros(size, np.uint8), np.ones(size, np.uint8))
    dm = datamodule(tmp_path, ignore_index=9)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 40)
    mask = targets(dm, batch)
    assert mask[1, 24:].eq(9).all() and mask[1, :, 32:].eq(9).all()
    assert mask[1, :24, :32].eq(1).all()


def test_without_cache_the_dataset_is_lazy(tiny_root: Path):
    dm = SegmentationDataModule(str(tiny_root), num_classes=5, num_workers=0, cache="off")
    dm.setup("fit")
    # Only paths are held: no decoded image lives on the dataset.
    assert isinstance(dm.datasets["train"].source, FileSamples)


def test_synthetic_data_is_deterministic_with_a_rare_class(tmp_path: Path):
    spec = SyntheticSpec(6, 2, 0, image_size=48, seed=4)
    a, b = generate(tmp_path / "a", spec), generate(tmp_path / "b", spec)
    for path in (a / "masks" / "train").iterdir():
        assert path.read_bytes() == (b / "masks" / "train" / path.name).read_bytes()
        assert (a / "images" / "train" / path.name).read_bytes() == (b / "images" / "train" / path.name).read_bytes()
    masks = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (a / "masks" / "train").iterdir()])
    share = np.bincount(masks.ravel(), minlength=5) / masks.size
    assert 0.002 < share[4] < 0.03  # 'speck': the rare class
    assert share[0] > 0.6
    with pytest.raises(DataError, match=r"not the generated data set for .*another spec"):
        generate(a, SyntheticSpec(6, 2, 0, image_size=48, seed=5))


def test_the_synthetic_config_is_the_generators_one_source():
    """conf/data/synthetic.yaml gives every SyntheticSpec field (none has a default) and the classes."""
    data = OmegaConf.load(CONF_DIR / "data" / "synthetic.yaml")
    assert asdict(SyntheticSpec(**data.synthetic)) == data.synthetic
    assert list(CLASS_NAMES) == list(data.class_names) and len(CLASS_NAMES) == data.num_classes


ISBI_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_membrane"


@pytest.mark.skipif(not ISBI_ROOT.is_dir(), reason="the ISBI data set lies beside the checkout in ../shared")
def test_isbi_config_reads_membranes_as_the_minority_class():
    from tests.conftest import compose_cfg

    data = compose_cfg(["data=isbi_membrane", f"data.root={ISBI_ROOT}"]).data
    dm = SegmentationDataModule(
        data.root,
        num_classes=data.num_classes,
        label_map=data.label_map,
        in_channels=data.in_channels,
        num_workers=0,
        augment=None,
    )
    dm.setup("validate")
    sample = dm.datasets["val"][0]
    assert sample["image"].shape == (1, 512, 512)
    membrane = (sample["mask"] == 1).float().mean().item()
    assert sample["mask"].unique().tolist() == [0, 1]
    assert 0.1 < membrane < 0.35  # README: about 20% membrane in the validation slices
    assert not dm.has_test_split  # its test images have no masks


def test_augmentations_depend_on_seed_epoch_and_sample_only(tmp_path: Path):
    root = binary_folder(tmp_path, stored_values=(0, 1))
    augment = [{"_target_": "albumentations.RandomRotate90", "p": 1.0}]

    def epochs(seed: int, workers: int) -> list[dict[str, str]]:
        """Each epoch's masks by file name, as the loader hands them out."""
        loader = datamodule(root, seed=seed, augment=augment, num_workers=workers, batch_size=1).train_dataloader()
        seen = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)  # as Lightning does before every epoch
            seen.append({b["name"][0]: b["mask"].numpy().tobytes().hex() for b in loader})
        return seen

    torch.manual_seed(0)
    first = epochs(seed=3, workers=2)
    torch.manual_seed(1)  # the global seed plays no part
    # Whichever worker (or none) reads a sample, in whatever order: the same augmentation.
    assert epochs(seed=3, workers=0) == first
    assert first[0] != first[1]  # a new epoch, new augmentations
    # The 4 train masks are alike, so samples augmented from one random state would often match:
    # each sample draws its own.
    assert len(set(first[0].values())) > 1
    assert epochs(seed=4, workers=0) != first
