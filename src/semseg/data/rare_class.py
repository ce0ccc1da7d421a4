"""Rare-class sampling (``data.sampler=rare_class``), after DAFormer (Hoyer et al., CVPR 2022).

Each draw picks a class c with probability ``softmax((1 - f_c) / T)`` over the classes that some
training image holds at least ``min_pixels`` of (``f_c``: the class's share of the train split's
labelled pixels), then an image uniformly among those holding ``min_pixels`` of c. Draws are with
replacement; an epoch is as long as with the plain shuffle. Images of rare classes come back more
often, which class weights cannot do: a class weight scales the pixels a batch happens to hold,
and a class absent from most batches gets no gradient there at all.

The draws derive from ``(seed, epoch, rank)`` only (see ``semseg.data.sampling``), so a resumed
run replays its epochs and DDP's ranks draw differently. Each draw reaches the data set as a
``RareClassDraw``: its position in the epoch reseeds the augmentations (the same image drawn twice
is augmented twice, differently) and its class centres ``crop``. The per-image class pixel counts
come from training's start-up inspection (the cached mask statistics), so no mask is read for them.
Neither torch nor Lightning samples by class frequency, hence this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from semseg.data.sampling import EpochSampler
from semseg.errors import ConfigError

SAMPLERS = ("rare_class",)  # data.sampler's values besides null
# A word of the draws' seed that no sample seed holds (those are (seed, epoch, index[, position])).
_DRAW_STREAM = 2**31 + 1


@dataclass(frozen=True)
class RareClassSettings:
    """``data.rare_class``: see conf/data/folder.yaml."""

    temperature: float
    min_pixels: int
    crop: tuple[int, int] | None


def sampler_settings(sampler: str | None, rare_class: Mapping | None) -> RareClassSettings | None:
    """``data.sampler`` and ``data.rare_class`` (checked even while unused), or None for
    ``data.sampler: null``.

    Raises:
        ConfigError: an unknown sampler, an unknown ``data.rare_class`` key or a bad value.
    """
    if sampler is not None and sampler not in SAMPLERS:
        raise ConfigError(f"data.sampler={sampler}: choose null (every image once an epoch) or rare_class.")
    settings = None if rare_class is None else _checked(rare_class)
    if sampler is not None and settings is None:
        raise ConfigError("data.sampler=rare_class needs data.rare_class (temperature, min_pixels, crop).")
    return None if sampler is None else settings


def _checked(rare_class: Mapping) -> RareClassSettings:
    known = [f.name for f in fields(RareClassSettings)]
    if sorted(rare_class) != sorted(known):
        raise ConfigError(f"data.rare_class has keys {sorted(rare_class)}: give exactly {', '.join(known)}.")
    temperature, min_pixels, crop = (rare_class[name] for name in known)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(
            f"data.rare_class.temperature={temperature}: a number > 0 (e.g. 0.01; lower favours rare classes more)."
        )
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise ConfigError(f"data.rare_class.min_pixels={min_pixels}: a whole number >= 1.")
    if crop is not None and not _is_size(crop):
        raise ConfigError(f"data.rare_class.crop={crop}: null or [height, width], two whole numbers > 0.")
    return RareClassSettings(float(temperature), min_pixels, None if crop is None else (crop[0], crop[1]))


def _is_size(crop: object) -> bool:
    return (
        isinstance(crop, Sequence)
        and not isinstance(crop, str)
        and len(crop) == 2
        and all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in crop)
    )


def class_draw_probabilities(class_pixels: np.ndarray, settings: RareClassSettings) -> np.ndarray:
    """Each class's draw probability, from the train images' class pixels (n_images x classes):
    ``softmax((1 - f_c) / T)`` over the classes some image holds ``min_pixels`` of, 0 for the others.

    Raises:
        ConfigError: no image holds ``min_pixels`` of any class.
    """
    pixels = class_pixels.sum(axis=0)
    drawable = (class_pixels >= settings.min_pixels).any(axis=0)
    if not drawable.any():
        raise ConfigError(
            f"data.rare_class.min_pixels={settings.min_pixels}: no training image holds that many pixels of any "
            "class; lower it."
        )
    frequency = pixels / pixels.sum()
    logits = torch.from_numpy((1 - frequency[drawable]) / settings.temperature)
    probabilities = np.zeros(len(pixels))
    probabilities[drawable] = torch.softmax(logits, dim=0).numpy()  # float64: exact for any temperature
    return probabilities


def describe_draws(settings: RareClassSettings, class_names: Sequence[str], class_pixels: np.ndarray) -> dict:
    """What the sampler draws, for data_report.json: the settings, each class's draw probability and
    the images that can stand for it."""
    probabilities = class_draw_probabilities(class_pixels, settings)
    holders = (class_pixels >= settings.min_pixels).sum(axis=0)
    return {
        "temperature": settings.temperature,
        "min_pixels": settings.min_pixels,
        "crop": None if settings.crop is None else list(settings.crop),
        "class_probabilities": {name: float(p) for name, p in zip(class_names, probabilities, strict=True)},
        "class_images": {name: int(n) for name, n in zip(class_names, holders, strict=True)},
    }


def training_input_size(data: Mapping) -> tuple[int, int] | None:
    """The (height, width) of every training sample of a ``data`` config, or None when it varies:
    ``crop_size`` (the augmentations' crop comes last), else ``image_size`` cut to
    ``rare_class.crop`` under ``sampler=rare_class`` (a side shorter than that window stays whole),
    else ``image_size``. Without ``image_size`` a rare-class crop is the size of every image at
    least as large as it, and no more: None."""
    if data.get("crop_size"):
        return tuple(data["crop_size"])
    image_size = data.get("image_size")
    crop = (data.get("rare_class") or {}).get("crop") if data.get("sampler") == "rare_class" else None
    if crop:
        return None if not image_size else tuple(min(c, s) for c, s in zip(crop, image_size, strict=True))
    return tuple(image_size) if image_size else None


class RareClassDraw(NamedTuple):
    """One draw, as the data set receives it: the image, the epoch, the draw's position in the
    epoch (unique across ranks) and the drawn class."""

    index: int
    epoch: int
    position: int
    cls: int


class RareClassSampler(EpochSampler):
    """Draws ``len(dataset) / num_replicas`` images per rank and epoch by class (module docstring).

    An ``EpochSampler`` (hence a ``DistributedSampler``), so that Lightning keeps it under DDP and
    ``EpochSeeding`` restarts it on resume; ``epoch_source`` as there.

    Args:
        dataset: the train split (only its length is used).
        class_pixels: n_images x classes pixel counts, row i of the data set's image i.
        settings: ``data.rare_class``.
    """

    def __init__(
        self,
        dataset: Dataset,
        class_pixels: np.ndarray,
        settings: RareClassSettings,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_source: Callable[[], int] | None = None,
    ):
        super().__init__(dataset, seed, num_replicas, rank, epoch_source)
        if len(class_pixels) != len(dataset):
            raise ValueError(f"class_pixels has {len(class_pixels)} rows for {len(dataset)} images.")
        self.probabilities = class_draw_probabilities(class_pixels, settings)
        self.holders = [np.flatnonzero(column >= settings.min_pixels) for column in class_pixels.T]

    def __iter__(self) -> Iterator[RareClassDraw]:
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        epoch = self.iterated_epoch = self.epoch
        rng = np.random.default_rng([self.seed, epoch, _DRAW_STREAM, self.rank])
        classes = rng.choice(len(self.probabilities), size=self.num_samples, p=self.probabilities)
        images = np.empty(self.num_samples, np.int64)
        for cls in np.unique(classes):
            drawn = classes == cls
            images[drawn] = self.holders[cls][rng.integers(len(self.holders[cls]), size=int(drawn.sum()))]
        for i, (index, cls) in enumerate(zip(images.tolist(), classes.tolist(), strict=True)):
            yield RareClassDraw(index, epoch, i * self.num_replicas + self.rank, cls)


def crop_around_class(
    image: np.ndarray, mask: np.ndarray, cls: int, crop: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask cut to a ``crop`` = [height, width] window centred on a random pixel of
    ``cls`` (a class index; a plane of a multi-label mask), moved inside the image where the pixel
    lies near a border. A side shorter than the window is left whole."""
    present = mask == cls if mask.ndim == 2 else mask[..., cls] == 1
    ys, xs = np.nonzero(present)
    if ys.size:
        pick = rng.integers(ys.size)
        y, x = int(ys[pick]), int(xs[pick])
    else:  # a resize (data.image_size) can drop a class's last few pixels: any window then
        y, x = int(rng.integers(mask.shape[0])), int(rng.integers(mask.shape[1]))
    top = _window_start(y, crop[0], mask.shape[0])
    left = _window_start(x, crop[1], mask.shape[1])
    window = (slice(top, top + crop[0]), slice(left, left + crop[1]))
    # Copies: the augmentations get contiguous arrays, and never a view into a cached sample.
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(mask[window])


def _window_start(centre: int, size: int, length: int) -> int:
    """The first row (column) of a ``size`` window centred on ``centre``, clamped into ``length``."""
    return min(max(centre - size // 2, 0), max(length - size, 0))
