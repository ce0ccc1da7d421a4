"""Callbacks that keep a run's state through faults: a checkpoint when SIGTERM stops the run, the
previous last.ckpt until a new one is verified, and no DDP rank left waiting when the process that
started them fails."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from semseg.lightning_private import is_subprocess_launcher
from semseg.run_folder import checkpoint_problem, previous_checkpoint

log = logging.getLogger(__name__)


class CheckpointOnSigterm(L.Callback):
    """Saves ``last.ckpt`` when the run is stopped by SIGTERM (SLURM sends it before pre-emption);
    the next run in the same folder resumes from it (``resume: auto``).

    Lightning turns SIGTERM into ``SIGTERMException`` at the next batch, so the saved state is
    consistent (mid-epoch). Not Lightning's ``OnExceptionCheckpoint``: that one saves on any
    exception, and a crash may leave a state not worth keeping (NaN weights); and its presence makes
    every ``fit`` resume from the newest checkpoint, which would override ``resume: false``.

    Args:
        path: the checkpoint to save (training passes the run folder's ``last.ckpt``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        epochs = trainer.fit_loop.epoch_progress.current
        # Stopped between epochs (Lightning checks after counting the epoch complete): the
        # ModelCheckpoint's last.ckpt of that epoch is the state to resume from; a save now would
        # count the finished epoch twice on resume.
        if isinstance(exception, SIGTERMException) and epochs.completed < epochs.started:
            trainer.save_checkpoint(self.path)


class StopRanksOnError(L.Callback):
    """When the process that started the DDP ranks fails, kills the ranks it started.

    They would otherwise wait in their next collective until the process group's timeout
    (``trainer.strategy.timeout``, conf/trainer/ddp.yaml), holding their GPUs. Lightning already
    covers the other way round (a failed rank >0 stops every process: its child-process observer)
    and Ctrl-C, not an error in rank 0. Not on SIGTERM: Lightning forwards that to the ranks, which
    save and stop themselves.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        launcher = trainer.strategy.launcher
        if is_subprocess_launcher(launcher) and not isinstance(exception, SIGTERMException):
            launcher.kill(signal.SIGKILL)


class VerifiedCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that keeps the file it overwrites (``last.ckpt`` as ``last-prev.ckpt``)
    until the new one is saved and loads back (``semseg.run_folder.checkpoint_problem``); when it
    does not, the previous one stays and ``resume: auto`` takes it.

    Training's checkpoint writer already replaces a local file whole or not at all
    (``semseg.training.checkpoints.CheckpointBeside``: written beside it, synced, renamed into
    place), so a crash while saving leaves the old file whole. What this guards against is damage
    that comes without an error: a network or FUSE file system, a sync tool or a full quota that
    leaves the renamed file short. The check reads the zip's directory and the pickled structure,
    not all the weights: about a tenth of a second for a small model's optimizer state, once a
    save (a file that loaded back and is unchanged since is not read again). The hard link keeps
    the old file because the new one arrives by rename, as a new file; a save that copied over
    last.ckpt in place would cut the linked one short too.

    Only global rank 0 touches the files, as Lightning's own saving does; the other ranks need not
    wait for it, since no rank reads these files during training (``trainer.save_checkpoint``
    already holds every rank at its barrier until rank 0 has written).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The files this callback saved and found to load back, as they were then (file_identity):
        # the next save need not read one again before keeping it as the previous one. The check
        # unpickles the optimizer state's structure, ~0.1 s a save for a small model.
        self._verified: set[tuple] = set()

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        target = Path(filepath)
        previous = previous_checkpoint(target)
        if trainer.is_global_zero:
            _keep_as_previous(target, previous, verified=file_identity(target) in self._verified)
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:  # also when the save failed (a diverged loss stops training before it writes)
            if trainer.is_global_zero and previous.exists() and _drop_previous_once_verified(target, previous):
                self._verified.add(file_identity(target))


def file_identity(path: Path) -> tuple | None:
    """What changes when a file is replaced or written to: its inode, size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _keep_as_previous(target: Path, previous: Path, verified: bool = False) -> None:
    """Keeps ``target`` as ``previous``: a hard link (``target`` stays in place for readers and
    costs no space), or a rename where the file system has no hard links. A damaged ``target`` is not
    kept: a ``previous`` from a save that failed its check is the good one. ``verified``: ``target``
    loaded back after its save and is unchanged since, so it is not read again."""
    if not target.is_file() or (not verified and checkpoint_problem(target) is not None):
        return
    previous.unlink(missing_ok=True)
    try:
        os.link(target, previous)
    except OSError:
        os.replace(target, previous)


def _drop_previous_once_verified(target: Path, previous: Path) -> bool:
    """Removes ``previous`` when ``target`` is the new checkpoint and loads back (returns True);
    when the save failed before writing, the previous one is ``target`` again."""
    if not target.exists():  # kept by a rename
        os.replace(previous, target)
        return False
    if os.path.samefile(target, previous):  # kept by a hard link
        previous.unlink()
        return False
    problem = checkpoint_problem(target)
    if problem is None:
        previous.unlink()
        return True
    log.warning(
        f"the checkpoint just saved, {target}, does not load back ({problem}); the previous one is kept as "
        f"{previous}, which resume=auto takes when {target.name} is damaged"
    )
    return False
