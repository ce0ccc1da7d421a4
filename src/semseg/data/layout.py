"""Where a data set's splits are: ``images/<split>`` and ``masks/<split>`` folders (the default), or
list files (``data.split_files``) naming each split's samples.

A list file is either
- a text file of stems, one per line (Pascal VOC's ``ImageSets/Segmentation/train.txt``): each
  stem's image is looked up in ``data.image_folder`` and its mask in ``data.mask_folder`` (any
  image extension; blank lines and ``#`` comments skipped; only a line's first word counts), or
- a CSV (``.csv``) of ``image,mask`` paths, one pair per row (header optional; a test split may
  leave the mask column out or empty).
Relative paths, of the list files and in them, are relative to ``data.root``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from semseg.data.pairing import IMAGE_EXTENSIONS, find_pairs, has_split, index_images
from semseg.errors import ConfigError, DataError, Problem, problems_message

Pairs = list[tuple[Path, Path | None]]
CSV_HEADER = ("image", "mask")


@dataclass(frozen=True)
class DataLayout:
    """A data set's splits, from folders or from ``split_files`` (see the module docstring)."""

    root: Path
    split_files: Mapping[str, str] | None = None
    image_folder: str = "images"
    mask_folder: str = "masks"
    # Folders indexed once per layout: a split's stems are looked up in one scan, not one stat each.
    _indexes: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, data: Mapping) -> DataLayout:
        """The layout a ``data`` config describes."""
        split_files = data.get("split_files")
        if split_files is not None and not isinstance(split_files, Mapping):
            raise ConfigError(
                f"data.split_files={split_files}: give one list file per split, e.g. "
                "data.split_files='{train: lists/train.txt, val: lists/val.txt}'."
            )
        unknown = sorted(set(split_files or {}) - {"train", "val", "test"})
        if unknown:
            raise ConfigError(f"data.split_files has splits {unknown}: only train, val and test are read.")
        return cls(
            Path(data["root"]),
            dict(split_files) if split_files else None,
            data.get("image_folder") or "images",
            data.get("mask_folder") or "masks",
        )

    def describe(self, split: str) -> str:
        """What log lines and errors call the split, e.g. ``train split of /data/voc (lists/train.txt)``."""
        where = f" ({self.split_files[split]})" if self.split_files and split in self.split_files else ""
        return f"{split} split of {self.root}{where}"

    def has_split(self, split: str) -> bool:
        """True when the split's folder holds an image, or it has a list file: a listed split is
        there to be read, and a missing list file is a problem to report, not an absent split."""
        if self.split_files is None:
            return has_split(self.root, split)
        return split in self.split_files

    def has_labels(self, split: str) -> bool:
        """True when the split exists and its samples have masks."""
        if self.split_files is None:
            return (self.root / "masks" / split).is_dir() and has_split(self.root, split)
        if not self.has_split(split):
            return False
        pairs, _ = self.find_pairs(split, require_masks=False)
        return bool(pairs) and all(mask is not None for _, mask in pairs)

    def find_pairs(self, split: str, require_masks: bool = True) -> tuple[Pairs, list[Problem]]:
        """The split's (image, mask) pairs and the problems found, each naming its file and the fix."""
        if self.split_files is None:
            return find_pairs(self.root, split, require_masks)
        if split not in self.split_files:
            fix = f"add data.split_files.{split} (a list file), or train without that split."
            return [], [Problem(f"data.split_files.{split}", "not given.", fix)]
        list_file = self._list_file(split)
        if not list_file.is_file():
            fix = f"fix data.split_files.{split} (relative paths are relative to data.root={self.root})."
            return [], [Problem(str(list_file), "no such list file.", fix)]
        if list_file.suffix.lower() == ".csv":
            pairs, problems = self._csv_pairs(list_file, require_masks)
        else:
            pairs, problems = self._stem_pairs(list_file, require_masks)
        if not pairs and not problems:
            problems.append(Problem(str(list_file), "names no samples.", "list one sample per line."))
        return pairs, problems + _shared_stems(pairs, list_file)

    def list_pairs(self, split: str, require_masks: bool = True) -> Pairs:
        """``find_pairs`` that raises on any problem.

        Raises:
            DataError: a missing folder or list file, an empty split, or a sample without its files.
        """
        pairs, problems = self.find_pairs(split, require_masks)
        if problems:
            raise DataError(problems_message(problems, f"the {self.describe(split)} does not pair up:"))
        return pairs

    def _list_file(self, split: str) -> Path:
        return self.root / self.split_files[split]

    def _index(self, folder: str) -> tuple[Path, dict[str, Path]]:
        path = self.root / folder
        if folder not in self._indexes:
            self._indexes[folder] = index_images(path)[0] if path.is_dir() else {}
        return path, self._indexes[folder]

    def _stem_pairs(self, list_file: Path, require_masks: bool) -> tuple[Pairs, list[Problem]]:
        image_dir, images = self._index(self.image_folder)
        mask_dir, masks = self._index(self.mask_folder)
        found = [
            (
                f"{list_file}:{number}",
                stem,
                images.get(stem) or _find_nested(image_dir, stem),
                masks.get(stem) or _find_nested(mask_dir, stem) or _mask_folder(mask_dir, stem),
            )
            for number, stem in _stems(list_file)
        ]
        # A split is labelled as a whole or not at all: an unlabelled test list lists no stem with a mask.
        labelled = require_masks or any(mask is not None for *_, mask in found)
        pairs, problems = [], []
        for where, stem, image, mask in found:
            if image is None:
                fix = f"add {stem}.<ext> there, remove the line, or fix data.image_folder."
                problems.append(Problem(where, f"names {stem}, which has no image in {image_dir}.", fix))
            elif labelled and mask is None:
                fix = f"add {stem}.png there, remove the line, or fix data.mask_folder."
                problems.append(Problem(where, f"names {stem}, which has no mask in {mask_dir}.", fix))
            else:
                pairs.append((image, mask if labelled else None))
        return pairs, problems

    def _csv_pairs(self, list_file: Path, require_masks: bool) -> tuple[Pairs, list[Problem]]:
        pairs, problems = [], []
        with open(list_file, newline="") as f:
            rows = [(number, row) for number, row in enumerate(csv.reader(f), 1) if any(cell.strip() for cell in row)]
        if rows and tuple(cell.strip().lower() for cell in rows[0][1][:2]) in (CSV_HEADER, CSV_HEADER[:1]):
            rows = rows[1:]
        for number, row in rows:
            where = f"{list_file}:{number}"
            image = self.root / row[0].strip()
            mask = self.root / row[1].strip() if len(row) > 1 and row[1].strip() else None
            if not image.is_file():
                problems.append(Problem(where, f"image {image} does not exist.", "fix the path or remove the row."))
                continue
            if mask is None and require_masks:
                problems.append(Problem(where, f"{image.name} has no mask column.", "add its mask as column 2."))
                continue
            if mask is not None and not (mask.is_file() or mask.is_dir()):  # a folder: a multi-label mask
                problems.append(Problem(where, f"mask {mask} does not exist.", "fix the path or remove the row."))
                continue
            pairs.append((image, mask))
        if pairs and not require_masks and any(mask is None for _, mask in pairs):
            pairs = [(image, None) for image, _ in pairs]  # a split is labelled as a whole or not at all
        return pairs, problems


def _stems(list_file: Path) -> list[tuple[int, str]]:
    """(line number, stem) of every sample line: the first word, blank lines and comments skipped."""
    stems = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if words:
            stems.append((number, words[0]))
    return stems


def _find_nested(folder: Path, stem: str) -> Path | None:
    """The image ``folder/<stem>.<ext>`` where the stem has folders in it (``city/frame_001``)."""
    if "/" not in stem:
        return None
    for extension in IMAGE_EXTENSIONS:
        path = folder / f"{stem}{extension}"
        if path.is_file():
            return path
    return None


def _mask_folder(folder: Path, stem: str) -> Path | None:
    """A multi-label mask stored as the folder ``folder/<stem>/`` of per-class PNGs
    (``semseg.data.multilabel_masks``)."""
    path = folder / stem
    return path if path.is_dir() else None


def _shared_stems(pairs: Pairs, list_file: Path) -> list[Problem]:
    """Samples are named by their image's stem (predictions, pictures, the cache): two listed images of
    one stem would overwrite each other's outputs."""
    seen: dict[str, Path] = {}
    problems = []
    for image, _ in pairs:
        if image.stem in seen and seen[image.stem] != image:
            fix = "rename one of the two, or list it once."
            problems.append(Problem(str(image), f"shares its stem with {seen[image.stem]} ({list_file}).", fix))
        seen.setdefault(image.stem, image)
    return problems
