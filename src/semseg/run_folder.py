"""The run folder's layout, in one place: every file a training run writes and every reader of a
run (resume, eval, export, report, the console summary) asks ``RunFolder`` for its path.

    <run>/metrics.json, run_info.json, data_report.json, train.log, .hydra/
    <run>/checkpoints/best.ckpt (the best val/miou), last.ckpt (every epoch, to resume from)
    <run>/pictures/*.png
    <run>/failed.json (a multirun job that failed)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

BEST, LAST = "best", "last"  # the checkpoints' names, without Lightning's .ckpt extension
CHECKPOINT_EXTENSION = ".ckpt"
METRICS_FILE = "metrics.json"  # also what eval.py writes into its own folder
FAILED_JOB_FILE = "failed.json"


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run's files (nothing is created by asking)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run a ``<run>/checkpoints/*.ckpt`` belongs to."""
        return cls(Path(checkpoint).resolve().parent.parent)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.ckpt``; ``name`` is ``BEST`` or ``LAST`` for the run's own."""
        return self.checkpoints / f"{name}{CHECKPOINT_EXTENSION}"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint(BEST)

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint(LAST)

    def result_checkpoint(self) -> Path | None:
        """The checkpoint a run's results come from: best.ckpt, else last.ckpt (validation off); None
        when it has neither."""
        return next((p for p in (self.best_checkpoint, self.last_checkpoint) if p.is_file()), None)

    def slurm_requeue_checkpoints(self) -> list[Path]:
        """Lightning's SLURM auto-requeue checkpoints (``hpc_ckpt_<n>.ckpt``, saved on SIGUSR1)."""
        return sorted(self.root.glob("hpc_ckpt_*.ckpt"))

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def run_info(self) -> Path:
        return self.root / "run_info.json"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def pictures(self) -> Path:
        return self.root / "pictures"

    @property
    def hydra_config(self) -> Path:
        return self.root / ".hydra" / "config.yaml"

    @property
    def failed_job(self) -> Path:
        """Written by a multirun job that failed (see ``semseg.cli.run_job``)."""
        return self.root / FAILED_JOB_FILE

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run folder when inside it (run_info.json stays valid if the
        folder moves), else as given."""
        path, root = Path(path).resolve(), self.root.resolve()
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch a Lightning checkpoint was saved at, counted from 1 as the console does (Lightning
    stores its counter, from 0); None when unreadable. Memory-mapped: the weights are not read."""
    import torch  # only callers that have checkpoints pay for it

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError):
        return None
