"""Where a split's samples come from: read from the files each time, or decoded once into a cache.

The first steps of every sample never change from epoch to epoch: decoding the image and the
mask, mapping stored mask values to class codes, resizing to ``data.image_size``. On photographs
they are most of the data path's work (a 480x360 PNG takes ~5 ms to decode, the rest of a sample
~1 ms), and on a 2-core machine every millisecond a loader worker spends competes with the model
for the same cores. ``data.cache`` keeps their result as stored (uint8, or uint16 for 16-bit
images; masks uint8):

- ``memory``: decoded in the main process before training (a thread pool: OpenCV decodes with
  the GIL released) into one buffer, which forked loader workers share without copying;
- ``disk``: the same buffer in memory-mapped files under the cache folder, built once and reused
  by later runs (and shared by DDP ranks through the page cache), keyed by each file's path, size
  and modification time and by the settings that change a sample (``in_channels``,
  ``image_size``, the mask encoding);
- ``auto`` (default): ``memory`` when the decoded split fits in ``data.cache_max_gb``, else off;
- ``off``: read the files at every epoch.

torch and Lightning have no such cache (a DataLoader re-runs the whole ``__getitem__`` each
epoch), hence this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from semseg.data.cores import data_parallelism
from semseg.data.mask_encoding import MaskEncoder
from semseg.data.reading import read_image
from semseg.data.transforms import resize_transform
from semseg.errors import ConfigError, DataError
from semseg.files import cache_dir, lock_making, staging_path

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "memory", "disk", "off")
CACHE_VERSION = 2  # 2: 16-bit images kept at 16 bits
Pairs = list[tuple[Path, Path | None]]


class FileSamples:
    """Reads, encodes and resizes sample ``index`` from its files at each call."""

    def __init__(self, pairs: Pairs, encoder: MaskEncoder, in_channels: int, image_size: list[int] | None):
        self.pairs, self.encoder, self.in_channels = pairs, encoder, in_channels
        self.resize = None if image_size is None else resize_transform(image_size)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W, C) uint8 or uint16 image and (H, W) uint8 class codes (None for an unlabelled split)."""
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path, self.in_channels)
        mask = None
        if mask_path is not None:
            mask = self.encoder.encode_file(mask_path)  # (H, W), or (H, W, C) planes of a multi-label mask
            if mask.shape[:2] != image.shape[:2]:
                raise DataError(
                    f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} "
                    f"is {image.shape[1]}x{image.shape[0]} (WxH); image and mask must have the same size."
                )
        if self.resize is not None:
            out = self.resize(image=image, mask=mask) if mask is not None else self.resize(image=image)
            image, mask = out["image"], out.get("mask")
        if image.ndim == 2:  # OpenCV drops a single channel's axis when it resizes
            image = image[..., None]
        return image, mask

    def estimated_bytes(self) -> int:
        """Bytes of the decoded split, from its first image's size and depth (one image decoded)."""
        first = read_image(self.pairs[0][0], self.in_channels)
        height, width = first.shape[:2] if self.resize is None else (self.resize.height, self.resize.width)
        has_mask = self.pairs[0][1] is not None
        return len(self.pairs) * height * width * (self.in_channels * first.itemsize + has_mask)

    def key(self) -> str:
        """What a cached copy of this split must match: every file's path, size and mtime, and the
        settings that change a sample."""
        digest = hashlib.sha1(f"{CACHE_VERSION}|{self.in_channels}|".encode())
        if self.resize is not None:
            digest.update(f"{self.resize.height}x{self.resize.width}".encode())
        digest.update(self.encoder.fingerprint())
        for pair in self.pairs:
            for path in pair:
                if path is not None:
                    stat = path.stat()
                    digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:20]


class PackedSamples:
    """Every sample of a split in two flat buffers (images: uint8 or uint16; masks: uint8) with an
    index of offsets and shapes; returns copies, so no transform can alter the cache."""

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, index: np.ndarray):
        self.images, self.masks, self.index = images, masks, index  # index rows: image offset, mask offset, H, W, C
        # Values per mask pixel: 1, or a multi-label mask's C planes (the same for every sample).
        pixels = int((index[:, 2] * index[:, 3]).sum()) if len(index) else 0
        self.mask_planes = 1 if masks is None or not pixels else masks.size // pixels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        image_at, mask_at, height, width, channels = (int(v) for v in self.index[index])
        image = self.images[image_at : image_at + height * width * channels].reshape(height, width, channels).copy()
        if self.masks is None:
            return image, None
        planes = self.mask_planes
        mask = self.masks[mask_at : mask_at + height * width * planes]
        return image, (mask.reshape(height, width) if planes == 1 else mask.reshape(height, width, planes)).copy()

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + (0 if self.masks is None else self.masks.nbytes)

    @classmethod
    def decode(cls, source: FileSamples) -> PackedSamples:
        """Decodes every sample of ``source`` (several at once: OpenCV releases the GIL)."""
        with ThreadPoolExecutor(data_parallelism()) as pool:
            samples = list(pool.map(source.__getitem__, range(len(source))))
        index = np.zeros((len(samples), 5), np.int64)
        index[:, 2:] = [image.shape for image, _ in samples]
        pixels = index[:, 2] * index[:, 3]
        index[1:, 0] = np.cumsum(pixels * index[:, 4])[:-1]
        planes = 1 if samples[0][1] is None or samples[0][1].ndim == 2 else samples[0][1].shape[2]
        index[1:, 1] = np.cumsum(pixels * planes)[:-1]
        depths = {image.dtype.name: source.pairs[i][0] for i, (image, _) in enumerate(samples)}
        if len(depths) > 1:  # concatenated, the 8-bit images would pass for 16-bit ones
            named = ", ".join(f"{path} ({dtype})" for dtype, path in depths.items())
            raise DataError(f"images stored at more than one depth: {named}; convert them to one depth.")
        images = np.concatenate([image.ravel() for image, _ in samples])
        labelled = samples[0][1] is not None
        masks = np.concatenate([mask.ravel() for _, mask in samples]) if labelled else None
        return cls(images, masks, index)

    def save(self, folder: Path) -> None:
        np.save(folder / "index.npy", self.index)
        np.save(folder / "images.npy", self.images)
        if self.masks is not None:
            np.save(folder / "masks.npy", self.masks)

    @classmethod
    def load(cls, folder: Path) -> PackedSamples:
        """Memory-maps a saved cache: pages are read on first use and shared between processes.

        Raises:
            FileNotFoundError: there is no cache in ``folder``, or it was removed while being read
                (``_make_room``): the index is read last, so a cache gone half-way through never
                passes for an unlabelled split's.
        """
        masks = folder / "masks.npy"
        return cls(
            np.load(folder / "images.npy", mmap_mode="r"),
            np.load(masks, mmap_mode="r") if masks.exists() else None,
            np.load(folder / "index.npy"),
        )


def sample_source(source: FileSamples, mode: str, max_gb: float, name: str) -> FileSamples | PackedSamples:
    """``source`` itself, or its samples cached as ``mode`` asks (see the module's docstring).

    Args:
        source: the split's files.
        mode: ``data.cache``.
        max_gb: ``data.cache_max_gb``, the largest decoded split ``auto`` keeps in memory and
            the most the disk cache folder may hold (older caches are removed to make room).
        name: what the log lines call the split (e.g. ``train split of /data/roads``).
    """
    if mode not in CACHE_MODES:
        raise ConfigError(f"data.cache={mode}: choose one of {', '.join(CACHE_MODES)}.")
    if mode == "off" or len(source) == 0:
        return source
    size_gb = source.estimated_bytes() / 2**30
    if mode == "auto":
        if size_gb > max_gb:
            log.info(
                f"{name}: not cached ({size_gb:.2f} GB decoded > data.cache_max_gb={max_gb:g}); "
                "data.cache=disk caches it in files, or raise data.cache_max_gb"
            )
            return source
        mode = "memory"
    started = time.perf_counter()
    if mode == "memory":
        packed = PackedSamples.decode(source)
        where = "memory"
    else:
        packed, where = _disk_cache(source, max_gb, name)
    log.info(
        f"{name}: {len(packed)} samples cached in {where} ({packed.nbytes / 2**30:.2f} GB, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    return packed


def _disk_cache(source: FileSamples, max_gb: float, name: str) -> tuple[PackedSamples, str]:
    """The split's disk cache: reused when its key matches, else built into a staging folder and
    renamed into place (an interrupted build leaves no cache that looks whole). Of several processes
    that need the same cache at once (DDP's ranks, a sweep's jobs), one builds it while the others
    wait (``lock_making``), then map it."""
    root = cache_dir() / "samples"
    folder = root / source.key()
    with contextlib.suppress(FileNotFoundError):  # not built yet, or removed by another process making room
        return _reuse(folder), str(folder)
    with lock_making(folder):
        with contextlib.suppress(FileNotFoundError):  # built by another process while this one waited
            return _reuse(folder), str(folder)
        _make_room(root, source.estimated_bytes(), max_gb)
        return _build(source, folder, name), str(folder)


def _reuse(folder: Path) -> PackedSamples:
    """Maps the cache in ``folder``; FileNotFoundError when there is none (see ``PackedSamples.load``)."""
    with contextlib.suppress(OSError):  # a read-only cache folder is still readable
        os.utime(folder)  # recently used: the last to be removed when room is needed
    return PackedSamples.load(folder)


def _build(source: FileSamples, folder: Path, name: str) -> PackedSamples:
    """Decodes ``source`` into ``folder`` (through a staging folder) and maps it."""
    staging = staging_path(folder)
    staging.mkdir()
    try:
        PackedSamples.decode(source).save(staging)
        # Mapped before the rename: the mapping stays valid whatever becomes of the folder next
        # (another process making room for its own cache may remove it at once).
        packed = PackedSamples.load(staging)
        os.replace(staging, folder)
    except OSError as error:
        try:
            packed = _reuse(folder)  # built by another process that could not see our lock
        except FileNotFoundError:
            raise DataError(
                f"{name}: could not write the sample cache {folder}: {error}. "
                "Free space there, set SEMSEG_CACHE_DIR elsewhere, or data.cache=memory/off."
            ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when renamed into place
    return packed


def _make_room(root: Path, needed: int, max_gb: float) -> None:
    """Removes the least recently used caches under ``root`` until ``needed`` more bytes fit in
    ``max_gb``. Only folders this module wrote live there.

    Other processes may be reading or removing caches meanwhile: a cache is renamed to a hidden name
    before it is deleted, so a process mapping it finds all of its files or none (and builds it
    again), and one that has mapped it reads on from the deleted files (as POSIX keeps them while
    mapped); a cache that another process removed first is passed over.
    """
    caches: dict[Path, tuple[float, int]] = {}  # mtime, bytes
    for cache in root.iterdir() if root.is_dir() else ():
        # Hidden entries are caches being built or deleted (staging_path) and lock files: never touched.
        if cache.name.startswith(".") or not cache.is_dir():
            continue
        with contextlib.suppress(FileNotFoundError):  # removed by another process meanwhile
            caches[cache] = (cache.stat().st_mtime, sum(f.stat().st_size for f in cache.iterdir()))
    total = sum(size for _, size in caches.values())
    for cache in sorted(caches, key=lambda c: caches[c][0]):
        if total + needed <= max_gb * 2**30:
            break
        doomed = staging_path(cache)
        with contextlib.suppress(OSError):  # removed by another process first, or a read-only folder
            cache.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        total -= caches[cache][1]
