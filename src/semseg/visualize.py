"""Colours for class masks: one palette for every picture (report, run folder, W&B, predict)."""

from __future__ import annotations

import numpy as np

IGNORE_COLOUR = (255, 255, 255)  # ignored pixels are white in every picture


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 RGB colours: Pascal VOC's colour map (class 0 black, then dark red,
    green, olive, ...), which spreads the bits of the class index over the three channels."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for index in range(num_classes):
        value, colour = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[index] = colour
    return palette


def colorize(mask: np.ndarray, palette: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB; ``ignore_index`` pixels white."""
    ignored = mask == ignore_index if ignore_index is not None else np.zeros(mask.shape, bool)
    rgb = palette[np.where(ignored, 0, mask).clip(0, len(palette) - 1)]
    rgb[ignored] = IGNORE_COLOUR
    return rgb


def to_display(image: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """A normalised (C, H, W) float image back to (H, W, 3) uint8 for display (first 3 channels,
    grayscale repeated)."""
    channels = image.shape[0]
    pixels = image * np.asarray(std)[:channels, None, None] + np.asarray(mean)[:channels, None, None]
    pixels = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(pixels, 3, axis=2) if channels == 1 else pixels[..., :3]
