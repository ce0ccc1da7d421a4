"""Training's checkpoints: the callbacks that write them where the run folder says, the writer that
replaces a checkpoint whole or not at all, and the checkpoint a run resumes from."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from semseg.callbacks import CheckpointOnSigterm
from semseg.errors import ConfigError
from semseg.files import atomic_path
from semseg.run_folder import BEST, LAST, RunFolder, UnusableCheckpoint, checkpoint_problem, open_checkpoint

log = logging.getLogger(__name__)

# The callbacks config's entries that write the run's own checkpoints (conf/callbacks/default.yaml).
RUN_CHECKPOINT_KEYS = {"model_checkpoint": BEST, "last_checkpoint": LAST}


def build_callbacks(
    cfg: Mapping | None, run: RunFolder, with_logger: bool = True, validates: bool = True
) -> list[L.Callback]:
    """Instantiates the ``callbacks`` group. The run's checkpoints (``model_checkpoint``: best.ckpt,
    ``last_checkpoint``: last.ckpt, and the one ``CheckpointOnSigterm`` saves) are written where
    ``RunFolder`` says, the folder that resuming, eval.py, export.py and report.py read, so their
    paths are not config keys; other ``ModelCheckpoint`` entries without a ``dirpath`` save
    into the run's ``checkpoints/`` too.

    Without validation (``validates=False``: ``trainer.limit_val_batches=0``) there is no best
    checkpoint to keep: ``model_checkpoint`` is left out, rather than left to warn every epoch
    that ``val/miou`` is missing; the final weights (last.ckpt) are the result.

    Raises:
        ConfigError: a run's checkpoint given a path; a ``LearningRateMonitor`` without a logger
            (Lightning would stop at the first epoch, after the data work, with a traceback); another
            callback that watches a ``val/`` metric when validation is off (it would never act).
    """
    check_validation_watchers(cfg, validates)
    callbacks = []
    for key, entry in (cfg or {}).items():
        if not entry or (not validates and key == "model_checkpoint"):
            continue
        if not with_logger and _target_name(entry) == LearningRateMonitor.__name__:
            raise ConfigError(
                f"callbacks.{key} (LearningRateMonitor) logs to a logger, and logger=none: "
                f"choose a logger (logger=csv) or drop it (callbacks.{key}=null)."
            )
        kwargs = {}
        if key in RUN_CHECKPOINT_KEYS:
            given = [name for name in ("dirpath", "filename") if name in entry]
            if given:
                raise ConfigError(
                    f"callbacks.{key}.{given[0]}: the run's checkpoints are always checkpoints/best.ckpt and "
                    "last.ckpt (resume=auto, eval.py and report.py find them there); for checkpoints of your "
                    "own, add a ModelCheckpoint under another key of callbacks."
                )
            kwargs = {"dirpath": str(run.checkpoints), "filename": RUN_CHECKPOINT_KEYS[key]}
        elif _target_name(entry) == CheckpointOnSigterm.__name__:
            kwargs = {"path": str(run.last_checkpoint)}
        elif _target_name(entry) == ModelCheckpoint.__name__ and "dirpath" not in entry:
            kwargs = {"dirpath": str(run.checkpoints)}
        callbacks.append(instantiate(entry, **kwargs))
    return callbacks


def validation_is_on(trainer: Mapping | DictConfig) -> bool:
    """Whether a run with these ``trainer`` settings validates at all (``limit_val_batches`` not 0)."""
    limit = trainer.get("limit_val_batches")
    return limit is None or limit != 0


def check_validation_watchers(cfg: Mapping | None, validates: bool) -> None:
    """Raises ``ConfigError`` when validation is off and a callback other than the run's best
    checkpoint watches a ``val/`` metric: it would never act (EarlyStopping would stop the run at
    its first epoch). Called before any output, and again where the callbacks are built."""
    if validates:
        return
    for key, entry in (cfg or {}).items():
        if entry and key != "model_checkpoint" and str(entry.get("monitor") or "").startswith("val/"):
            raise ConfigError(
                f"callbacks.{key} watches {entry['monitor']}, and validation is off (trainer.limit_val_batches=0): "
                f"drop it (callbacks.{key}=null) or validate (trainer.limit_val_batches=1.0)."
            )


def _target_name(entry: Mapping | DictConfig) -> str:
    return str(entry.get("_target_", "")).rsplit(".", 1)[-1]


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint training starts from: ``ckpt_path``, once it loads; else, with ``resume: auto``,
    the newest of the run folder's checkpoints that loads (``_resume_candidates``), each damaged one
    named in the log and moved to ``checkpoints/damaged/``; else none (a new run, or nothing readable).

    Every candidate gets the cheap check of ``checkpoint_problem`` (milliseconds), so a file cut short
    is found here, named, rather than by Lightning's unnamed "PytorchStreamReader failed" traceback.

    Raises:
        ConfigError: ``ckpt_path`` names a missing or damaged checkpoint.
    """
    run = RunFolder(cfg.output_dir)
    if cfg.get("ckpt_path"):
        return _checked_ckpt_path(str(cfg.ckpt_path), run)
    if cfg.get("resume", "auto") != "auto":
        return None
    damaged = []
    for candidate in _resume_candidates(run):
        try:
            # One cheap read both checks the file and gives its epoch (counted from 1, as the console).
            epoch = f"epoch {int(open_checkpoint(candidate)['epoch']) + 1}"
            problem = None
        except UnusableCheckpoint as error:
            problem = str(error)
        if problem is None:
            if damaged:
                names = " and ".join(path.name for path in damaged)
                log.warning(
                    f"resuming from {candidate} ({epoch}) because {names} {'is' if len(damaged) == 1 else 'are'} "
                    f"damaged (kept in {run.damaged_checkpoints})"
                )
            else:
                log.info(f"resuming from {candidate} ({epoch}; resume=auto, resume=false starts over)")
            return str(candidate)
        damaged.append(candidate)
        # One process moves files; DDP's other ranks skip the same damaged files, or find them gone.
        if rank_zero_only.rank == 0:
            kept = run.damaged_checkpoint(candidate, datetime.now(timezone.utc))
            kept.parent.mkdir(parents=True, exist_ok=True)
            candidate.rename(kept)  # out of the names Lightning looks for, and of the next save's way
            log.warning(f"cannot resume from {candidate}: {problem}; moved to {kept} for inspection")
    if damaged and rank_zero_only.rank == 0:
        log.warning(
            f"no readable checkpoint to resume from: training starts over; the damaged ones are kept in "
            f"{run.damaged_checkpoints} ({', '.join(path.name for path in damaged)})"
        )
    return None


def _resume_candidates(run: RunFolder) -> list[Path]:
    """The checkpoints ``resume: auto`` may start from, in the order it tries them: newest first of
    ``last.ckpt``, Lightning's SLURM auto-requeue checkpoints (``hpc_ckpt_<n>.ckpt``, saved on
    SIGUSR1) and ``last-prev.ckpt`` (kept while last.ckpt is saved); ``best.ckpt`` last, being
    possibly epochs behind them."""
    recent = [run.last_checkpoint, *run.slurm_requeue_checkpoints(), run.previous_last_checkpoint]
    found = sorted((path for path in recent if path.is_file()), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return [*found, run.best_checkpoint] if run.best_checkpoint.is_file() else found


# ckpt_path values that Lightning resolves to a checkpoint its callbacks know; "last" is checked as
# the run's last.ckpt (Lightning takes the newest checkpoints/last*.ckpt, which is it).
_LIGHTNING_NAMES = ("best", "hpc", "registry")


def _checked_ckpt_path(given: str, run: RunFolder) -> str:
    """``ckpt_path`` as given, once the checkpoint it names loads (``checkpoint_problem``)."""
    if given.split(":")[0].lower() in _LIGHTNING_NAMES or (given == "last" and not run.last_checkpoint.exists()):
        return given  # Lightning's names; without a last.ckpt, Lightning's "last" warns and starts over
    path = run.last_checkpoint if given == "last" else Path(given)
    problem = checkpoint_problem(path)
    if problem is not None:
        named = f"last ({path})" if given == "last" else given
        raise ConfigError(
            f"ckpt_path={named}: {problem}. Pass another checkpoint (a run keeps best.ckpt and last.ckpt in "
            "<run folder>/checkpoints/), or leave ckpt_path unset to resume from the newest readable checkpoint of "
            "the run folder (resume=auto)."
        )
    return given


class CheckpointBeside(TorchCheckpointIO):
    """Lightning's checkpoint writer, with its temporary file beside the checkpoint.

    Lightning writes a checkpoint to a temporary file, then moves it into place (an fsspec
    transaction), but fsspec makes that file in the system's temporary folder: where the run folder
    is on another file system (a cluster's /tmp is local, its run folders shared), the move is a copy
    that truncates the old checkpoint first, so a full disk or a crash while copying destroyed the
    previous last.ckpt. Written beside it (``semseg.files.atomic_path``) and synced, the move is a
    rename, which replaces the old checkpoint whole or not at all. Remote paths (``s3://``, ...) are
    Lightning's.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        """Writes ``checkpoint`` to ``path`` atomically (see the class)."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(Path(path)) as staged, open(staged, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename: a lost node leaves the old file, not an empty one
