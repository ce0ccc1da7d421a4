"""Errors that are the user's to fix: each message names the file or config key and the fix.

Entry points print these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Why a write into an output folder fails when the folder, not the code, is at fault.
FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES})


class SemsegError(ValueError):
    """A problem in the user's data or configuration."""


class DataError(SemsegError):
    """A data set problem (a file, a folder, a mask value)."""


class ConfigError(SemsegError):
    """A configuration problem (a key, a name, an incompatible choice)."""


class TrainingDiverged(SemsegError):
    """The training loss became NaN or infinite; training stopped before saving such weights."""


class OutputError(SemsegError):
    """An output folder cannot take a write: its disk or quota is full, it is read-only, or we lack permission."""


@contextlib.contextmanager
def config_errors_in_one_line() -> Iterator[None]:
    """A ``ConfigError`` inside stops the process with its message on one line and exit code 2: for
    Hydra plugins, whose errors Hydra would otherwise wrap in its own words and a traceback."""
    try:
        yield
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def output_fault(error: BaseException, folder: Path) -> OSError | None:
    """The ``OSError`` behind ``error`` that is a write into ``folder`` failing for want of space or
    permission (``FULL_DISK``, ``NOT_WRITABLE``); None when there is none.

    Libraries re-raise such errors as others (a logger's teardown, a wrapper's ``raise ... from``),
    so ``error``'s causes and contexts are searched too. An error naming a file counts only when the
    file is inside ``folder``, so that an unreadable data file is not taken for an unwritable output;
    a full disk's write errors often name none (a failed ``write``), and those count.
    """
    folder = folder.resolve()
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_DISK | NOT_WRITABLE:
            # filename2: a move's or copy's destination
            names = [name for name in (current.filename, current.filename2) if isinstance(name, (str, bytes))]
            if any(Path(os.fsdecode(name)).resolve().is_relative_to(folder) for name in names):
                return current
            if not names and current.errno in FULL_DISK:
                return current
        pending += [current.__cause__, current.__context__]
    return None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set: where, what, and how to fix it."""

    file: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem} Fix: {self.fix}"


def problems_message(problems: Sequence[Problem], header: str, limit: int = 10) -> str:
    """``header`` and the first ``limit`` problems, one per line, with a count of the rest."""
    lines = [header, *(f"  {p}" for p in problems[:limit])]
    if len(problems) > limit:
        lines.append(
            f"  ... and {len(problems) - limit} more (the JSON report of scripts/inspect_data.py lists them all)."
        )
    return "\n".join(lines)
