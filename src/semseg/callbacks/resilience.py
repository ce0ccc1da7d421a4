"""Callbacks that keep a run's state through faults: a checkpoint when SIGTERM stops the run, and
no DDP rank left waiting when the process that started them fails."""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from semseg.lightning_private import is_subprocess_launcher


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

    They would otherwise wait in their next collective until the process group's timeout (30 min
    with gloo, 10 with NCCL), holding their GPUs. Lightning already covers the other way round (a
    failed rank >0 stops every process: its child-process observer) and Ctrl-C, not an error in
    rank 0. Not on SIGTERM: Lightning forwards that to the ranks, which save and stop themselves.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        launcher = trainer.strategy.launcher
        if is_subprocess_launcher(launcher) and not isinstance(exception, SIGTERMException):
            launcher.kill(signal.SIGKILL)
