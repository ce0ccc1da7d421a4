"""The run folder's layout, in one place: every file a training run writes and every reader of a
run (resume, eval, export, report, the console summary) asks ``RunFolder`` for its path.

    <run>/metrics.json, run_info.json, data_report.json, train.log, .hydra/
    <run>/per_image_scores.npz (each val and test image's confusion matrix: semseg.task.per_image)
    <run>/checkpoints/best.ckpt (the best val/miou), last.ckpt (every epoch, to resume from)
    <run>/checkpoints/last-prev.ckpt (the previous last.ckpt, while a new one is saved and verified)
    <run>/checkpoints/damaged/ (checkpoints resume=auto could not load, kept for inspection)
    <run>/pictures/*.png
    <run>/failed.json (a multirun job that failed)
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

BEST, LAST = "best", "last"  # the checkpoints' names, without Lightning's .ckpt extension
CHECKPOINT_EXTENSION = ".ckpt"
METRICS_FILE = "metrics.json"  # also what eval.py writes into its own folder
PER_IMAGE_FILE = "per_image_scores.npz"  # likewise
FAILED_JOB_FILE = "failed.json"
# What a run's checkpoints must hold to resume from: Lightning's weights and its epoch counter.
RESUME_KEYS = ("state_dict", "epoch")


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
    def per_image_scores(self) -> Path:
        """``per_image_scores.npz``: the scored images' confusion matrices (``semseg.task.per_image``)."""
        return self.root / PER_IMAGE_FILE

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

    @property
    def previous_last_checkpoint(self) -> Path:
        """``checkpoints/last-prev.ckpt``: the previous last.ckpt, kept until a new one is saved and
        verified (``semseg.callbacks.VerifiedCheckpoint``)."""
        return previous_checkpoint(self.last_checkpoint)

    @property
    def damaged_checkpoints(self) -> Path:
        """``checkpoints/damaged/``: where ``resume: auto`` moves the checkpoints it cannot load. A folder
        of its own because Lightning picks files by name in ``checkpoints/`` (``ckpt_path=last``: the
        newest ``last*.ckpt``) and in the run folder (the highest number in any name holding
        ``hpc_ckpt_``), and a renamed damaged file there would be picked again."""
        return self.checkpoints / "damaged"

    def damaged_checkpoint(self, checkpoint: Path, when: datetime) -> Path:
        """Where a damaged ``checkpoint`` found at ``when`` (UTC) is kept: ``damaged/last.<UTC time>.ckpt``."""
        return self.damaged_checkpoints / f"{checkpoint.stem}.{when:%Y%m%dT%H%M%SZ}{checkpoint.suffix}"

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

    @property
    def lock(self) -> Path:
        """Held by the process training into the folder (see ``semseg.training.run_lock``)."""
        return self.root / ".lock"

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run folder when inside it (run_info.json stays valid if the
        folder moves), else as given."""
        path, root = Path(path).resolve(), self.root.resolve()
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def previous_checkpoint(path: str | Path) -> Path:
    """Where the previous version of ``path`` is kept while a new one is saved: ``last.ckpt`` ->
    ``last-prev.ckpt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-prev{path.suffix}")


class UnusableCheckpoint(Exception):
    """A checkpoint that cannot be loaded; the message says why in one line, callers add the file and the fix."""


def open_checkpoint(path: str | Path, keys: tuple[str, ...] = RESUME_KEYS) -> dict:
    """The checkpoint's contents, weights-only and memory-mapped: the zip's central directory and the
    pickled structure are read, a tensor's data only when it is used, so checking a checkpoint of
    any size takes milliseconds. The central directory is at the end of the file, so a file cut
    short (a node lost while copying, a full quota, a sync tool) fails. Damage inside tensor data
    is not detected (PyTorch keeps no checksums a load verifies).

    Args:
        path: the checkpoint.
        keys: what it must hold (``RESUME_KEYS`` to resume; inference needs ``hyper_parameters``).

    Raises:
        UnusableCheckpoint: no such file, damaged or truncated, Python objects besides weights (a
            weights-only load refuses them: they could run code), or a key missing.
    """
    import torch  # only callers that have checkpoints pay for it

    path = Path(path)
    if not path.is_file():
        raise UnusableCheckpoint("no such file")
    # Before torch.load: for an empty or non-zip file it reports mmap's or its legacy reader's
    # troubles ("use _use_new_zipfile_serialization", "pop from empty list"), not the file's.
    if not zipfile.is_zipfile(path):
        raise UnusableCheckpoint(
            "damaged or truncated: no zip directory at its end (cut short by an interrupted write or copy, "
            "or not a PyTorch checkpoint)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise UnusableCheckpoint(
            "refused to load: the file holds Python objects besides weights, and loading them could run code "
            f"from the file ({_gist(error)})"
        ) from error
    except Exception as error:  # a damaged file can fail anywhere in PyTorch's reader, with any error type
        raise UnusableCheckpoint(f"damaged or truncated: PyTorch cannot read it ({_gist(error)})") from error
    missing = [key for key in keys if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UnusableCheckpoint(f"not a semseg training checkpoint (it lacks {' and '.join(missing)})")
    return checkpoint


def _gist(error: BaseException) -> str:
    """PyTorch's error in a few words: its messages run to paragraphs of advice over several lines,
    its C++ ones start with their source line ("[enforce fail at inline_container.cc:180] . "), and
    a weights-only refusal names what it refused on its "WeightsUnpickler error:" line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    line = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0])
    line = re.sub(r"^\[enforce fail at [^\]]*\][ .]*", "", line.removeprefix("WeightsUnpickler error: "))
    return line.split(". ")[0]


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from, in one line; None when it can
    (``open_checkpoint``'s cheap check)."""
    try:
        open_checkpoint(path)
    except UnusableCheckpoint as error:
        return str(error)
    return None


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch a Lightning checkpoint was saved at, counted from 1 as the console does (Lightning
    stores its counter, from 0); None when unreadable. Memory-mapped: the weights are not read."""
    try:
        return int(open_checkpoint(path, ("epoch",))["epoch"]) + 1
    except (UnusableCheckpoint, TypeError, ValueError):
        return None
