"""How the network's inputs are normalised: the images' depth, and each band's mean and std.

Pretrained encoders expect 8-bit RGB (or grey) images normalised with their training data's
statistics (ImageNet's), which is what ``data.mean/std: null`` gives such images. Those statistics
mean nothing for a 16-bit microscope channel or a satellite image's near-infrared band: there,
each band is normalised with its own mean and standard deviation over the train split, computed
here in one pass over the images and cached per file (``FileCache``), so a later run decodes no
image. Every pixel value is first divided by the depth's full intensity (255 or 65535:
``MAX_PIXEL_VALUES``), so ``data.mean/std``, when given, are in 0..1 units for any depth.

Nothing in torch, torchvision or albumentations computes a data set's per-band statistics, hence
this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from semseg.data.cores import data_parallelism
from semseg.data.file_cache import FileCache
from semseg.data.layout import DataLayout
from semseg.data.reading import MAX_PIXEL_VALUES, is_8_bit_grey_or_colour, read_image
from semseg.errors import ConfigError, DataError
from semseg.files import lock_making

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# The statistics of a few thousand images, evenly spread over the split, are those of all of them
# to the third decimal; a pass over 100,000 satellite tiles would take minutes at a first run.
MAX_IMAGES = 2000
ROWS_PER_BLOCK = 256  # sums are taken in float64 blocks of rows, not over a float64 copy of a whole image


def input_normalization(data: Mapping, dtype: str) -> dict:
    """The module's ``normalization`` for a ``data`` config whose images are stored as ``dtype``
    (the data check's ``image_dtype``): ``max_pixel_value`` of that depth, and ``mean``/``std``
    (0..1 units) from ``data.mean/std``, or from the train split's bands when the encoder's
    (ImageNet's) statistics do not fit the images (16-bit, or bands other than 1 or 3), or None
    (the encoder's, filled in by the module)."""
    in_channels = int(data.get("in_channels", 3))
    normalization = {"max_pixel_value": MAX_PIXEL_VALUES[dtype], "mean": None, "std": None}
    if data.get("mean") is not None and data.get("std") is not None:
        mean, std = list(data["mean"]), list(data["std"])
        _check_lengths(mean, std, in_channels)
        return normalization | {"mean": mean, "std": std}
    if is_8_bit_grey_or_colour(dtype, in_channels):
        return normalization
    paths = [image for image, _ in DataLayout.of(data).list_pairs("train")]
    mean, std = band_statistics(Path(data["root"]), paths, in_channels)
    bits = 16 if dtype == "uint16" else 8
    log.info(
        f"data: {bits}-bit images of {in_channels} band(s), normalised per band with the train split's "
        f"mean {_rounded(mean)} and std {_rounded(std)} (0..1 units; data.mean/std replace them)"
    )
    return normalization | {"mean": mean, "std": std}


def _check_lengths(mean: Sequence[float], std: Sequence[float], in_channels: int) -> None:
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(
            f"data.mean={list(mean)} and data.std={list(std)}: give one value per band (data.in_channels="
            f"{in_channels}), in 0..1 units (a 16-bit value divided by 65535), or null for the data's own."
        )


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(v, 4) for v in values]


def band_statistics(root: Path, paths: Sequence[Path], in_channels: int) -> tuple[list[float], list[float]]:
    """Per-band mean and std (0..1 units) of the images ``paths`` (at most ``MAX_IMAGES`` of them,
    evenly spread), from the cache where a file is unchanged.

    Raises:
        DataError: the images are stored at more than one depth (naming one file of each).
    """
    chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, min(len(paths), MAX_IMAGES)).round().astype(int)]
    cache = FileCache(root, "bands", CACHE_VERSION)
    keys = cache.keys(chosen, in_channels)  # in_channels: a colour image read as grey sums otherwise
    cached = cache.load()
    if not set(keys) <= cached.keys():
        with lock_making(cache.path):  # of several processes (DDP's ranks), one decodes the images
            cached = cache.load()
            todo = [(key, path) for key, path in zip(keys, chosen, strict=True) if key not in cached]
            with ThreadPoolExecutor(data_parallelism()) as pool:  # OpenCV decodes with the GIL released
                sums = pool.map(lambda path: _band_sums(path, in_channels), [path for _, path in todo])
                cached.update(zip([key for key, _ in todo], sums, strict=True))
            cache.save({key: cached[key] for key in keys})
    entries = [cached[key] for key in keys]
    _check_one_depth(entries, chosen)
    pixels = sum(entry["pixels"] for entry in entries)
    full = MAX_PIXEL_VALUES[entries[0]["dtype"]]
    mean = np.sum([entry["sum"] for entry in entries], axis=0) / pixels
    variance = np.sum([entry["sum_sq"] for entry in entries], axis=0) / pixels - mean**2
    std = np.sqrt(np.maximum(variance, 0.0))
    constant = [band for band, s in enumerate(std) if s == 0]
    if constant:  # (x - mean) / 0: a band that never changes says nothing; leave it at 0
        log.warning(f"data: band(s) {constant} have the same value in every train image; they are not scaled")
    std[std == 0] = full
    return [float(v) for v in mean / full], [float(v) for v in std / full]


def _band_sums(path: Path, in_channels: int) -> dict:
    """One image's dtype, pixel count, and per-band sums of values and of squared values."""
    image = read_image(path, in_channels)
    total, total_sq = np.zeros(in_channels), np.zeros(in_channels)
    for top in range(0, image.shape[0], ROWS_PER_BLOCK):
        block = image[top : top + ROWS_PER_BLOCK].reshape(-1, in_channels).astype(np.float64)
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
    pixels = image.shape[0] * image.shape[1]
    return {"dtype": image.dtype.name, "pixels": pixels, "sum": total.tolist(), "sum_sq": total_sq.tolist()}


def _check_one_depth(entries: Sequence[dict], paths: Sequence[Path]) -> None:
    examples = {}
    for entry, path in zip(entries, paths, strict=True):
        examples.setdefault(entry["dtype"], path)
    if len(examples) > 1:
        named = ", ".join(f"{path} ({dtype})" for dtype, path in examples.items())
        raise DataError(
            f"the train images are stored at more than one depth: {named}. Convert them to one depth "
            "(a batch of both would be normalised wrongly)."
        )
