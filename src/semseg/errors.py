"""Errors that are the user's to fix: each message names the file or config key and the fix.

Entry points print these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class SemsegError(ValueError):
    """A problem in the user's data or configuration."""


class DataError(SemsegError):
    """A data set problem (a file, a folder, a mask value)."""


class ConfigError(SemsegError):
    """A configuration problem (a key, a name, an incompatible choice)."""


class TrainingDiverged(SemsegError):
    """The training loss became NaN or infinite; training stopped before saving such weights."""


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
