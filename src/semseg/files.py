"""Writing files so that readers never see half of one, and where cached facts live."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)


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


@contextmanager
def lock_making(target: Path) -> Iterator[None]:
    """Holds an exclusive lock on making ``target`` for the block (``fcntl.flock`` on a hidden
    ``.<name>.lock`` beside it), so that of several processes making the same thing at once (a
    sweep's jobs, DDP's ranks) one makes it and the others wait, then find it made.

    The kernel releases the lock of a process that dies, so a crashed holder never blocks the others,
    and the lock file is removed when its holder leaves the block. Exclusion is best effort: where
    the lock cannot be had (a read-only folder, a filesystem without locks) the block runs unlocked,
    and after a holder that failed, a newcomer may lock a new file beside a waiter on the removed one.
    So the lock only saves duplicate work, and callers stay correct without it: they check inside the
    block whether ``target`` was made while they waited, and accept another process's result when
    renaming theirs into place finds one there.
    """
    path = target.parent / f".{target.name}.lock"
    fd, held = None, False
    try:
        # Where no lock is to be had (Windows has no flock; see above), the block runs unlocked.
        with contextlib.suppress(OSError):
            if fcntl is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # writable: NFS locks exclusively only then
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info(f"{target}: another process is making it; waiting for it")
                    fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
        yield
    finally:
        # Removed so that no lock files stay behind: processes waiting on it still get it in turn,
        # and those that come later find ``target`` made (or, if making it failed, lock a new file).
        if held:
            with contextlib.suppress(OSError):
                path.unlink()
        if fd is not None:
            os.close(fd)  # releases the lock


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


def relative_to_root(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies inside, else absolute: list files
    (``data.split_files``) may name files anywhere, and caches key files by this."""
    # A prefix test on the strings: Path.relative_to parses both paths again, 30 µs a file.
    prefix = os.path.join(str(root), "")
    text = str(path)
    if text.startswith(prefix):
        return Path(text[len(prefix) :]).as_posix() if os.sep != "/" else text[len(prefix) :]
    return os.path.abspath(text)
