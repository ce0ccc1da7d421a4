"""Image headers (size, Pillow's mode, stored bands and depth) of a data set's images, cached per file.

The data check every run starts with needs each image's size, bands and depth, and that the file
is whole (a PNG, JPEG or TIFF cut short). Opening 100,000 images for that took about 8 s of every
start-up, with nothing changed. The cache (``file_cache``) maps each image to its header, so a
later run opens no image; a changed or replaced file is read again. Only sound headers are cached:
an unreadable or cut-short file is checked at every run, so its fix is seen at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import tifffile
from PIL import Image, UnidentifiedImageError

from semseg.data.file_cache import FileCache
from semseg.data.reading import TIFF_SUFFIXES, read_tiff, tiff_layout
from semseg.errors import DataError, Problem

CACHE_VERSION = 2  # 2: bands and depth
# The bytes a complete file of these formats holds at its end (PNG's IEND chunk, JPEG's EOI marker).
# Pillow reads only the header, and OpenCV decodes a JPEG cut short into a grey-filled image without
# an error, so a file cut short (an interrupted copy or download) is found by its missing end.
END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}
TAIL_BYTES = 1024  # room for a few bytes some writers append after the end marker
# Pillow's modes of more than 8 bits per band (it reports a 16-bit RGB PNG as "RGB": see read_header).
PILLOW_DEPTHS = {
    **dict.fromkeys(("I;16", "I;16B", "I;16L", "I;16N"), "uint16"),
    "I": "int32",
    "F": "float32",
}


class Header(NamedTuple):
    """What an image file's header says; ``problem`` set (and the rest empty) when it is not sound."""

    size: tuple[int, int] | None  # (height, width)
    mode: str  # Pillow's mode ("P": palette, read as colour); "" for a TIFF
    bands: int  # as stored
    dtype: str  # as stored: uint8, uint16 (or a type semseg refuses)
    problem: Problem | None = None


def _unreadable(path: Path, why: str = "truncated, empty or not an image") -> Header:
    fix = "re-export or remove the image and its mask."
    return Header(None, "", 0, "", Problem(str(path), f"cannot be read ({why}).", fix))


def _truncated(path: Path, file_format: str) -> Header:
    problem = Problem(
        str(path),
        f"is truncated: the {file_format} file ends before its image data does (an interrupted copy?).",
        "copy or re-export the image again, or remove it and its mask.",
    )
    return Header(None, "", 0, "", problem)


def read_header(path: Path, full: bool) -> Header:
    """``path``'s header, or its problem; ``full`` also decodes the pixels, catching files damaged
    after their header."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _tiff_header(path, full)
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode, file_format = image.mode, image.format
            # A PNG's raw mode says its bit depth ("RGB;16B"), which Pillow's mode hides for colour.
            sixteen_bits = file_format == "PNG" and bool(image.tile) and ";16" in str(image.tile[0][3])
    except (OSError, UnidentifiedImageError, SyntaxError):
        return _unreadable(path)
    if _cut_short(path, file_format):
        return _truncated(path, file_format)
    if full and cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is None:
        return _unreadable(path)
    bands = 3 if mode == "P" else Image.getmodebands(mode)
    dtype = "uint16" if sixteen_bits else PILLOW_DEPTHS.get(mode, "uint8")
    return Header((height, width), mode, bands, dtype)


def _tiff_header(path: Path, full: bool) -> Header:
    try:
        with tifffile.TiffFile(path) as tif:
            layout = tiff_layout(tif, path)
        if os.path.getsize(path) < layout.data_end:
            return _truncated(path, "TIFF")
        if full:
            read_tiff(path)
    except DataError as error:
        message = str(error).removeprefix(f"{path}: ")
        return Header(None, "", 0, "", Problem(str(path), message, "re-export it, or remove it and its mask."))
    except (OSError, ValueError, tifffile.TiffFileError, KeyError, IndexError) as error:
        return _unreadable(path, f"not a TIFF tifffile can read: {error}")
    return Header((layout.height, layout.width), "", layout.bands, layout.dtype)


def _cut_short(path: Path, file_format: str | None) -> bool:
    """True for a PNG or JPEG file that ends before its image data does (see ``END_MARKERS``).

    The fast path reads only the file's last ``TAIL_BYTES``; a file without its end marker there
    is decoded in full by Pillow, which raises only when the data really ends early (some cameras
    append data, a video even, after a JPEG's end).
    """
    marker = END_MARKERS.get(file_format or "")
    if marker is None:
        return False  # other formats are decoded in full only with full=True
    with open(path, "rb") as f:
        f.seek(max(f.seek(0, os.SEEK_END) - TAIL_BYTES, 0))
        if marker in f.read():
            return False
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):  # Pillow: "image file is truncated", "broken PNG file"
        return True
    return False


def cached_headers(root: Path, paths: Sequence[Path], read: Callable[[Path], Header]) -> list[Header]:
    """``read(path)`` of every path, from the cache where the file is unchanged.

    Pass every image of the root in one call: entries of files not passed are dropped. Processes
    that write at once each write a whole file and rename it into place (``FileCache.save``).
    """
    cache = FileCache(root, "images", CACHE_VERSION)
    cached = cache.load()
    keys, headers, fresh = [], [], {}
    for path in paths:
        key = cache.key(path)
        keys.append(key)
        if key in cached:
            height, width, mode, bands, dtype = cached[key]
            headers.append(Header((height, width), mode, bands, dtype))
            continue
        header = read(path)
        headers.append(header)
        if header.problem is None:
            fresh[key] = [*header.size, header.mode, header.bands, header.dtype]
    kept = {key: cached[key] for key in keys if key in cached} | fresh
    if fresh or len(kept) != len(cached):
        cache.save(kept)
    return headers
