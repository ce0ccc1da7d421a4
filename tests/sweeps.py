"""Running ``scripts/train.py -m`` on the tiny data set, cheap, as the sweep tests do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CHEAP, tiny_data

ROOT = Path(__file__).resolve().parents[1]


def sweep_command(sweep: Path, tiny_root: Path, swept: list[str], *overrides: str) -> list[str]:
    """``scripts/train.py -m <swept>`` writing the sweep into ``sweep``; ``overrides`` come after the
    cheap defaults, so they win over them (``trainer=ddp_cpu``)."""
    tiny = [*CHEAP, *tiny_data(tiny_root)]
    return [
        sys.executable, str(ROOT / "scripts" / "train.py"), "-m", *swept, f"hydra.sweep.dir={sweep}", *tiny, *overrides
    ]  # fmt: skip


def sweep_env(**env: str) -> dict[str, str]:
    return os.environ | {"HYDRA_FULL_ERROR": "1"} | env


def run_sweep(sweep: Path, tiny_root: Path, swept: list[str], *overrides: str, cwd: Path | None = None, **env: str):
    """``sweep_command``, run to its end."""
    command = sweep_command(sweep, tiny_root, swept, *overrides)
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=cwd, env=sweep_env(**env))
