"""Writing files so that readers never see half of one, and where cached facts live."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed into place when the block succeeds,
    deleted when it fails. Readers never see half a file, and a crash leaves the old file intact.

    The temporary name keeps ``path``'s suffix, for writers that pick the format from it.
    """
    tmp = staging_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def staging_path(path: Path) -> Path:
    """A unique hidden name beside ``path`` (its parent created), keeping its suffix. Unlike
    ``tempfile.mkstemp`` (mode 0600), whatever is written there gets the usual permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix}"


def write_json_atomic(path: Path, payload: dict) -> None:
    """Writes JSON atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False))


def json_safe(metrics: dict[str, float | str]) -> dict[str, float | str | None]:
    """``metrics`` with NaN as None: JSON has no NaN (``write_json_atomic`` refuses it)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


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
