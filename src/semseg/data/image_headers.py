"""Image headers (height, width, Pillow's mode) of a data set's images, cached per file.

The data check every run starts with needs each image's size and mode, and that the file is whole
(a PNG or JPEG cut short). Opening 100,000 images for that took about 8 s of every start-up, with
nothing changed. The cache maps each image (path relative to the data root, byte size,
modification time) to its header, so a later run opens no image; a changed or replaced file is
read again. Only sound headers are cached: an unreadable or cut-short file is checked at every
run, so its fix is seen at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from semseg.data.mask_stats import _cache_file, _load_cache
from semseg.errors import Problem
from semseg.files import relative_to_root, write_json_atomic

CACHE_VERSION = 1
Header = tuple[tuple[int, int] | None, str, Problem | None]  # (height, width), mode, problem


def cached_headers(root: Path, paths: Sequence[Path], read: Callable[[Path], Header]) -> list[Header]:
    """``read(path)`` of every path, from the cache where the file is unchanged.

    Pass every image of the root in one call: entries of files not passed are dropped. Processes
    that write at once each write a whole file and rename it into place (``write_json_atomic``).
    """
    cache_path = _cache_file(root, "images")
    cached = _load_cache(cache_path, CACHE_VERSION)
    keys, headers, fresh = [], [], {}
    for path in paths:
        stat = path.stat()
        key = f"{relative_to_root(path, root)}|{stat.st_size}|{stat.st_mtime_ns}"
        keys.append(key)
        if key in cached:
            height, width, mode = cached[key]
            headers.append(((height, width), mode, None))
            continue
        header = read(path)
        headers.append(header)
        if header[2] is None:
            fresh[key] = [*header[0], header[1]]
    kept = {key: cached[key] for key in keys if key in cached} | fresh
    if fresh or len(kept) != len(cached):
        try:
            write_json_atomic(cache_path, {"version": CACHE_VERSION, "root": str(root.resolve()), "files": kept})
        except OSError as error:  # a read-only home: work on, uncached
            warnings.warn(f"could not write the image header cache {cache_path}: {error}", stacklevel=2)
    return headers
