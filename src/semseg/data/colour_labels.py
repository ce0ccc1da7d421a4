"""Colour-coded masks: ``data.label_map`` with RGB colour keys, or a palette file, and their encoding.

Many data sets and annotation tools store a mask as an RGB picture, one colour per class (CamVid's
original labels, Cityscapes' ``*_color.png``, CVAT and Label Studio exports). ``data.label_map``
then maps colours, written ``"[128,64,128]"``, ``"128,64,128"`` or ``"#804080"``, to a class index
or a class name of ``data.class_names``; or it is the path of a palette file (relative paths are
relative to ``data.root``, else to the working directory):

- CSV: ``name,R,G,B`` rows (a header is optional; ``name,r,g,b`` as Kaggle's CamVid
  ``class_dict.csv`` has it is read as one);
- JSON: ``[{"name": "road", "color": [128, 64, 128]}, ...]`` or ``{"road": [128, 64, 128], ...}``.

A palette file's row ``i`` is class ``i``, its name the class name when ``data.class_names`` is
null; a last row whose index is ``data.ignore_index`` (CamVid's void) is ignored, not a class.
Every colour mapped to ``data.ignore_index`` is ignored. The mapped colours are also the default
``data.palette``, so pictures and predicted colour masks look like the annotation tool's.

A mask's pixels are packed into 24-bit integers (R << 16 | G << 8 | B) and looked up with
``np.searchsorted`` among the mapped colours, sorted: a few comparisons per pixel, and no
16-million-entry table in every loader worker.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semseg.data.mask_codes import MASK_PAD_CODE
from semseg.data.palette import class_palette
from semseg.errors import ConfigError, DataError

MAX_LISTED_COLOURS = 10
PALETTE_SUFFIXES = (".csv", ".json")
_TRIPLE = re.compile(r"^\s*[\[(]?\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*[\])]?\s*$")
_HEX = re.compile(r"^\s*#([0-9a-fA-F]{6})\s*$")
CAMVID_EXAMPLE = '{"[128,64,128]": road, "[0,0,0]": 255}'
RGB = tuple[int, int, int]


def parse_colour(key: object) -> RGB | None:
    """The (R, G, B) a label_map key names (``"[128,64,128]"``, ``"128,64,128"``, ``"#804080"``,
    or a list of three numbers), or None when the key is no colour (a stored value, say)."""
    if isinstance(key, Sequence) and not isinstance(key, str) and len(key) == 3:
        key = ",".join(str(v) for v in key)
    if not isinstance(key, str):
        return None
    if match := _HEX.match(key):
        value = int(match.group(1), 16)
        return value >> 16, (value >> 8) & 255, value & 255
    if match := _TRIPLE.match(key):
        rgb = tuple(int(v) for v in match.groups())
        if max(rgb) > 255:
            raise ConfigError(f"data.label_map key {key!r}: colour channels are 0..255.")
        return rgb  # type: ignore[return-value]
    return None


def pack(rgb: Sequence[int]) -> int:
    """(R, G, B) -> the 24-bit integer R << 16 | G << 8 | B."""
    return int(rgb[0]) << 16 | int(rgb[1]) << 8 | int(rgb[2])


def unpack(packed: int) -> list[int]:
    """The 24-bit integer of ``pack`` -> [R, G, B]."""
    packed = int(packed)
    return [packed >> 16, (packed >> 8) & 255, packed & 255]


def pack_pixels(stored: np.ndarray) -> np.ndarray:
    """(H, W, 3 or 4) uint8 pixels as OpenCV reads them (BGR, alpha ignored) -> (H, W) uint32 packed RGB."""
    pixels = stored.astype(np.uint32)
    return pixels[..., 2] << 16 | pixels[..., 1] << 8 | pixels[..., 0]


def is_colour_label_map(label_map: object) -> bool:
    """True when ``data.label_map`` maps colours: a palette file's path, or a mapping with colour keys.

    Colour and value keys in one mapping are refused (a stored value is a single-channel mask's,
    a colour a colour mask's: one data set has one kind).
    """
    if isinstance(label_map, (str, Path)):
        return True
    if not isinstance(label_map, Mapping) or not label_map:
        return False
    colours = [parse_colour(key) is not None for key in label_map]
    if any(colours) and not all(colours):
        values = [key for key, colour in zip(label_map, colours, strict=True) if not colour][:3]
        raise ConfigError(
            f"data.label_map mixes stored values {values} with RGB colours: map single-channel masks by "
            f'value ({{0: 0, 255: 1}}) or colour masks by colour ({{"[128,64,128]": 0}}), not both.'
        )
    return all(colours)


def class_of(value: object, class_names: Sequence[str] | None, key: object) -> int:
    """A label_map value as a class index: an int, or a name of ``data.class_names``."""
    if isinstance(value, bool):
        raise ConfigError(f"data.label_map maps {key} to {value}: give a class index or a class name.")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    names = list(class_names or [])
    if isinstance(value, str) and value in names:
        return names.index(value)
    known = f"the class names are {names}" if names else "data.class_names is null (name the classes there)"
    raise DataError(f"data.label_map maps {key} to {value!r}, which is no class: {known}.")


def palette_file(label_map: str | Path, root: str | Path) -> Path:
    """The palette file ``data.label_map`` names: relative to ``data.root``, else to the working directory."""
    path = Path(label_map)
    if path.suffix.lower() not in PALETTE_SUFFIXES:
        raise ConfigError(
            f"data.label_map={label_map}: a string names a palette file (.csv or .json of name, R, G, B); "
            f"to map colours in the config, give a mapping such as {CAMVID_EXAMPLE}."
        )
    for candidate in (path,) if path.is_absolute() else (Path(root) / path, path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"data.label_map={label_map}: no such palette file (looked in data.root={root} and here).")


def read_palette_file(path: Path) -> list[tuple[str, RGB]]:
    """(name, (R, G, B)) rows of a CSV or JSON palette file, in order (see the module docstring)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        rows = _json_rows(json.loads(text)) if path.suffix.lower() == ".json" else _csv_rows(text)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as error:
        raise DataError(
            f"{path}: cannot read this palette file ({error}); give rows of name, R, G, B (CSV) or "
            '[{"name": ..., "color": [R, G, B]}] / {name: [R, G, B]} (JSON).'
        ) from None
    if not rows:
        raise DataError(f"{path}: the palette file lists no colours.")
    for name, rgb in rows:
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"{path}: {name}'s colour {list(rgb)} is not three channels of 0..255.")
    return rows


def _csv_rows(text: str) -> list[tuple[str, RGB]]:
    rows = [row for row in csv.reader(text.splitlines()) if row and any(cell.strip() for cell in row)]
    columns = [0, 1, 2, 3]
    if rows and not rows[0][1].strip().isdigit():  # a header row: columns by name
        header = [cell.strip().lower() for cell in rows[0]]
        wanted = ("name", "r", "g", "b")
        aliases = {"red": "r", "green": "g", "blue": "b", "class": "name", "label": "name"}
        named = [aliases.get(cell, cell) for cell in header]
        columns = [named.index(col) if col in named else i for i, col in enumerate(wanted)]
        rows = rows[1:]
    return [(row[columns[0]].strip(), tuple(int(row[c]) for c in columns[1:])) for row in rows]  # type: ignore[misc]


def _json_rows(loaded: object) -> list[tuple[str, RGB]]:
    if isinstance(loaded, Mapping):
        return [(str(name), tuple(int(v) for v in rgb)) for name, rgb in loaded.items()]  # type: ignore[misc]
    if isinstance(loaded, list):
        return [
            (str(row["name"]), tuple(int(v) for v in row.get("color", row.get("colour", row.get("rgb")))))
            for row in loaded
        ]  # type: ignore[misc]
    raise TypeError("the top level is neither a list nor an object")


@dataclass(frozen=True)
class ColourMap:
    """Mapped colours (packed, sorted) and their class codes; see the module docstring."""

    keys: np.ndarray  # (K,) uint32 packed RGB, sorted
    codes: np.ndarray  # (K,) uint8 class index, or MASK_PAD_CODE for an ignored colour
    names: list[str] | None  # class names from a palette file
    colours: dict[int, list[int]]  # class -> its first mapped colour, for the palette

    @classmethod
    def from_config(
        cls,
        label_map: Mapping | str | Path,
        num_classes: int,
        ignore_index: int | None,
        class_names: Sequence[str] | None,
        root: str | Path,
    ) -> ColourMap:
        """The colour map of ``data.label_map`` (colour keys or a palette file; see ``is_colour_label_map``)."""
        names = None
        if isinstance(label_map, (str, Path)):
            rows = read_palette_file(palette_file(label_map, root))
            pairs = [(rgb, index) for index, (_, rgb) in enumerate(rows)]
            last_ignored = ignore_index == len(rows) - 1  # CamVid's void: a row, but no class
            names = [name for name, _ in rows[: len(rows) - last_ignored]]
            if len(names) != num_classes:
                raise ConfigError(
                    f"data.label_map={label_map} lists {len(names)} classes ({', '.join(names)}) but "
                    f"data.num_classes={num_classes}: set data.num_classes={len(names)} (or data.ignore_index "
                    f"to the index of a last row that marks pixels to skip)."
                )
            source = str(label_map)
        else:
            pairs = [(parse_colour(key), class_of(value, class_names, key)) for key, value in label_map.items()]
            source = "data.label_map"
        table: dict[int, int] = {}
        colours: dict[int, list[int]] = {}
        for rgb, index in pairs:
            if index == ignore_index:
                code = int(MASK_PAD_CODE)
            elif 0 <= index < num_classes:
                code = index
                colours.setdefault(index, list(rgb))
            else:
                raise DataError(
                    f"{source} maps {list(rgb)} -> {index}, but classes are 0..{num_classes - 1} "
                    f"(data.num_classes) and data.ignore_index is {ignore_index}."
                )
            if table.setdefault(pack(rgb), code) != code:
                raise DataError(f"{source} maps the colour {list(rgb)} to two classes.")
        keys = np.array(sorted(table), dtype=np.uint32)
        codes = np.array([table[int(k)] for k in keys], dtype=np.uint8)
        return cls(keys, codes, names, colours)

    def lookup(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, mapped) of packed colours: ``mapped`` False where a colour is no class (its code is then 0)."""
        at = np.searchsorted(self.keys, packed).clip(0, len(self.keys) - 1)
        mapped = self.keys[at] == packed
        return np.where(mapped, self.codes[at], 0).astype(np.uint8), mapped

    def encode(self, stored: np.ndarray, path: Path | str) -> np.ndarray:
        """(H, W) uint8 class codes of a colour mask (H, W, 3 or 4) as OpenCV reads it (BGR)."""
        if stored.ndim != 3 or stored.shape[2] not in (3, 4):
            channels = 1 if stored.ndim == 2 else stored.shape[2]
            raise DataError(
                f"{path}: mask has {channels} channel(s), but data.label_map maps RGB colours: store colour "
                "masks as RGB PNG, or map single-channel masks by value (e.g. {0: 0, 255: 1})."
                + (" (A palette PNG is read as its indices: map the indices.)" if channels == 1 else "")
            )
        if stored.dtype != np.uint8:
            raise DataError(f"{path}: colour mask dtype {stored.dtype}; store colour masks as 8-bit RGB PNG.")
        packed = pack_pixels(stored)
        codes, mapped = self.lookup(packed)
        if not mapped.all():
            colours, counts = np.unique(packed[~mapped], return_counts=True)
            order = np.argsort(-counts, kind="stable")[:MAX_LISTED_COLOURS]
            listed = ", ".join(f"{unpack(colours[i])} ({counts[i]} px)" for i in order)
            more = f" and {len(colours) - MAX_LISTED_COLOURS} more" if len(colours) > MAX_LISTED_COLOURS else ""
            raise DataError(
                f"{path}: mask colours {listed}{more} map to no class. Add them to data.label_map "
                '(e.g. "[R,G,B]": <class>), or map them to data.ignore_index to skip those pixels.'
            )
        return codes

    def palette(self, default: np.ndarray) -> list[list[int]]:
        """One [R, G, B] per class: its mapped colour, else ``default``'s (a class with no colour)."""
        return [self.colours.get(index, [int(v) for v in colour]) for index, colour in enumerate(default)]

    def fingerprint(self) -> bytes:
        """Bytes that change when the mapping does (the sample cache's key)."""
        return b"colours|" + self.keys.tobytes() + self.codes.tobytes()


def suggested_colour_map(colours: Mapping[int, int], limit: int = 12) -> str:
    """A ``data.label_map`` of the most frequent packed colours (colour -> pixels), classes in order."""
    top = sorted(colours, key=lambda packed: -colours[packed])[:limit]
    entries = ", ".join(f'"[{",".join(map(str, unpack(packed)))}]": {i}' for i, packed in enumerate(sorted(top)))
    more = f", ... ({len(colours) - limit} more colours)" if len(colours) > limit else ""
    return "{" + entries + more + "}"


def colour_palette(data: Mapping) -> list[list[int]] | None:
    """``data.palette`` when given; else, for a colour ``data.label_map``, the mapped colours (a class
    without one keeps the default's); else None (the default palette)."""
    if data.get("palette") is not None or not is_colour_label_map(data.get("label_map")):
        return data.get("palette")
    num_classes = data["num_classes"]
    colours = ColourMap.from_config(
        data["label_map"], num_classes, data.get("ignore_index"), data.get("class_names"), data["root"]
    )
    return colours.palette(class_palette(num_classes))
