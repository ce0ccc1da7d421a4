"""The task's modes (``data.mode``) and the masks of each: multiclass and binary masks are one class
index per pixel (``MaskEncoder``), multi-label masks one 0/1 plane per class (``MultilabelMaskEncoder``).

A multi-label mask is stored either as a folder ``masks/<split>/<stem>/`` holding one
``<class name>.png`` per class (nonzero = present; a class without a file is absent everywhere), or
as one image of C channels (channel i = class i, nonzero = present). Both read to the same uint8
H x W x C array of 0/1, ``MASK_PAD_CODE`` where a stored ``data.ignore_index`` marks a pixel ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semseg.data.image_checks import check_images, image_headers
from semseg.data.mask_codes import MASK_PAD_CODE
from semseg.data.mask_encoding import MaskEncoder
from semseg.data.reading import read_mask
from semseg.errors import ConfigError, DataError

MULTICLASS, BINARY, MULTILABEL = "multiclass", "binary", "multilabel"
MODES = (MULTICLASS, BINARY, MULTILABEL)
BACKGROUND = "background"  # the name of a binary task's class 0 wherever both classes are listed


def check_mode(mode: str, num_classes: int) -> str:
    """``data.mode``, checked against ``data.num_classes``.

    Raises:
        ConfigError: an unknown mode, or a binary task of more than one class.
    """
    if mode not in MODES:
        raise ConfigError(f"data.mode={mode}: choose one of {', '.join(MODES)}.")
    if mode == BINARY and num_classes != 1:
        raise ConfigError(
            f"data.mode=binary takes data.num_classes=1 (the foreground; 0 is background), not {num_classes}: "
            "set data.num_classes=1 and data.class_names=[<foreground name>], or use data.mode=multiclass."
        )
    return mode


def check_threshold(threshold: float) -> float:
    """``data.threshold``: the probability above which a sigmoid output counts as present."""
    if not 0 < float(threshold) < 1:
        raise ConfigError(f"data.threshold={threshold}: a probability strictly between 0 and 1 (e.g. 0.5).")
    return float(threshold)


def mask_encoder(
    mode: str,
    num_classes: int,
    class_names: Sequence[str],
    ignore_index: int | None,
    label_map: Mapping | str | None,
    root: str | Path = ".",
) -> MaskEncoder | MultilabelMaskEncoder:
    """The encoder of a mode's masks: binary masks are two-class index masks (0 background,
    1 foreground, e.g. through ``label_map: {0: 0, 255: 1}``)."""
    check_mode(mode, num_classes)
    if mode == MULTILABEL:
        return MultilabelMaskEncoder(list(class_names), ignore_index)
    if mode == BINARY:
        return MaskEncoder(2, ignore_index, label_map, [BACKGROUND, *class_names], root)
    return MaskEncoder(num_classes, ignore_index, label_map, list(class_names), root)


class MultilabelMaskEncoder:
    """Reads a multi-label mask (a folder of per-class PNGs or a C-channel image) as uint8 H x W x C.

    Args:
        class_names: the C classes, in order; a folder's files are named by them.
        ignore_index: a stored value that marks a pixel ignored (in any class plane), or None.
    """

    colours = None  # the colour-mask interface of MaskEncoder: none here

    def __init__(self, class_names: Sequence[str], ignore_index: int | None):
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index

    def fingerprint(self) -> bytes:
        """Bytes that change when the encoding does (the sample cache's key)."""
        return hashlib.sha1(f"multilabel|{self.class_names}|{self.ignore_index}".encode()).digest()

    def encode_file(self, path: Path | str) -> np.ndarray:
        """The (H, W, C) uint8 0/1 planes of the mask at ``path`` (a folder or an image)."""
        path = Path(path)
        planes = self._folder_planes(path) if path.is_dir() else self._image_planes(path)
        return self._encode(planes, path)

    def _folder_planes(self, folder: Path) -> list[np.ndarray | None]:
        files = {p.stem: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
        unknown = sorted(set(files) - set(self.class_names))
        if unknown:
            raise DataError(
                f"{folder}: files {unknown} name no class of data.class_names {self.class_names}; "
                "name each file <class name>.png, or fix data.class_names."
            )
        if not files:
            raise DataError(f"{folder}: no class file; add <class name>.png files for the classes present.")
        planes = []
        for name in self.class_names:
            plane = read_mask(files[name]) if name in files else None
            if plane is not None and plane.ndim != 2:
                raise DataError(f"{files[name]}: a class plane must be a single-channel image (nonzero = present).")
            planes.append(plane)
        return planes

    def _image_planes(self, path: Path) -> list[np.ndarray | None]:
        stored = read_mask(path)
        channels = 1 if stored.ndim == 2 else stored.shape[2]
        if channels != self.num_classes:
            raise DataError(
                f"{path}: mask has {channels} channel(s) but data.num_classes={self.num_classes}; a multi-label mask "
                "is an image of one channel per class, or a folder <stem>/ of one <class name>.png per class."
            )
        if stored.ndim == 2:
            return [stored]
        # OpenCV reads 3- and 4-channel images as BGR(A): back to the stored channel order.
        order = {3: [2, 1, 0], 4: [2, 1, 0, 3]}.get(channels, list(range(channels)))
        return [stored[..., i] for i in order]

    def _encode(self, planes: list[np.ndarray | None], path: Path) -> np.ndarray:
        shapes = {p.shape for p in planes if p is not None}
        if len(shapes) != 1:
            raise DataError(f"{path}: its class planes differ in size {sorted(shapes)}; give them all one size.")
        shape = shapes.pop()
        out = np.zeros((*shape, self.num_classes), np.uint8)
        ignored = np.zeros(shape, bool)
        for index, plane in enumerate(planes):
            if plane is None:
                continue
            if self.ignore_index is not None:
                ignored |= plane == self.ignore_index
            out[..., index] = plane != 0
        out[ignored] = MASK_PAD_CODE
        return out


def inspect_multilabel(data: Mapping, layout, class_names: list[str], full: bool = False):
    """The data inspection of a multi-label set: every split paired (a mask is a folder or an
    image), the images checked as in any task (``image_checks``; ``full`` decodes them), every mask
    read, each class's present pixels counted (a ``DataReport``)."""
    from semseg.data.class_weights import ClassCounts
    from semseg.data.inspection import DataReport, SplitReport
    from semseg.data.pairing import SPLITS
    from semseg.errors import Problem

    encoder = MultilabelMaskEncoder(class_names, data.get("ignore_index"))
    problems, splits, pairs_by_split = [], {}, {}
    for split in SPLITS:
        if split == "test" and not layout.has_split("test"):
            continue
        pairs_by_split[split], found = layout.find_pairs(split, require_masks=split != "test")
        problems += found
    root = Path(data["root"])
    headers = image_headers(root, [image for pairs in pairs_by_split.values() for image, _ in pairs], full)
    for split, pairs in pairs_by_split.items():
        labelled = bool(pairs) and pairs[0][1] is not None
        report = SplitReport(len(pairs), labelled, ClassCounts.zeros(len(class_names)) if labelled else None)
        for image_path, mask_path in pairs:
            header = headers[image_path]
            if header.problem:
                problems.append(header.problem)
                continue
            height, width = header.size
            key = f"{width}x{height}"
            report.image_sizes[key] = report.image_sizes.get(key, 0) + 1
            if mask_path is None:
                continue
            try:
                planes = encoder.encode_file(mask_path)
            except DataError as error:
                problems.append(Problem(str(mask_path), str(error).removeprefix(f"{mask_path}: "), "fix the mask."))
                continue
            if planes.shape[:2] != (height, width):
                size = f"{planes.shape[1]}x{planes.shape[0]}"
                problems.append(Problem(str(mask_path), f"is {size} but its image is {key}.", "give them one size."))
                continue
            ignored = planes == MASK_PAD_CODE
            report.ignored_pixels += int(ignored[..., 0].sum())
            report.add(mask_path, ((planes == 1) & ~ignored).sum(axis=(0, 1)).astype(np.int64))
        splits[split] = report
    images = check_images(headers, data.get("in_channels", 3))
    notes = [f"data.mode=multilabel: {len(class_names)} classes, each present or absent at every pixel."]
    return DataReport(
        root, list(class_names), splits, problems + images.problems, images.warnings, notes + images.notes,
        image_dtype=images.dtype, image_bands=images.bands,
    )  # fmt: skip
