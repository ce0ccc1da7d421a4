"""Mask colours: the VOC palette, ignored pixels in white, and images shown as they were read."""

from __future__ import annotations

import numpy as np

from semseg.visualize import IGNORE_COLOUR, class_palette, colorize, to_display


def test_palette_is_pascal_vocs_and_distinct():
    palette = class_palette(21)
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]  # VOC's "person"
    assert len({tuple(c) for c in palette.tolist()}) == 21


def test_colorize_paints_classes_and_ignored_pixels():
    mask = np.array([[0, 1], [2, 255]])
    rgb = colorize(mask, class_palette(3), ignore_index=255)
    assert rgb[0, 1].tolist() == [128, 0, 0] and rgb[1, 0].tolist() == [0, 128, 0]
    assert tuple(rgb[1, 1]) == IGNORE_COLOUR


def test_to_display_undoes_the_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (1, 4, 5)).astype(np.uint8)
    normalised = (image / 255.0 - 0.5) / 0.2
    shown = to_display(normalised, [0.5], [0.2])
    assert shown.shape == (4, 5, 3) and np.array_equal(shown[..., 1], image[0])
