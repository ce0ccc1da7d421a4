"""Reading image and mask files as stored."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from semseg.errors import DataError


def read_image(path: Path | str, in_channels: int) -> np.ndarray:
    """Reads an image as HxWxC uint8 (RGB order for 3 channels)."""
    if in_channels == 1:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    elif in_channels == 3:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        image = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:  # multi-band imagery (e.g. 4-band GeoTIFF): keep every stored channel
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot read this image (missing, truncated or not an image file).")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] != in_channels:
        raise DataError(f"{path}: image has {image.shape[2]} channels but data.in_channels={in_channels}.")
    return image


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
