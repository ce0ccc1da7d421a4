"""Colours of class masks, one palette for every picture (report, run folder, W&B, predict), and
normalised images turned back into pixels for display."""

from __future__ import annotations

import functools

import numpy as np

IGNORE_COLOUR = (255, 255, 255)  # ignored pixels are white in every picture
BACKGROUND_COLOUR = (0, 0, 0)  # class 0, usually the background, is black
# Class colours are this light (CIELAB L*, 0-100) at least, so none is lost on the black class 0
# (Pascal VOC's navy was), and this light at most, so none is mistaken for ignored white.
LIGHTNESS = (50.0, 90.0)


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 RGB colours, the default one: class 0 black, then colours chosen one
    by one as far as possible (in CIELAB, which measures difference as the eye sees it) from black,
    ignored white and every colour chosen before (Glasbey's method), so that each class stands out
    from the background and from its neighbours; the first ones are the most distinct."""
    colours = _distinct_colours(max(num_classes - 1, 0))
    palette = np.zeros((num_classes, 3), np.uint8)
    palette[:1] = BACKGROUND_COLOUR
    for index in range(1, num_classes):
        palette[index] = colours[(index - 1) % len(colours)]  # repeats only past ~2000 classes
    return palette


@functools.cache
def _distinct_colours(count: int) -> np.ndarray:
    """The first ``count`` colours of the greedy order (fewer when the candidates run out)."""
    levels = np.linspace(0, 255, 18).round()
    candidates = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = _srgb_to_lab(candidates)
    allowed = (lab[:, 0] >= LIGHTNESS[0]) & (lab[:, 0] <= LIGHTNESS[1])
    candidates, lab = candidates[allowed], lab[allowed]
    taken = _srgb_to_lab(np.array([BACKGROUND_COLOUR, IGNORE_COLOUR], float))
    distance = np.linalg.norm(lab[:, None] - taken[None], axis=2).min(axis=1)
    order = []
    for _ in range(min(count, len(candidates))):
        chosen = int(np.argmax(distance))
        order.append(chosen)
        distance = np.minimum(distance, np.linalg.norm(lab - lab[chosen], axis=1))
    return candidates[order].astype(np.uint8)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) sRGB 0-255 -> (N, 3) CIELAB (D65 white)."""
    c = rgb / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def pascal_voc_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 RGB: Pascal VOC's colour map (class 0 black, then dark red, green,
    olive, ...), which spreads the bits of the class index over the three channels. Not the default
    (its dark colours vanish on black); for matching pictures made with VOC's colours, give it as
    ``data.palette``."""
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


def to_display(image: np.ndarray, mean: list[float], std: list[float], stretch: bool = False) -> np.ndarray:
    """A normalised (C, H, W) float image back to (H, W, 3) uint8 for display: its first 3 bands,
    or its first band as grey when it has fewer. ``stretch``: each band's 1st to 99th percentile
    spread over 0..255, for 16-bit images, whose values often fill a small part of 0..65535 (a dim
    microscope channel)."""
    channels = 3 if image.shape[0] >= 3 else 1
    pixels = image[:channels] * np.asarray(std)[:channels, None, None] + np.asarray(mean)[:channels, None, None]
    return _rgb8(pixels.transpose(1, 2, 0), stretch)


def stored_to_display(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) image as stored (uint8 or uint16) -> (H, W, 3) uint8 for display: its first 3
    bands or its first band as grey; 16-bit images stretched as ``to_display`` does."""
    pixels = image[..., :3] if image.shape[2] >= 3 else image[..., :1]
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels)
    return _rgb8(pixels.astype(np.float32), stretch=True)


def _rgb8(pixels: np.ndarray, stretch: bool) -> np.ndarray:
    """(H, W, 1 or 3) values in 0..1 (or any range, with ``stretch``) -> (H, W, 3) uint8."""
    if stretch:
        low, high = np.percentile(pixels.reshape(-1, pixels.shape[2]), [1, 99], axis=0)
        pixels = (pixels - low) / np.maximum(high - low, 1e-6)
    pixels = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels)


def blend_planes(planes: np.ndarray, palette: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """(K, H, W) presence planes of a multi-label mask -> (H, W, 3) uint8 RGB: the mean colour of
    each pixel's present classes, black where none is, white where ``ignore_index`` marks it."""
    ignored = (planes == ignore_index).any(axis=0) if ignore_index is not None else np.zeros(planes.shape[1:], bool)
    present = (planes == 1).astype(np.float32)
    total = np.einsum("khw,kc->hwc", present, palette[: len(planes)].astype(np.float32))
    count = present.sum(axis=0)[..., None]
    rgb = np.where(count > 0, total / np.maximum(count, 1), 0).round().astype(np.uint8)
    rgb[ignored] = IGNORE_COLOUR
    return rgb


def colorize_mode(mask: np.ndarray, palette: np.ndarray, mode: str, ignore_index: int | None = None) -> np.ndarray:
    """A target or prediction as ``data.mode`` holds it -> (H, W, 3) uint8 RGB: class indices in their
    colours (multiclass), the foreground in its colour on black (binary, ``palette`` of the one
    class), or the blend of each pixel's present classes (multilabel, (K, H, W) planes)."""
    if mode == "multilabel":
        return blend_planes(mask, palette, ignore_index)
    if mode == "binary":
        palette = np.concatenate([np.array([BACKGROUND_COLOUR], np.uint8), palette[:1]])
    return colorize(mask, palette, ignore_index)
