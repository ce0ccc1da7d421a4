"""data.sampler=rare_class: the class probabilities, the draws (by seed, epoch and rank), the data
set's keys and crops, the counts from the start-up inspection, and a training with it."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from semseg.builders import build_run
from semseg.data import SegmentationDataModule, mask_stats
from semseg.data.inspection import inspect_data
from semseg.data.rare_class import (
    RareClassDraw,
    RareClassSampler,
    RareClassSettings,
    class_draw_probabilities,
    crop_around_class,
    sampler_settings,
    training_input_size,
)
from semseg.errors import ConfigError
from semseg.training.train import train
from tests.conftest import compose_cfg

# Four classes over six images: class 3 is rare (10 pixels in one image).
PIXELS = np.array(
    [
        [900, 100, 0, 0],
        [800, 150, 50, 0],
        [950, 0, 50, 0],
        [700, 200, 100, 0],
        [990, 0, 0, 10],
        [1000, 0, 0, 0],
    ]
)


def settings(temperature: float = 0.01, min_pixels: int = 1, crop=None) -> RareClassSettings:
    return RareClassSettings(temperature, min_pixels, crop)


@pytest.mark.parametrize("temperature", [0.01, 0.5, 3.0])
def test_class_probabilities_follow_the_formula(temperature: float):
    frequency = PIXELS.sum(axis=0) / PIXELS.sum()
    weights = [math.exp((1 - f) / temperature) for f in frequency]
    expected = [w / sum(weights) for w in weights]
    assert class_draw_probabilities(PIXELS, settings(temperature)) == pytest.approx(expected, rel=1e-12, abs=0)
    # min_pixels=20: no image holds 20 pixels of class 3, which is then never drawn; the others share
    # the softmax with their frequencies unchanged (f_c stays a share of all the pixels).
    drawable = weights[:3]
    expected = [w / sum(drawable) for w in drawable] + [0.0]
    assert class_draw_probabilities(PIXELS, settings(temperature, 20)) == pytest.approx(expected, rel=1e-12, abs=0)


def test_many_draws_match_the_class_and_image_probabilities():
    """One epoch of 30 000 draws over the six images tiled 5 000 times: the share of each class and
    of each of the six images within 5 standard deviations of the formula's (a fixed seed: the
    same draws every time; 5 sigma: the test survives another generator too)."""
    copies, temperature = 5000, 0.3
    pixels = np.tile(PIXELS, (copies, 1))
    sampler = RareClassSampler(range(len(pixels)), pixels, settings(temperature), seed=7)
    draws = list(sampler)
    assert len(draws) == len(pixels)  # the plain shuffle's epoch length
    classes = np.bincount([d.cls for d in draws], minlength=4) / len(draws)
    images = np.bincount([d.index % len(PIXELS) for d in draws], minlength=len(PIXELS)) / len(draws)
    p = class_draw_probabilities(PIXELS, settings(temperature))
    holds = PIXELS > 0
    # An image is drawn through each class it holds: P(class) / (images holding the class).
    expected_images = (holds * p / holds.sum(axis=0)).sum(axis=1)
    assert all(holds[d.index % len(PIXELS), d.cls] for d in draws)
    for observed, expected in ((classes, p), (images, expected_images)):
        tolerance = 5 * np.sqrt(expected * (1 - expected) / len(draws)) + 1e-12
        assert np.all(np.abs(observed - expected) <= tolerance), (observed, expected)


def test_draws_depend_on_seed_epoch_and_rank_only():
    pixels = np.random.default_rng(0).integers(0, 50, size=(10, 4))

    def draws(epoch: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> list[RareClassDraw]:
        sampler = RareClassSampler(range(10), pixels, settings(0.5), seed, num_replicas, rank)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draws(3) == draws(3) and {d.epoch for d in draws(3)} == {3}
    assert draws(3) != draws(4) and draws(3) != draws(3, seed=1)
    rank_0, rank_1 = draws(3, num_replicas=2), draws(3, num_replicas=2, rank=1)
    assert len(rank_0) == len(rank_1) == 5 and rank_0 != rank_1
    assert not {d.position for d in rank_0} & {d.position for d in rank_1}  # every draw its own seed
    # As a resumed run: the epoch comes from the trainer when the iteration starts.
    resumed = RareClassSampler(range(10), pixels, settings(0.5), 0, epoch_source=lambda: 3)
    assert list(resumed) == draws(3) and resumed.iterated_epoch == 3


def rare_datamodule(root: Path, augment=None, crop=None) -> SegmentationDataModule:
    """The tiny set's data module drawing by class, with the inspection's counts (as training)."""
    report = inspect_data({"root": str(root), "num_classes": 5})
    dm = SegmentationDataModule(
        str(root),
        num_classes=5,
        batch_size=1,
        num_workers=0,
        augment=augment,
        sampler="rare_class",
        rare_class={"temperature": 0.01, "min_pixels": 1, "crop": crop},
        seed=0,
        train_class_pixels=report.splits["train"].image_class_pixels,
    )
    dm.setup("fit")
    return dm


def test_an_image_drawn_twice_in_an_epoch_is_augmented_differently(tiny_root: Path):
    dm = rare_datamodule(tiny_root, augment=[{"_target_": "albumentations.RandomBrightnessContrast", "p": 1.0}])
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RareClassSampler)
    repeats = 0
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        seen: dict[str, list[bytes]] = {}
        for batch in loader:
            seen.setdefault(batch["name"][0], []).append(batch["image"].numpy().tobytes())
        assert sum(map(len, seen.values())) == 8  # an epoch as long as the split
        for images in seen.values():
            assert len(set(images)) == len(images)
            repeats += len(images) - 1
    assert repeats  # 8 draws among the speck's 7 images: some image comes twice
    dataset, draw = dm.datasets["train"], RareClassDraw(2, 0, 5, 4)
    assert np.array_equal(dataset[draw]["image"], dataset[draw]["image"])  # one key, one augmentation


def test_the_crop_centres_a_pixel_of_the_drawn_class():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[30, 40] = 3
    cropped, window = crop_around_class(image, mask, 3, (16, 16), rng)
    assert window.shape == (16, 16) and window[8, 8] == 3 and window.sum() == 3
    assert np.array_equal(cropped, image[22:38, 32:48])
    mask[:] = 0
    mask[2, 60] = 3  # near a corner: the window stays inside, the pixel as near its centre as that allows
    _, window = crop_around_class(image, mask, 3, (16, 16), rng)
    assert window[2, 12] == 3
    _, window = crop_around_class(image, mask, 3, (100, 16), rng)  # taller than the image: kept whole
    assert window.shape == (64, 16) and window[2, 12] == 3
    planes = np.zeros((64, 64, 2), np.uint8)  # a multi-label mask: the class is a plane
    planes[10, 20, 1] = 1
    _, window = crop_around_class(image, planes, 1, (8, 8), rng)
    assert window.shape == (8, 8, 2) and window[4, 4, 1] == 1
    mask = np.zeros((64, 64), np.uint8)  # many pixels, none near a border: each crop centres one of them
    mask[4:-4, 4:-4] = rng.random((56, 56)) < 0.05
    centres = [crop_around_class(image, mask, 1, (9, 9), rng)[1][4, 4] for _ in range(20)]
    assert centres == [1] * 20


def test_drawn_samples_are_cropped_around_their_class(tiny_root: Path):
    dm = rare_datamodule(tiny_root, crop=[16, 16])
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(0)
    for draw in sampler:
        sample = dm.datasets["train"][draw]
        assert sample["image"].shape == (3, 16, 16) and sample["mask"].shape == (16, 16)
        assert (sample["mask"] == draw.cls).any()


def test_start_up_counts_come_from_the_cache_and_are_said(make_cfg, tiny_root: Path, monkeypatch, caplog):
    cfg = make_cfg("data.sampler=rare_class")
    inspect_data(OmegaConf.to_container(cfg.data))  # the cache warm, as after any earlier run
    reads = []
    monkeypatch.setattr(mask_stats, "summarize_mask", lambda path: reads.append(path))
    with caplog.at_level(logging.INFO, logger="semseg.builders"):
        report, _, dm = build_run(cfg, seed=0)
    assert reads == []
    # Each mask's own counts, under its own name (the data module matches them to its samples by path).
    counted = {path.name: pixels.tolist() for path, pixels in dm.train_class_pixels.items()}
    read = {
        path.name: np.bincount(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ravel(), minlength=5).tolist()
        for path in (tiny_root / "masks" / "train").iterdir()
    }
    assert counted == read
    probabilities = report.rare_class_sampling["class_probabilities"]
    assert sum(probabilities.values()) == pytest.approx(1.0)
    lines = [m for m in caplog.messages if "class draw probabilities" in m]
    assert len(lines) == 1 and "speck 0.6997" in lines[0], caplog.messages


def test_a_training_draws_by_class_and_reports_the_probabilities(make_cfg, monkeypatch):
    cfg = make_cfg("data.sampler=rare_class", "data.rare_class.crop=[16,16]", "run_test=false")
    epochs = []
    original = RareClassSampler.__iter__
    monkeypatch.setattr(RareClassSampler, "__iter__", lambda self: epochs.append(self.epoch) or original(self))
    metrics = train(cfg)
    assert epochs == [0] and "val/miou" in metrics
    report = json.loads((Path(cfg.output_dir) / "data_report.json").read_text())
    drawn = report["rare_class_sampling"]
    assert drawn["crop"] == [16, 16] and drawn["temperature"] == 0.01
    assert drawn["class_images"]["speck"] == 7 and sum(drawn["class_probabilities"].values()) == pytest.approx(1)
    # The tiny set's 32x32 images cut to the class window: GFLOPs are counted at what trains.
    assert json.loads((Path(cfg.output_dir) / "run_info.json").read_text())["gflops_input"] == [16, 16]


DEFAULTS = {"temperature": 0.01, "min_pixels": 1, "crop": None}


@pytest.mark.parametrize(
    ("sampler", "rare_class", "message"),
    [
        ("rarest", DEFAULTS, r"^data.sampler=rarest: choose null \(every image once an epoch\) or rare_class.$"),
        ("rare_class", {**DEFAULTS, "temperature": 0}, r"^data.rare_class.temperature=0: a number > 0"),
        ("rare_class", {**DEFAULTS, "temperature": -1.0}, r"^data.rare_class.temperature=-1.0: a number > 0"),
        ("rare_class", {**DEFAULTS, "min_pixels": 0}, r"^data.rare_class.min_pixels=0: a whole number >= 1.$"),
        ("rare_class", {**DEFAULTS, "crop": [16]}, r"^data.rare_class.crop=\[16\]: null or \[height, width\]"),
        ("rare_class", {**DEFAULTS, "crop": [0, 16]}, r"^data.rare_class.crop=\[0, 16\]: null or \[height, width\]"),
        ("rare_class", {**DEFAULTS, "crop": [16.5, 16]}, r"^data.rare_class.crop=\[16.5, 16\]: null or"),
        ("rare_class", {**DEFAULTS, "temprature": 1}, r"^data.rare_class has keys .*: give exactly temperature, min"),
        ("rare_class", None, r"^data.sampler=rare_class needs data.rare_class"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(sampler, rare_class, message: str):
    with pytest.raises(ConfigError, match=message) as error:
        sampler_settings(sampler, rare_class)
    assert "\n" not in str(error.value)


def test_the_configs_defaults_are_the_plain_shuffle_and_valid_rare_class_settings():
    data = OmegaConf.to_container(compose_cfg().data)
    assert data["sampler"] is None and sampler_settings(None, data["rare_class"]) is None
    assert sampler_settings("rare_class", data["rare_class"]) == settings()


def test_a_bad_sampler_stops_training_before_the_data_is_read(make_cfg, monkeypatch):
    monkeypatch.setattr(mask_stats, "summarize_masks", lambda *_: pytest.fail("the masks were read"))
    with pytest.raises(ConfigError, match=r"^data\.sampler=rarest: choose"):
        build_run(make_cfg("data.sampler=rarest"), seed=0)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (
            {"crop_size": [16, 24], "image_size": [64, 64], "sampler": "rare_class", "rare_class": {"crop": [8, 8]}},
            (16, 24),
        ),
        ({"image_size": [64, 48], "sampler": "rare_class", "rare_class": {"crop": [32, 96]}}, (32, 48)),
        ({"image_size": [64, 48], "sampler": None, "rare_class": {"crop": [32, 32]}}, (64, 48)),
        ({"image_size": None, "sampler": "rare_class", "rare_class": {"crop": [32, 32]}}, None),
        ({"image_size": None, "sampler": None, "rare_class": {"crop": None}}, None),
    ],
)
def test_the_training_input_size_counts_the_class_crop(data: dict, size):
    assert training_input_size(data) == size
