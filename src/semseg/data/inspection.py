"""Data inspection: checks an image-mask folder and counts its classes before any training.

``inspect_folder`` pairs every split, reads image headers (every image in full with
``full=True``), summarises every mask (one cached streaming pass, see ``mask_stats``), and returns a
``DataReport``: problems (each naming its file and the fix), warnings, class pixel frequencies,
per-image presence and suggested class weights. Training runs it at start-up (fast path: cached
mask summaries, image headers only) and stops on any problem; ``scripts/inspect_data.py`` prints
it and writes it as JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from semseg.data.class_weights import METHODS, ClassCounts, weights_from_counts
from semseg.data.colour_labels import suggested_colour_map, unpack
from semseg.data.image_checks import bands_name, check_images, depth_name, image_headers
from semseg.data.layout import DataLayout
from semseg.data.mask_codes import MASK_PAD_CODE
from semseg.data.mask_encoding import INVALID_CODE, MaskEncoder, resolve_class_names
from semseg.data.mask_stats import MaskSummary, summarize_masks
from semseg.data.multilabel_masks import BACKGROUND, MULTICLASS, MULTILABEL, check_mode, inspect_multilabel
from semseg.data.pairing import SPLITS
from semseg.data.synthetic import generate_configured
from semseg.errors import DataError, Problem, problems_message

log = logging.getLogger(__name__)

MAX_LISTED_VALUES = 10
# The largest stored value a class index can be: MaskEncoder allows num_classes up to 254 (class
# codes travel as uint8 beside MASK_PAD_CODE).
MAX_CLASS_VALUE = MASK_PAD_CODE - 2


@dataclass
class SplitReport:
    """One split: how many pairs, and (when labelled) its class counts and ignored pixels."""

    pairs: int
    labelled: bool
    counts: ClassCounts | None = None
    ignored_pixels: int = 0
    image_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> images of that size
    # Each counted mask's pixels per class, by mask path: what data.sampler=rare_class draws by.
    image_class_pixels: dict[Path, np.ndarray] = field(default_factory=dict)

    def add(self, mask_path: Path, class_pixels: np.ndarray) -> None:
        """Counts one mask, given its pixels per class."""
        self.counts.add(class_pixels)
        self.image_class_pixels[mask_path] = class_pixels


@dataclass
class DataReport:
    """What ``inspect_folder`` found; ``ok`` when there are no problems (warnings are allowed)."""

    root: Path
    class_names: list[str]
    splits: dict[str, SplitReport]
    problems: list[Problem]
    warnings: list[str]
    notes: list[str]
    stored_values: dict[int, int] = field(default_factory=dict)  # stored mask value -> pixels, all splits
    # colour masks' colours that a colour label_map maps to no class: {"colour", "pixels", "files", "file_count"}
    unmapped_colours: list[dict] = field(default_factory=list)
    image_dtype: str | None = None  # the images' stored type (uint8, uint16) when they share one
    image_bands: int | None = None  # the images' stored bands when they share a number
    # False in binary and multilabel tasks, whose sigmoid losses take no class weights: none suggested.
    weights_apply: bool = True
    # data.sampler=rare_class's draws (semseg.data.rare_class.describe_draws), set by training.
    rare_class_sampling: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def train_counts(self) -> ClassCounts | None:
        train = self.splits.get("train")
        return train.counts if train else None

    def raise_for_problems(self) -> None:
        """Raises ``DataError`` listing the problems (the first ten, and how many more)."""
        if self.problems:
            header = f"the data set {self.root} has {len(self.problems)} problem(s); nothing was trained:"
            raise DataError(problems_message(self.problems, header))

    def suggested_weights(self) -> dict[str, list[float]]:
        counts = self.train_counts
        if not self.weights_apply or counts is None or not counts.pixels.any():
            return {}
        return {method: weights_from_counts(counts, method) for method in METHODS}

    def to_json(self) -> dict:
        splits = {}
        for name, split in self.splits.items():
            entry: dict = {"pairs": split.pairs, "labelled": split.labelled, "image_sizes": split.image_sizes}
            if split.counts is not None:
                counts = split.counts
                entry["ignored_pixels"] = split.ignored_pixels
                entry["classes"] = {
                    cls: {
                        "pixels": int(counts.pixels[i]),
                        "frequency": round(float(counts.frequency[i]), 6),
                        "images": int(counts.images[i]),
                        "presence": round(float(counts.images[i] / max(counts.num_images, 1)), 4),
                    }
                    for i, cls in enumerate(self.class_names)
                }
            splits[name] = entry
        return {
            "root": str(self.root),
            "ok": self.ok,
            "class_names": self.class_names,
            "splits": splits,
            "problems": [vars(p) for p in self.problems],
            "warnings": self.warnings,
            "notes": self.notes,
            "suggested_class_weights": self.suggested_weights(),
            "stored_mask_values": {str(value): pixels for value, pixels in self.stored_values.items()},
            "unmapped_colours": self.unmapped_colours,
            "images": {"dtype": self.image_dtype, "bands": self.image_bands},
        } | ({} if self.rare_class_sampling is None else {"rare_class_sampling": self.rare_class_sampling})

    def summary(self, max_problems: int = 50) -> str:
        """A readable table of the splits, classes and suggested weights, then the problems."""
        lines = [f"data set {self.root}"]
        lines += [
            f"  {name:<5} {s.pairs:>6} pairs{'' if s.labelled else ' (unlabelled)'}"
            + (f", sizes {_top_sizes(s.image_sizes)}" if s.image_sizes else "")
            for name, s in self.splits.items()
        ]
        if self.image_dtype is not None:
            bands = "" if self.image_bands is None else f", {bands_name(self.image_bands)}"
            lines.append(f"  images: {depth_name(self.image_dtype)}{bands}")
        if self.stored_values:
            lines.append(f"  stored mask values (before label_map): {describe_values(self.stored_values)}")
        for entry in self.unmapped_colours:
            files = ", ".join(entry["files"]) + (" ..." if entry["file_count"] > len(entry["files"]) else "")
            lines.append(
                f"  colour {entry['colour']} maps to no class: {entry['pixels']} pixels in {entry['file_count']} "
                f"file(s): {files}"
            )
        labelled = {name: s.counts for name, s in self.splits.items() if s.counts is not None and s.counts.num_images}
        if labelled:
            header = f"  {'class':<16}" + "".join(f"{name + ' pixels':>14}{'images':>9}" for name in labelled)
            lines += ["", header]
            for i, cls in enumerate(self.class_names):
                row = f"  {cls:<16}"
                for counts in labelled.values():
                    row += f"{counts.frequency[i]:>13.2%} {counts.images[i]:>4}/{counts.num_images:<4}"
                lines.append(row)
        for method, weights in self.suggested_weights().items():
            lines.append(f"  suggested loss.class_weights ({method}): [{', '.join(f'{w:g}' for w in weights)}]")
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"warning: {warning}" for warning in self.warnings]
        if self.problems:
            lines.append(problems_message(self.problems, f"{len(self.problems)} problem(s):", limit=max_problems))
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def describe_values(stored: Mapping[int, int], limit: int = 20) -> str:
    """``0 (77.5%), 255 (22.5%)``: the most frequent stored values with their share of the pixels."""
    total = max(sum(stored.values()), 1)
    top = sorted(stored.items(), key=lambda item: -item[1])[:limit]
    more = f" and {len(stored) - limit} more" if len(stored) > limit else ""
    return ", ".join(f"{value} ({pixels / total:.1%})" for value, pixels in sorted(top)) + more


def _top_sizes(sizes: Mapping[str, int], limit: int = 3) -> str:
    top = sorted(sizes.items(), key=lambda item: -item[1])[:limit]
    more = f" and {len(sizes) - limit} more" if len(sizes) > limit else ""
    return ", ".join(f"{size} ({count})" for size, count in top) + more


def _value_fix(path: Path, values: list[int], bad: list[int], encoder: MaskEncoder, label_map: Mapping | None) -> str:
    """The fix for a mask holding values that are no class; ``values`` are the mask's own, ``bad``
    the data set's values that are no class (see ``_values_no_class``)."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return "JPEG compression changes mask values along edges; store masks as PNG."
    if not label_map and set(values) <= {0, 255}:
        return "0/255 masks: set data.label_map={0: 0, 255: 1} (background 0, object 1) and data.num_classes=2."
    fixes = []
    if len(bad) == 1 and encoder.ignore_index is None:
        fixes.append(f"set data.ignore_index={bad[0]} if it marks pixels to skip")
    if max(bad) > MAX_CLASS_VALUE:
        # No num_classes reaches such a value (a 16-bit mask of ids, say): only a label_map can.
        fixes.append(
            f"map every stored value to its class with data.label_map (e.g. {{0: 0, {max(bad)}: 1}}); "
            f"data.num_classes is at most {MAX_CLASS_VALUE + 1}"
        )
    else:
        if not label_map:
            fixes.append(f"raise data.num_classes to {max(bad) + 1} (the masks hold values up to {max(bad)})")
        fixes.append("map stored values to classes with data.label_map")
    return ", or ".join([", ".join(fixes[:-1]), fixes[-1]] if len(fixes) > 1 else fixes) + "."


def _mask_problem(
    path: Path, mask: MaskSummary, image_size: tuple[int, int] | None, colour_map: bool = False, colours_found: str = ""
) -> Problem | None:
    """The first thing wrong with a mask file itself (not its values); ``colour_map``: data.label_map
    maps colours; ``colours_found``: a colour label_map of the data set's colours, for the fix."""
    if mask.error:
        return Problem(
            str(path), "cannot be read (truncated, empty or not an image).", "re-export the mask, or remove the pair."
        )
    if colour_map and not mask.rgb:
        return Problem(
            str(path),
            f"is a {mask.channels}-channel {mask.dtype} mask, but data.label_map maps RGB colours"
            + (" (a palette PNG is read as its indices)." if mask.palette else "."),
            "store colour masks as 8-bit RGB PNGs, or map single-channel masks by value (e.g. {0: 0, 255: 1}).",
        )
    if mask.channels > 1 and not colour_map:
        if mask.equal_channels:
            return Problem(
                str(path),
                f"has {mask.channels} identical channels: a grayscale mask saved as colour.",
                "save it as a single-channel PNG (e.g. cv2.imwrite(path, mask[..., 0])).",
            )
        colours = ", ".join(str(list(c)) for c in mask.colours[:5])
        return Problem(
            str(path),
            f"is an RGB colour mask (colours {colours}, ...) and data.label_map maps no colours.",
            f"map each colour to its class (index or name) with data.label_map, e.g. {colours_found}, or give "
            "a palette file (data.label_map=classes.csv of name,R,G,B rows); see docs/data.md.",
        )
    if mask.dtype.startswith("float"):
        return Problem(str(path), f"is a {mask.dtype} image.", "store masks as 8- or 16-bit PNG of class indices.")
    if image_size is not None and (mask.height, mask.width) != image_size:
        return Problem(
            str(path),
            f"is {mask.width}x{mask.height} but its image is {image_size[1]}x{image_size[0]} (WxH).",
            "re-export the mask at its image's size (nearest-neighbour, never interpolated).",
        )
    return None


def _count_colours(
    path: Path, mask: MaskSummary, encoder: MaskEncoder, report: SplitReport, unmapped: dict[int, list]
) -> None:
    """Adds a colour mask's class pixels to ``report``, and its colours that are no class to
    ``unmapped`` (packed colour -> [pixels, files])."""
    colours = np.asarray(mask.rgb, dtype=np.uint32)
    counts = np.asarray(mask.rgb_counts, dtype=np.int64)
    codes, mapped = encoder.colours.lookup(colours)
    for packed, pixels in zip(colours[~mapped].tolist(), counts[~mapped].tolist(), strict=True):
        entry = unmapped.setdefault(packed, [0, []])
        entry[0] += pixels
        entry[1].append(str(path))
    codes, counts = codes[mapped].astype(np.int64), counts[mapped]
    ignored = codes == MASK_PAD_CODE
    report.ignored_pixels += int(counts[ignored].sum())
    class_pixels = np.bincount(codes[~ignored], weights=counts[~ignored], minlength=encoder.num_classes)
    report.add(path, class_pixels.astype(np.int64))


def _unmapped_colours(unmapped: Mapping[int, list], files_listed: int = 3) -> tuple[list[dict], list[Problem]]:
    """The report's entries and the problems of colours that map to no class, most pixels first."""
    entries, problems = [], []
    for packed, (pixels, files) in sorted(unmapped.items(), key=lambda item: -item[1][0]):
        colour = unpack(packed)
        entries.append({"colour": colour, "pixels": pixels, "files": files[:files_listed], "file_count": len(files)})
        where = f"{len(files)} files, this one first" if len(files) > 1 else "this file"
        problems.append(
            Problem(
                files[0],
                f"holds the colour {colour}, which data.label_map maps to no class ({pixels} pixels in {where}).",
                f'add "{colour}": <class> to data.label_map, or map it to data.ignore_index to skip those pixels.',
            )
        )
    return entries, problems


def _count_classes(
    path: Path,
    mask: MaskSummary,
    encoder: MaskEncoder,
    label_map: Mapping | None,
    report: SplitReport,
    no_class: list[int],
) -> Problem | None:
    """Adds a mask's class pixels to ``report``, or returns the problem of its values that are not classes."""
    values = np.asarray(mask.values, dtype=np.int64)
    counts = np.asarray(mask.counts, dtype=np.int64)
    codes = encoder.lut[values].astype(np.int64)
    invalid = codes == INVALID_CODE
    if invalid.any():
        bad = values[invalid].tolist()
        listed = bad[:MAX_LISTED_VALUES] + (["..."] if len(bad) > MAX_LISTED_VALUES else [])
        mapped = " after data.label_map" if label_map else ""
        return Problem(
            str(path),
            f"holds values {listed} that are not classes 0..{encoder.num_classes - 1}{mapped}.",
            _value_fix(path, mask.values, no_class, encoder, label_map),
        )
    ignored = codes == MASK_PAD_CODE
    report.ignored_pixels += int(counts[ignored].sum())
    class_pixels = np.bincount(codes[~ignored], weights=counts[~ignored], minlength=encoder.num_classes)
    report.add(path, class_pixels.astype(np.int64))
    return None


def inspect_folder(
    root: str | Path,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
    label_map: Mapping[int, int] | str | None = None,
    in_channels: int = 3,
    full: bool = False,
    layout: DataLayout | None = None,
) -> DataReport:
    """Checks a data set folder and counts its classes (see the module docstring).

    Args mirror the ``data`` config group; ``full`` decodes every image, not only its header;
    ``layout`` is where the splits are (default: ``root``'s images/<split> and masks/<split>).
    """
    root = Path(root)
    layout = layout or DataLayout(root)
    names = resolve_class_names(num_classes, class_names, label_map, ignore_index, root)
    encoder = MaskEncoder(num_classes, ignore_index, label_map, names, root)
    problems: list[Problem] = []
    pairs_by_split = {}
    for split in SPLITS:
        if split == "test" and not layout.has_split("test"):
            continue  # the test split is optional, and an empty one is none
        pairs_by_split[split], found = layout.find_pairs(split, require_masks=split != "test")
        problems += found
    summaries = _summaries(root, pairs_by_split)
    no_class = _values_no_class(summaries, encoder)
    colour_map, unmapped = encoder.colours is not None, {}
    colours_found = "" if colour_map else suggested_colour_map(_stored_colours(summaries.values()))

    headers = image_headers(root, [image for pairs in pairs_by_split.values() for image, _ in pairs], full)

    splits, palette_masks = {}, 0
    for split, pairs in pairs_by_split.items():
        labelled = bool(pairs) and pairs[0][1] is not None
        report = SplitReport(len(pairs), labelled, ClassCounts.zeros(num_classes) if labelled else None)
        for image_path, mask_path in pairs:
            header = headers[image_path]
            size = header.size
            if header.problem:
                problems.append(header.problem)
            else:
                key = f"{size[1]}x{size[0]}"
                report.image_sizes[key] = report.image_sizes.get(key, 0) + 1
            if mask_path is None:
                continue
            mask = summaries[mask_path]
            problem = _mask_problem(mask_path, mask, size, colour_map, colours_found)
            if problem:
                problems.append(problem)
                continue
            palette_masks += mask.palette
            if colour_map:
                _count_colours(mask_path, mask, encoder, report, unmapped)
                continue
            problem = _count_classes(mask_path, mask, encoder, label_map, report, no_class)
            if problem:
                problems.append(problem)
        splits[split] = report

    notes = []
    if palette_masks:
        notes.append(
            f"{palette_masks} palette PNG mask(s): their palette indices are read as the stored values "
            "(the colours are not used)."
        )
    images = check_images(headers, in_channels)
    warnings = images.warnings + _class_warnings(splits, names)
    unmapped_colours, colour_problems = _unmapped_colours(unmapped)
    problems += colour_problems + images.problems
    stored = _stored_values(summaries.values())
    return DataReport(
        root,
        names,
        splits,
        problems,
        warnings,
        notes + images.notes,
        stored,
        unmapped_colours,
        images.dtype,
        images.bands,
    )


def _summaries(root: Path, pairs_by_split: Mapping[str, list]) -> dict[Path, MaskSummary]:
    mask_paths = [mask for pairs in pairs_by_split.values() for _, mask in pairs if mask is not None]
    return dict(zip(mask_paths, summarize_masks(root, mask_paths), strict=True))


def _values_no_class(summaries: Mapping[Path, MaskSummary], encoder: MaskEncoder) -> list[int]:
    """The stored values that are no class, over every mask: each file's fix is then the one that
    fixes the data set (a num_classes above every mask's values; ignore_index only when a single
    value is off), not one that fits this file and fails on the next. JPEG masks are left out:
    their compression noise has its own fix."""
    kept = (mask for path, mask in summaries.items() if path.suffix.lower() not in (".jpg", ".jpeg"))
    lut = encoder.lut
    return [v for v in _stored_values(kept) if isinstance(v, int) and 0 <= v < lut.size and lut[v] == INVALID_CODE]


def _stored_values(summaries: Iterable[MaskSummary]) -> dict[int, int]:
    stored: dict[int, int] = {}
    for mask in summaries:
        if mask.channels == 1:
            for value, pixels in zip(mask.values, mask.counts, strict=True):
                stored[value] = stored.get(value, 0) + pixels
    return dict(sorted(stored.items()))


def _stored_colours(summaries: Iterable[MaskSummary]) -> dict[int, int]:
    """Packed RGB colour -> pixels over every 8-bit colour mask (not grayscale ones saved as colour)."""
    stored: dict[int, int] = {}
    for mask in (mask for mask in summaries if not mask.equal_channels):
        for packed, pixels in zip(mask.rgb, mask.rgb_counts, strict=True):
            stored[packed] = stored.get(packed, 0) + pixels
    return stored


def stored_mask_values(data: Mapping) -> tuple[dict[int, int], dict[int, int]]:
    """(stored value -> pixels over every single-channel mask, packed RGB colour -> pixels over every
    colour mask) of every split of a ``data`` config: what to map, when ``data.num_classes`` and
    ``data.label_map`` are still to be chosen."""
    layout = DataLayout.of(data)
    pairs = {split: layout.find_pairs(split, require_masks=False)[0] for split in SPLITS if layout.has_split(split)}
    summaries = _summaries(layout.root, pairs).values()
    return _stored_values(summaries), _stored_colours(summaries)


def _class_warnings(splits: Mapping[str, SplitReport], names: Sequence[str]) -> list[str]:
    warnings = []
    for split, report in splits.items():
        counts = report.counts
        if counts is None or not counts.num_images:
            continue
        absent = [names[i] for i in np.flatnonzero(counts.pixels == 0)]
        if absent and split == "train":
            warnings.append(f"classes {absent} have no pixels in the train split: the model cannot learn them.")
        elif absent:
            warnings.append(
                f"classes {absent} have no pixels in the {split} split: left out of its mIoU unless predicted."
            )
    return warnings


def inspect_data(data: Mapping, full: bool = False) -> DataReport:
    """``inspect_folder`` for a ``data`` config group; generates the synthetic set first if configured
    (``generate_configured``)."""
    generate_configured(data)
    mode = check_mode(data.get("mode") or MULTICLASS, data["num_classes"])
    num_classes, class_names = data["num_classes"], data.get("class_names")
    if mode != MULTICLASS:
        names = resolve_class_names(num_classes, class_names, None, data.get("ignore_index"), data["root"])
        if mode == MULTILABEL:
            return replace(inspect_multilabel(data, DataLayout.of(data), names, full), weights_apply=False)
        num_classes, class_names = 2, [BACKGROUND, *names]  # binary: index masks of 0 and 1
    report = inspect_folder(
        data["root"],
        num_classes,
        class_names,
        data.get("ignore_index"),
        data.get("label_map"),
        data.get("in_channels", 3),
        full=full,
        layout=DataLayout.of(data),
    )
    return replace(report, weights_apply=mode == MULTICLASS)


def inspect_before_training(data: Mapping, say: bool = True) -> DataReport:
    """Training's start-up check: the fast inspection of a ``data`` config; raises ``DataError`` on
    any problem, before any training work. ``say=False`` keeps the warnings out of the log (DDP's
    other ranks: the same findings once, not once per process)."""
    report = inspect_data(data)
    report.raise_for_problems()
    # The run goes on despite these (an RGBA image losing its alpha, a class without train pixels):
    # said at start-up, not only in data_report.json, so that no conversion passes unseen.
    for note in report.notes if say else ():
        log.info(f"data: {note}")
    for warning in report.warnings if say else ():
        log.warning(f"data: {warning}")
    return report
