"""Reading image and mask files as stored.

Images are read at their full depth (8 or 16 bits per band) with their bands in file order: RGB,
RGBA, or a multi-band image's bands as stored, never OpenCV's BGR(A). OpenCV reads PNG, JPEG and
most formats; TIFFs go through tifffile, which reads any number of bands, planar or interleaved,
one band per page, GeoTIFF and compressed TIFFs (OpenCV stops at 4 bands).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from semseg.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff")
# Pixel value of full intensity per stored image type: what inputs are divided by before
# data.mean/std apply (both in 0..1 units, as albumentations' Normalize takes them).
MAX_PIXEL_VALUES = {"uint8": 255.0, "uint16": 65535.0}
DEPTH_FIX = "store 8- or 16-bit images (scale other types to 0..65535 and save as 16-bit PNG or TIFF)"


def is_8_bit_grey_or_colour(dtype: str, bands: int) -> bool:
    """Images as pretrained encoders (ImageNet's statistics) and albumentations' colour transforms
    assume them; others are normalised per band from the data and have their augmentations tried."""
    return dtype == "uint8" and bands in (1, 3)


# The stored bands a TIFF of other bands than data.in_channels may have, converted as OpenCV
# converts other formats: grey repeated or RGBA's alpha dropped for 3; RGB(A) to grey for 1.
CONVERTED_BANDS = {3: (1, 4), 1: (3, 4)}


def read_image(path: Path | str, in_channels: int) -> np.ndarray:
    """Reads an image as H x W x ``in_channels``, uint8 or uint16 as stored, bands in file order.

    For ``in_channels`` 1 and 3, images with other channels are converted as OpenCV does (colour
    to grey, grey repeated, alpha dropped; the data check warns of each); for any other number of
    bands the image must have exactly that many.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        image = _to_channels(read_tiff(path), in_channels, path)
    else:
        image = _read_with_opencv(path, in_channels)
    if image.dtype.name not in MAX_PIXEL_VALUES:
        raise DataError(f"{path}: a {image.dtype} image; {DEPTH_FIX}.")
    return image


def _read_with_opencv(path: Path, in_channels: int) -> np.ndarray:
    if in_channels == 1:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    elif in_channels == 3:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        image = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:  # multi-band: every stored channel, in file order
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is not None and image.ndim == 3 and image.shape[2] in (3, 4):
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    if image is None:
        raise DataError(f"{path}: cannot read this image (missing, truncated or not an image file).")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] != in_channels:
        raise DataError(f"{path}: image has {image.shape[2]} channels but data.in_channels={in_channels}.")
    return image


def _to_channels(image: np.ndarray, in_channels: int, path: Path) -> np.ndarray:
    """A tifffile image (H, W, bands) converted to ``in_channels`` as OpenCV converts on reading."""
    bands = image.shape[2]
    if bands == in_channels:
        return image
    if bands not in CONVERTED_BANDS.get(in_channels, ()):
        raise DataError(f"{path}: image has {bands} bands but data.in_channels={in_channels}.")
    if in_channels == 3:  # grey repeated; RGBA's alpha dropped
        return np.ascontiguousarray(np.repeat(image, 3, axis=2) if bands == 1 else image[..., :3])
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)[..., None]


@dataclass(frozen=True)
class TiffLayout:
    """Where a TIFF's image is: the series read, and which of its axes hold the bands.

    ``series``: the indices of the series whose 2-D images are the bands (a file of one band per
    page), or the one series whose axes (``axes``) besides Y and X hold the bands.
    """

    height: int
    width: int
    bands: int
    dtype: str
    series: tuple[int, ...]
    axes: str
    data_end: int  # the file offset where the image data ends: a shorter file was cut short


def tiff_layout(tif: tifffile.TiffFile, path: Path) -> TiffLayout:
    """The image of an open TIFF: its first series (a GeoTIFF's full resolution, not its overviews),
    or, when that is one 2-D page, the run of series of the same shape and type (one band per page).

    Raises:
        DataError: an image of more than one non-spatial axis (a time series of multi-band images,
            a z-stack of channels): which of them are the bands is not known.
    """
    first = tif.series[0]
    axes, shape = first.axes, first.shape
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: a TIFF without a 2-D image (axes {axes}); store one image per file.")
    others = [(axis, size) for axis, size in zip(axes, shape, strict=True) if axis not in "YX" and size > 1]
    if len(others) > 1:
        described = ", ".join(f"{axis}={size}" for axis, size in others)
        raise DataError(
            f"{path}: a TIFF of axes {axes} ({described}): more than one axis besides height and width. "
            "Store one image of bands per file (height x width x bands, or one band per page)."
        )
    series = (0,)
    bands = others[0][1] if others else 1
    if not others:  # one band per page: the following series of the same shape and type
        same = [
            i for i, s in enumerate(tif.series) if s.shape == first.shape and s.dtype == first.dtype and s.axes == axes
        ]
        series = tuple(same[: _run_length(same)])
        bands = len(series)
    pages = [page for index in series for page in tif.series[index].pages if page is not None]
    data_end = max(
        (offset + count for page in pages for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)),
        default=0,
    )
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    return TiffLayout(height, width, bands, first.dtype.name, series, axes, data_end)


def _run_length(indices: list[int]) -> int:
    """How many of ``indices`` (ascending, starting at 0) follow one another without a gap."""
    run = 1
    while run < len(indices) and indices[run] == run:
        run += 1
    return run


def read_tiff(path: Path) -> np.ndarray:
    """A TIFF's image as (H, W, bands), bands in file order (see ``tiff_layout``)."""
    try:
        with tifffile.TiffFile(path) as tif:
            layout = tiff_layout(tif, path)
            if len(layout.series) > 1:
                return np.stack([tif.series[i].asarray() for i in layout.series], axis=-1)
            image = tif.series[0].asarray()
    except (OSError, ValueError, tifffile.TiffFileError, KeyError, IndexError) as error:
        raise DataError(f"{path}: cannot read this TIFF ({error}); re-export it, or remove it and its mask.") from error
    axes = layout.axes
    keep = [axes.index("Y"), axes.index("X")] + [i for i, axis in enumerate(axes) if axis not in "YX"]
    image = image.transpose(keep).reshape(layout.height, layout.width, -1)  # size-1 axes fold away
    return np.ascontiguousarray(image)


def is_palette_png(path: Path | str) -> bool:
    """True for a PNG whose pixels are palette indices (colour type 3 in its IHDR header)."""
    with open(path, "rb") as f:
        header = f.read(26)
    return header[:8] == b"\x89PNG\r\n\x1a\n" and len(header) == 26 and header[25] == 3


def read_mask(path: Path | str) -> np.ndarray:
    """Reads a stored mask exactly as stored (no colour conversion, 16-bit kept).

    Palette PNGs (as Pascal VOC ships) are read as their indices: OpenCV would expand them to
    colours, so they go through Pillow, which keeps the indices.
    """
    try:
        if is_palette_png(path):
            with Image.open(path) as image:
                return np.asarray(image)
    except (OSError, SyntaxError):  # Pillow's errors for truncated or corrupt files
        pass  # reported below as unreadable
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DataError(f"{path}: cannot read this mask (missing, truncated or not an image file).")
    return mask
