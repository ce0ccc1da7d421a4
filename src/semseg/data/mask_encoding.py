"""Stored mask values -> class indices (``data.label_map``, ``data.ignore_index``), refusing the rest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from semseg.data.colour_labels import ColourMap, class_of, is_colour_label_map
from semseg.data.mask_codes import MASK_PAD_CODE
from semseg.data.reading import read_mask
from semseg.errors import DataError

INVALID_CODE = np.uint16(0xFFFF)


def resolve_class_names(
    num_classes: int,
    class_names: list[str] | None,
    label_map: object = None,
    ignore_index: int | None = None,
    root: str | Path = ".",
) -> list[str]:
    """``data.class_names``; when not given, a palette file's names (``label_map``, see
    ``colour_labels``), else ``class_0..class_{C-1}``; checked against C."""
    if not class_names and isinstance(label_map, (str, Path)):
        class_names = ColourMap.from_config(label_map, num_classes, ignore_index, None, root).names
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"data.class_names has {len(names)} names but data.num_classes={num_classes}.")
    return names


class MaskEncoder:
    """Turns stored mask values into class indices, refusing values that are not classes.

    A lookup table maps every storable value (uint8 or uint16) to a class, to ``MASK_PAD_CODE``
    for ``ignore_index``, or to an invalid marker that makes ``encode`` raise. So a 0/255 mask
    without a label_map is an error, never 256 classes. Colour masks (a label_map of RGB colours,
    or a palette file) are encoded by ``colour_labels.ColourMap`` instead; ``class_names`` resolve
    label_map values given as names, ``root`` a palette file's relative path.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None,
        label_map: Mapping[int, int] | str | None,
        class_names: list[str] | None = None,
        root: str | Path = ".",
    ):
        if not 1 <= num_classes <= 254:
            raise DataError(f"data.num_classes={num_classes}: must be between 1 and 254.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.lut = np.full(65536, INVALID_CODE, dtype=np.uint16)
        # Colour masks (label_map of RGB colours or a palette file): ColourMap encodes them, and the
        # value table stays all invalid, so a single-channel mask is no class.
        self.colours = None
        if is_colour_label_map(label_map):
            self.colours = ColourMap.from_config(label_map, num_classes, ignore_index, class_names, root)
        elif label_map:
            for stored, cls in label_map.items():
                self.lut[self._storable(stored)] = self._class_code(class_of(cls, class_names, stored), stored)
        else:
            self.lut[:num_classes] = np.arange(num_classes)
        values = self.colours is None
        if values and ignore_index is not None and 0 <= ignore_index < 65536 and self.lut[ignore_index] == INVALID_CODE:
            self.lut[ignore_index] = MASK_PAD_CODE  # a stored ignore value stays ignored

    def _storable(self, stored: object) -> int:
        value = int(stored)  # type: ignore[call-overload]
        if not 0 <= value < 65536:
            raise DataError(f"data.label_map key {stored}: stored mask values are 0..65535.")
        return value

    def _class_code(self, cls: int, stored: object) -> int:
        if cls == self.ignore_index:
            return MASK_PAD_CODE
        if not 0 <= cls < self.num_classes:
            raise DataError(
                f"data.label_map maps {stored} -> {cls}, but classes are 0..{self.num_classes - 1} "
                f"(data.num_classes) and data.ignore_index is {self.ignore_index}."
            )
        return cls

    def fingerprint(self) -> bytes:
        """Bytes that change when the encoding does (the sample cache's key)."""
        return self.colours.fingerprint() if self.colours is not None else self.lut.tobytes()

    def encode_file(self, path: Path | str) -> np.ndarray:
        """The uint8 class mask of the mask file at ``path`` (``encode`` of it as stored)."""
        return self.encode(read_mask(path), path)

    def encode(self, stored: np.ndarray, path: Path | str) -> np.ndarray:
        """Returns the uint8 class mask of a stored (HxW, uint8/uint16) mask read from ``path``."""
        if self.colours is not None:
            return self.colours.encode(stored, path)
        if stored.ndim != 2:
            raise DataError(
                f"{path}: mask has {stored.shape[2]} channels; masks must be single-channel images "
                'of class indices, or colour masks mapped by data.label_map (e.g. {"[128,64,128]": 0}).'
            )
        if stored.dtype not in (np.uint8, np.uint16):
            raise DataError(f"{path}: mask dtype {stored.dtype}; store masks as 8- or 16-bit PNG.")
        classes = self.lut[stored]
        invalid = classes == INVALID_CODE
        if invalid.any():
            bad = np.unique(stored[invalid])[:10].tolist()
            raise DataError(
                f"{path}: mask values {bad} are not classes 0..{self.num_classes - 1}. Map them with "
                f"data.label_map (e.g. {{0: 0, 255: 1}} for 0/255 masks), set data.ignore_index, or "
                "fix data.num_classes."
            )
        return classes.astype(np.uint8)
