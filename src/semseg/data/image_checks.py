"""The data check of the images themselves: each file's header read (or taken from its cache), its
depth and bands against ``data.in_channels``, and the one depth a data set must have. Shared by the
inspection of index, colour and multi-label masks alike (``inspection``, ``multilabel_masks``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from semseg.data.image_headers import Header, cached_headers, read_header
from semseg.data.reading import (
    CONVERTED_BANDS,
    DEPTH_FIX,
    MAX_PIXEL_VALUES,
    TIFF_SUFFIXES,
    is_8_bit_grey_or_colour,
)
from semseg.errors import Problem


def image_headers(root: Path, paths: Sequence[Path], full: bool) -> dict[Path, Header]:
    """Every image's header: from the cache, or with ``full`` every image decoded (nothing cached)."""
    if full:
        found = [read_header(path, True) for path in paths]
    else:
        found = cached_headers(root, paths, lambda path: read_header(path, False))
    return dict(zip(paths, found, strict=True))


@dataclass
class ImageCheck:
    """What the images' headers say against ``data.in_channels``."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # conversions on reading, grouped: "<n> <kind>, e.g. <file>"
    notes: list[str] = field(default_factory=list)
    dtype: str | None = None  # the images' one stored type
    bands: int | None = None  # their one number of stored bands


def check_images(headers: Mapping[Path, Header], in_channels: int) -> ImageCheck:
    """The problems, warnings and notes of the sound ``headers`` (those with a problem are reported
    by their reader), and the images' one depth and bands."""
    check, grouped = ImageCheck(), {}
    for path, header in headers.items():
        if header.problem is None:
            _note_image_kind(path, header, in_channels, grouped, check.problems)
    check.warnings = [f"{len(files)} {kind}, e.g. {files[0]}" for kind, files in grouped.items()]
    check.dtype, check.bands, depth_problems, check.notes = _depth_and_bands(headers, in_channels)
    check.problems += depth_problems
    return check


def _note_image_kind(path: Path, header: Header, in_channels: int, warnings: dict, problems: list[Problem]) -> None:
    """Images of a depth semseg does not read, or of other bands than ``data.in_channels``:
    converted as read (warned, grouped) or refused."""
    if header.dtype not in MAX_PIXEL_VALUES:
        problems.append(Problem(str(path), f"is a {header.dtype} image.", f"{DEPTH_FIX}."))
        return
    bands = header.bands
    if bands == in_channels:
        return
    tiff = path.suffix.lower() in TIFF_SUFFIXES  # read by tifffile, converted only as CONVERTED_BANDS allows
    if in_channels in (1, 3) and (not tiff or bands in CONVERTED_BANDS[in_channels]):
        alpha_lost = bands == 4 and in_channels == 3
        what = "RGBA images lose their alpha channel" if alpha_lost else f"{bands}-band images are converted"
        warnings.setdefault(f"{what} (data.in_channels={in_channels})", []).append(str(path))
        return
    fix = "set data.in_channels to match the images."
    problems.append(Problem(str(path), f"has {bands} band(s) but data.in_channels={in_channels}.", fix))


def _depth_and_bands(
    headers: Mapping[Path, Header], in_channels: int
) -> tuple[str | None, int | None, list[Problem], list[str]]:
    """The images' one stored depth and bands (None where they differ or none was read), the
    problem of a data set of several depths, and a note on how such images are normalised."""
    sound = {path: header for path, header in headers.items() if header.problem is None}
    by_depth: dict[str, Path] = {}  # each stored type -> its first image
    for path, header in sound.items():
        by_depth.setdefault(header.dtype, path)
    bands = {header.bands for header in sound.values()}
    one_band_count = bands.pop() if len(bands) == 1 else None
    if len(by_depth) > 1:
        return None, one_band_count, [_mixed_depths(by_depth)], []
    depth = next(iter(by_depth), None)
    notes = []
    # Training normalises such images per band with the train split's statistics (the encoder's
    # ImageNet mean/std fit only 8-bit grey or colour: semseg.data.band_stats): said, so that it is seen.
    if depth in MAX_PIXEL_VALUES and not is_8_bit_grey_or_colour(depth, in_channels):
        notes.append(
            f"images are {depth_name(depth)} with {bands_name(in_channels)}: each band is normalised with the "
            "train split's mean and std unless data.mean/std are given."
        )
    return depth, one_band_count, [], notes


def _mixed_depths(by_depth: Mapping[str, Path]) -> Problem:
    """One problem for a data set of several depths, naming an example file of each: inputs are
    divided by their type's full intensity, so a batch of both would be normalised wrongly."""
    examples = ", ".join(f"{path} ({dtype})" for dtype, path in by_depth.items())
    return Problem(
        examples,
        f"images are stored at more than one depth ({', '.join(map(depth_name, by_depth))}).",
        "convert them to one depth (all 8-bit or all 16-bit): a batch of both would be normalised wrongly.",
    )


def bands_name(bands: int) -> str:
    return f"{bands} band(s)"  # as the problems of other bands than data.in_channels word it


def depth_name(dtype: str) -> str:
    """``uint16`` -> ``16-bit``; other types as they are."""
    return {"uint8": "8-bit", "uint16": "16-bit"}.get(dtype, dtype)
