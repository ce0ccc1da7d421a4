"""Image-mask folders: pairing by file stem, lazy reading, and stored mask values -> classes."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from semseg.data.batch import MASK_PAD_CODE
from semseg.data.sampling import sample_seed
from semseg.errors import DataError, Problem, problems_message

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
SPLITS = ("train", "val", "test")

INVALID_CODE = np.uint16(0xFFFF)


def resolve_class_names(num_classes: int, class_names: list[str] | None) -> list[str]:
    """``data.class_names``, or ``class_0..class_{C-1}`` when not given; checked against C."""
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"data.class_names has {len(names)} names but data.num_classes={num_classes}.")
    return names


def index_images(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    """Maps stem -> path for the image files directly in ``folder``; two files of one stem are a problem.

    os.scandir reads names and types in one system call per directory block, which keeps a
    10,000-file folder scan fast (no per-file stat).
    """
    files: dict[str, Path] = {}
    problems = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() not in IMAGE_EXTENSIONS or entry.name.startswith("."):
                continue
            if stem in files:
                problems.append(
                    Problem(
                        entry.path,
                        f"shares its stem with {files[stem].name}; pairs are matched by stem.",
                        "keep one of the two files.",
                    )
                )
                continue
            files[stem] = Path(entry.path)
    return files, problems


def has_split(root: str | os.PathLike, split: str) -> bool:
    """True when ``root/images/<split>`` holds at least one image (the test split is optional)."""
    folder = Path(root) / "images" / split
    return folder.is_dir() and bool(index_images(folder)[0])


def find_pairs(
    root: str | os.PathLike, split: str, require_masks: bool = True
) -> tuple[list[tuple[Path, Path | None]], list[Problem]]:
    """Pairs ``root/images/<split>`` with ``root/masks/<split>`` by file stem, sorted by stem.

    Returns the pairs that match and the problems found (a missing folder, an empty split, an
    image without a mask or a mask without an image), each naming its file and the fix.
    With ``require_masks=False`` a split without a masks folder yields ``(image, None)`` pairs.
    """
    root = Path(root)
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    if not image_dir.is_dir():
        fix = f"data.root must hold images/{{train,val,test}} and masks/{{train,val,test}} (data.root={root})."
        return [], [Problem(str(image_dir), "no such folder.", fix)]
    images, problems = index_images(image_dir)
    if not images:
        problems.append(Problem(str(image_dir), "holds no images.", f"add {', '.join(IMAGE_EXTENSIONS)} files."))
        return [], problems
    if not mask_dir.is_dir():
        if require_masks:
            problems.append(
                Problem(str(mask_dir), "no such folder.", f"every image of the {split} split needs a mask.")
            )
            return [], problems
        return [(images[s], None) for s in sorted(images)], problems
    masks, mask_problems = index_images(mask_dir)
    problems += mask_problems
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(
            Problem(str(images[stem]), f"has no mask in {mask_dir}.", f"add {stem}.png there or remove the image.")
        )
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(Problem(str(masks[stem]), f"has no image in {image_dir}.", "add its image or remove the mask."))
    return [(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())], problems


def list_pairs(root: str | os.PathLike, split: str, require_masks: bool = True) -> list[tuple[Path, Path | None]]:
    """``find_pairs`` that raises on any problem.

    Raises:
        DataError: a missing folder, an empty split, or an image without a mask (or the reverse).
    """
    pairs, problems = find_pairs(root, split, require_masks)
    if problems:
        raise DataError(problems_message(problems, f"the {split} split of {root} does not pair up:"))
    return pairs


class MaskEncoder:
    """Turns stored mask values into class indices, refusing values that are not classes.

    A lookup table maps every storable value (uint8 or uint16) to a class, to ``MASK_PAD_CODE``
    for ``ignore_index``, or to an invalid marker that makes ``encode`` raise. So a 0/255 mask
    without a label_map is an error, never 256 classes.
    """

    def __init__(self, num_classes: int, ignore_index: int | None, label_map: Mapping[int, int] | None):
        if not 1 <= num_classes <= 254:
            raise DataError(f"data.num_classes={num_classes}: must be between 1 and 254.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.lut = np.full(65536, INVALID_CODE, dtype=np.uint16)
        if label_map:
            for stored, cls in label_map.items():
                self.lut[self._storable(stored)] = self._class_code(int(cls), stored)
        else:
            self.lut[:num_classes] = np.arange(num_classes)
        if ignore_index is not None and 0 <= ignore_index < 65536 and self.lut[ignore_index] == INVALID_CODE:
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

    def encode(self, stored: np.ndarray, path: Path | str) -> np.ndarray:
        """Returns the uint8 class mask of a stored (HxW, uint8/uint16) mask read from ``path``."""
        if stored.ndim != 2:
            raise DataError(
                f"{path}: mask has {stored.shape[2]} channels; masks must be single-channel images "
                "of class indices (convert colour masks to indices, or map them with data.label_map)."
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


class SegmentationDataset(Dataset):
    """Samples of one split: decoded, encoded and resized by ``source`` (from the files or from a
    cache, see ``semseg.data.samples``), then the per-epoch random steps of ``transform``.

    Each item is a dict: ``image`` (uint8 C x H x W), ``mask`` (uint8 H x W class codes,
    ``MASK_PAD_CODE`` where ignored; absent for unlabelled splits), ``name`` (file stem). Batches
    stay uint8 until they are on the training device (``semseg.data.batch.BatchPreparer``).
    Indexed by ``(index, epoch)`` (what ``EpochSampler`` yields), the augmentations are reseeded
    from ``(seed, epoch, index)`` first, so a sample's augmentation never depends on which worker
    reads it or on what that worker read before.
    """

    def __init__(self, pairs: list[tuple[Path, Path | None]], source, transform: Callable[..., dict], seed: int = 0):
        self.pairs = pairs
        self.source = source
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        if epoch is not None:
            self.transform.set_random_seed(sample_seed(self.seed, epoch, index))
        image, mask = self.source[index]
        name = self.pairs[index][0].stem
        if mask is None:
            return {"image": self.transform(image=image)["image"], "name": name}
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"], "name": name}
