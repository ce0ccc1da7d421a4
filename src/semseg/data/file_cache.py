"""Caches of what was learned from each file of a data root, one JSON file per root and kind.

The mask statistics (``mask_stats``), the image headers (``image_headers``) and the band
statistics (``band_stats``) are each worth a pass over every file once, not at every run. Each
maps a file (its path relative to the data root, byte size and modification time) to its entry,
so a changed or replaced file is read again, and a file no longer passed is dropped. Writers
write a whole file and rename it into place, so processes that write at once leave one whole
cache and never fail; a cache that cannot be written is warned of and the work goes on uncached.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path

from semseg.files import cache_dir, relative_to_root, write_json_atomic


class FileCache:
    """The cache of ``kind`` (``masks``, ``images``, ``bands``...) for the data root ``root``;
    entries written by another ``version`` are not read."""

    def __init__(self, root: Path, kind: str, version: int):
        self.root, self.version = Path(root), version
        key = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir() / kind / f"{self.root.name}-{key}.json"

    def key(self, path: Path, *settings: object) -> str:
        """The entry key of ``path`` as it is now (and of ``settings`` that change the entry)."""
        stat = path.stat()
        return "|".join(map(str, (relative_to_root(path, self.root), stat.st_size, stat.st_mtime_ns, *settings)))

    def keys(self, paths: Iterable[Path], *settings: object) -> list[str]:
        return [self.key(path, *settings) for path in paths]

    def load(self) -> dict:
        """The entries, or none when the cache is missing, unreadable or of another version."""
        try:
            cached = json.loads(self.path.read_text())
            return cached["files"] if cached.get("version") == self.version else {}
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # no cache yet, or an unreadable one: recompute

    def save(self, entries: dict) -> None:
        try:
            write_json_atomic(self.path, {"version": self.version, "root": str(self.root.resolve()), "files": entries})
        except OSError as error:  # a read-only home: work on, uncached
            warnings.warn(f"could not write the cache {self.path}: {error}", stacklevel=3)
