"""What each stored mask holds (size, channels, value histogram): read in one streaming pass, cached.

The histogram is of the *stored* values, before label_map, so one cache serves every label_map,
ignore_index and num_classes: class counts are a table lookup away. The cache (``file_cache``)
maps each mask file to its summary, so a second run reads no mask, and a changed or replaced file
is read again. Of several processes that need the
same root's summaries at once (a sweep's jobs, DDP's ranks), one reads the masks and the others
wait for its cache. Nothing in torch, torchmetrics or albumentations counts a data set's stored
mask values, hence this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from semseg.data.colour_labels import pack_pixels, unpack
from semseg.data.cores import data_parallelism
from semseg.data.file_cache import FileCache
from semseg.data.reading import is_palette_png, read_mask
from semseg.errors import DataError
from semseg.files import lock_making

CACHE_VERSION = 2  # 2: colour masks' full histogram (rgb, rgb_counts)
MAX_COLOURS = 8  # distinct colours kept for a colour mask: enough to explain it


@dataclass
class MaskSummary:
    """One mask file as stored.

    ``values``/``counts`` are the distinct stored values and their pixel counts (single-channel
    masks); ``colours`` the most frequent colours of a multi-channel mask with their counts; ``rgb``/
    ``rgb_counts`` every colour of an 8-bit colour mask, packed R << 16 | G << 8 | B (alpha left
    out), and its pixels: a colour label_map's class counts, from the cache.
    ``error`` is set, and the rest empty, when the file cannot be read.
    """

    height: int = 0
    width: int = 0
    channels: int = 0
    dtype: str = ""
    palette: bool = False
    values: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    colours: list[list[int]] = field(default_factory=list)
    equal_channels: bool = False  # a grayscale mask saved with identical colour channels
    rgb: list[int] = field(default_factory=list)
    rgb_counts: list[int] = field(default_factory=list)
    error: str | None = None


def summarize_mask(path: Path) -> MaskSummary:
    """Reads one mask and summarises it (never raises for a bad file: the error is recorded)."""
    try:
        mask = read_mask(path)
        palette = is_palette_png(path)
    except (DataError, OSError) as error:
        return MaskSummary(error=str(error))
    summary = MaskSummary(mask.shape[0], mask.shape[1], 1 if mask.ndim == 2 else mask.shape[2], str(mask.dtype))
    summary.palette = palette
    if mask.ndim == 2:
        if mask.dtype.kind not in "ui":  # float masks: unique values, reported as not classes
            values, counts = np.unique(mask, return_counts=True)
            summary.values, summary.counts = values[:MAX_COLOURS].tolist(), counts[:MAX_COLOURS].tolist()
            return summary
        counts = np.bincount(mask.ravel().astype(np.int64, copy=False))
        values = np.flatnonzero(counts)
        summary.values, summary.counts = values.tolist(), counts[values].tolist()
    else:
        pixels = mask.reshape(-1, mask.shape[2])
        if pixels.shape[1] >= 3:  # OpenCV's BGR(A) -> RGB(A), the order people name colours in
            pixels = pixels[:, [2, 1, 0, *range(3, pixels.shape[1])]]
        summary.equal_channels = bool((pixels[:, :3] == pixels[:, :1]).all())
        if mask.shape[2] in (3, 4) and mask.dtype == np.uint8:  # packed: one sort of integers, not of rows
            rgb, rgb_counts = np.unique(pack_pixels(mask), return_counts=True)
            summary.rgb, summary.rgb_counts = rgb.tolist(), rgb_counts.tolist()
            top = np.argsort(rgb_counts)[::-1][:MAX_COLOURS]
            summary.colours = [unpack(packed) for packed in rgb[top]]
            summary.counts = rgb_counts[top].tolist()
            return summary
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        top = np.argsort(counts)[::-1][:MAX_COLOURS]
        summary.colours = colours[top].tolist()
        summary.counts = counts[top].tolist()
    return summary


def summarize_masks(root: Path, paths: Sequence[Path]) -> list[MaskSummary]:
    """Summaries of ``paths`` (mask files under ``root``), read once and cached per data root.

    Pass every mask of the root in one call: entries of files not passed are dropped from the cache.

    OpenCV decodes with the GIL released, so a thread pool reads several masks at once; only the
    summaries stay in memory, never the masks.
    """
    cache = mask_cache(root)
    keys = cache.keys(paths)
    cached = cache.load()
    if cached.keys() != set(keys):
        with lock_making(cache.path):
            cached = _update_cache(cache, keys, paths)
    return [MaskSummary(**cached[key]) for key in keys]


def mask_cache(root: Path) -> FileCache:
    """The mask summaries' cache for the data root ``root``."""
    return FileCache(root, "masks", CACHE_VERSION)


def _update_cache(cache: FileCache, keys: list[str], paths: Sequence[Path]) -> dict:
    """The cache's entries for ``keys`` (of ``paths``): the missing ones summarised, the others'
    dropped, written back. Each process writes a whole file of its own and renames it into place, so
    processes that write at once leave one whole cache (the same entries) and never fail."""
    cached = cache.load()  # another process may have written it while this one waited
    if cached.keys() == set(keys):
        return cached
    todo = [(key, path) for key, path in zip(keys, paths, strict=True) if key not in cached]
    with ThreadPoolExecutor(data_parallelism()) as pool:
        for (key, _), summary in zip(todo, pool.map(summarize_mask, [p for _, p in todo]), strict=True):
            cached[key] = asdict(summary)
    cached = {key: cached[key] for key in keys}  # drop entries of changed or removed files
    cache.save(cached)
    return cached
