"""Which image goes with which mask: ``images/<split>`` paired with ``masks/<split>`` by file stem."""

from __future__ import annotations

import os
from pathlib import Path

from semseg.errors import DataError, Problem, problems_message

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
SPLITS = ("train", "val", "test")


def index_images(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    """Maps stem -> path for the image files directly in ``folder``; two files of one stem are a problem.

    ``Path.iterdir`` lists the folder in one pass and builds each child path from its name
    without parsing it again (half the time of ``Path(entry.path)`` over ``os.scandir``: 0.4 s for
    80,000 files), and no file is stat'ed: the names decide.
    """
    files: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        stem, ext = os.path.splitext(path.name)
        if ext.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
            continue
        if stem in files:
            problems.append(
                Problem(
                    str(path),
                    f"shares its stem with {files[stem].name}; pairs are matched by stem.",
                    "keep one of the two files.",
                )
            )
            continue
        files[stem] = path
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
    # A multi-label mask may be a folder <stem>/ of per-class PNGs (semseg.data.multilabel_masks).
    for folder in mask_dir.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in masks:
            masks[folder.name] = folder
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
