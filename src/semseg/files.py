"""Writing files so that readers never see half of one, and where cached facts live."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed into place when the block succeeds,
    deleted when it fails. Readers never see half a file, and a crash leaves the old file intact.

    The temporary name keeps ``path``'s suffix, for writers that pick the format from it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    """Writes JSON atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Writes bytes atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def cache_dir() -> Path:
    """Where semseg caches what it computed from data: ``$SEMSEG_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/semseg``, else ``~/.cache/semseg``."""
    if os.environ.get("SEMSEG_CACHE_DIR"):
        return Path(os.environ["SEMSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "semseg"
