"""Per-class loss weights: a list, a mapping, a file, or computed from the training masks.

``loss.class_weights: auto`` is median-frequency balancing (Eigen & Fergus 2015, as SegNet uses);
``inverse_frequency`` is the other classic. Both come from pixel counts of the training masks (see
``semseg.data.inspection``, which counts them in one cached pass). Neither torch nor smp computes class
weights from data, hence this module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semseg.errors import ConfigError

METHODS = ("median_frequency", "inverse_frequency")
AUTO = "median_frequency"  # what `auto` means


@dataclass
class ClassCounts:
    """Labelled-pixel statistics of one split, per class.

    Attributes:
        pixels: pixels of each class.
        images: masks in which each class appears.
        image_pixels: labelled pixels of the masks in which each class appears.
        num_images: masks counted.
    """

    pixels: np.ndarray
    images: np.ndarray
    image_pixels: np.ndarray
    num_images: int

    @classmethod
    def zeros(cls, num_classes: int) -> ClassCounts:
        return cls(*(np.zeros(num_classes, np.int64) for _ in range(3)), num_images=0)

    def add(self, class_pixels: np.ndarray) -> None:
        """Counts one mask, given its pixels per class."""
        present = class_pixels > 0
        self.pixels += class_pixels
        self.images += present
        self.image_pixels += present * class_pixels.sum()
        self.num_images += 1

    @property
    def frequency(self) -> np.ndarray:
        """Share of the labelled pixels that each class holds."""
        return self.pixels / max(int(self.pixels.sum()), 1)


def weights_from_counts(counts: ClassCounts, method: str) -> list[float]:
    """Class weights by ``method``: ``median_frequency`` or ``inverse_frequency``.

    - inverse_frequency: ``w_c = 1 / (K * f_c)`` with ``f_c`` the class's share of all labelled
      pixels and K the number of classes present, so the pixel-weighted mean weight is 1
      (scikit-learn's "balanced").
    - median_frequency: ``w_c = median(g) / g_c`` with ``g_c`` the class's pixels over the pixels of
      the images in which it appears (Eigen & Fergus 2015), so the median class weighs 1.

    A class with no training pixels gets 1: it never is a target, so its weight changes nothing.
    """
    present = counts.pixels > 0
    if not present.any():
        raise ConfigError("loss.class_weights: the training masks hold no labelled pixel to count.")
    weights = np.ones(len(counts.pixels))
    if method == "inverse_frequency":
        weights[present] = 1.0 / (present.sum() * counts.frequency[present])
    elif method == "median_frequency":
        frequency = counts.pixels[present] / counts.image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    else:
        raise ConfigError(f"unknown class weighting '{method}'; valid: auto, {', '.join(METHODS)}.")
    return [round(float(w), 4) for w in weights]


def _from_mapping(weights: Mapping, class_names: Sequence[str], source: str) -> list[float]:
    unknown = sorted(set(weights) - set(class_names))
    missing = [name for name in class_names if name not in weights]
    if unknown or missing:
        raise ConfigError(
            f"{source}: names weights for {unknown or 'no unknown classes'} and misses {missing or 'none'}; "
            f"give one weight per class of data.class_names {list(class_names)}."
        )
    return [weights[name] for name in class_names]


def read_weights_file(path: Path, class_names: Sequence[str]) -> list[float]:
    """Weights from ``.json`` (a list, or ``{class_name: weight}``) or text (numbers split by commas,
    spaces or lines)."""
    source = f"loss.class_weights={path}"
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            loaded = json.loads(text)
            return _from_mapping(loaded, class_names, source) if isinstance(loaded, dict) else list(loaded)
        return [float(token) for token in re.split(r"[\s,;]+", text.strip()) if token]
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"{source}: cannot read weights ({error}); write a JSON list or numbers in text.") from None


def _checked(weights: Sequence, num_classes: int, source: str) -> list[float]:
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: weights must be numbers, got {list(weights)}.") from None
    if len(values) != num_classes:
        raise ConfigError(f"{source}: {len(values)} weights but data.num_classes={num_classes}; give one per class.")
    if not all(math.isfinite(w) and w >= 0 for w in values):
        raise ConfigError(f"{source}: weights must be finite and non-negative, got {values}.")
    return values


def resolve_class_weights(
    spec: object, class_names: Sequence[str], train_counts: ClassCounts | None
) -> list[float] | None:
    """``loss.class_weights`` as a list of floats (or None).

    Args:
        spec: null; a list; a mapping of class name -> weight; ``auto``, ``median_frequency`` or
            ``inverse_frequency``; or the path of a weights file.
        class_names: the data set's classes, in index order.
        train_counts: the training split's pixel counts (needed only for the computed methods).
    """
    source = f"loss.class_weights={spec!r}"
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return _checked(_from_mapping(spec, class_names, source), len(class_names), source)
    if isinstance(spec, str):
        method = AUTO if spec == "auto" else spec
        if method in METHODS:
            if train_counts is None:
                raise ConfigError(f"{source} needs the training masks' pixel counts; none were given.")
            return weights_from_counts(train_counts, method)
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{source}: neither a method (auto, {', '.join(METHODS)}) nor an existing file. "
                "Give a list such as [0.5, 2.0], a method, or a .json/.txt weights file."
            )
        return _checked(read_weights_file(path, class_names), len(class_names), f"loss.class_weights={path}")
    if isinstance(spec, Sequence):
        return _checked(spec, len(class_names), source)
    raise ConfigError(f"{source}: give a list, a mapping of class names, auto, a method or a file.")
