"""Pruning of Optuna trials: a trial's training job reports ``val/miou`` to its trial after every
validation epoch, and stops early when the study's pruner says the trial is not worth finishing.

The sweeper (``hydra_plugins.semseg_optuna_sweeper``) writes a ``TrialLink`` into each trial's job
folder before launching it; training adds ``OptunaPruning`` when it finds one. A file in the job
folder, not an environment variable, because it reaches the job whatever the launcher: the basic one
(in-process), gpu_pool (a subprocess given only the task's overrides) and submitit (another machine,
the shared sweep folder).

Optuna is imported only here, when a job has a link (``pip install "semseg[optuna]"``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L

from semseg.files import write_json_atomic

log = logging.getLogger(__name__)

# In a trial's job folder: how the job reaches its trial.
TRIAL_LINK_FILE = "optuna_trial.json"
# A trial's user attribute, set by the job that its pruner stopped (the epoch, from 1); the sweeper
# tells such a trial PRUNED.
PRUNED_AT_EPOCH = "pruned_at_epoch"
# hydra.sweeper.storage values that name a journal file rather than a database URL.
JOURNAL_SUFFIX = ".journal"


def open_storage(storage: str) -> Any:
    """The Optuna storage ``hydra.sweeper.storage`` names: a path ending in ``.journal`` is a
    ``JournalStorage`` file (appends under a file lock: safe for several processes and hosts on a
    shared disk, NFS included); anything else is a database URL (``sqlite:///optuna.db``)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage.endswith(JOURNAL_SUFFIX):
        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    return storage


@dataclass(frozen=True)
class TrialLink:
    """What a trial's job needs to reach its trial in the study."""

    storage: str  # absolute: the job may run elsewhere (another working directory, another host)
    study_name: str
    trial_number: int
    trial_id: int  # the storage's id of the trial, which optuna.trial.Trial takes
    pruner: dict | None  # the pruner's Hydra config: pruners live in processes, not in the storage

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / TRIAL_LINK_FILE, asdict(self))

    @classmethod
    def read(cls, folder: Path) -> TrialLink | None:
        path = Path(folder) / TRIAL_LINK_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


class OptunaPruning(L.Callback):
    """Reports ``monitor`` to the trial after each validation epoch (step: the epoch, from 0) and
    stops training when the study's pruner prunes the trial; the trial then gets the user attribute
    ``pruned_at_epoch`` and the job ends normally (its best checkpoint evaluated), so the sweeper
    tells it PRUNED.

    Rank 0 talks to the storage; the decision is broadcast so that every DDP rank stops together.
    Several validations in one epoch (``val_check_interval`` < 1) report the epoch's first only:
    Optuna keeps one value per step.
    """

    def __init__(self, link: TrialLink, monitor: str = "val/miou"):
        self.link, self.monitor = link, monitor
        self._trial: Any = None  # rank 0's
        self._reported_epoch: int | None = None
        self._fitting = False  # every rank's: the broadcast is a collective
        self._reporting = True  # rank 0's

    @classmethod
    def for_run(cls, folder: str | Path) -> OptunaPruning | None:
        """The callback for a trial's job folder; None for any other run."""
        link = TrialLink.read(Path(folder))
        return None if link is None else cls(link)

    def _open_trial(self) -> Any:
        import optuna
        from hydra.utils import instantiate

        pruner = instantiate(self.link.pruner) if self.link.pruner else optuna.pruners.NopPruner()
        study = optuna.load_study(
            study_name=self.link.study_name, storage=open_storage(self.link.storage), pruner=pruner
        )
        return optuna.trial.Trial(study, self.link.trial_id)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = True
        if not trainer.is_global_zero:
            return
        import optuna

        self._trial = self._open_trial()
        state = next(
            t.state for t in self._trial.study.get_trials(deepcopy=False) if t.number == self.link.trial_number
        )
        if state != optuna.trial.TrialState.RUNNING:  # this folder's job run again after its trial ended
            log.info(f"optuna trial {self.link.trial_number} is {state.name}: not reporting to it")
            self._reporting = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = False  # the best checkpoint's validation after fitting is no epoch of the trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._fitting:
            return
        prune = self._report(trainer) if trainer.is_global_zero else False
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True

    def _report(self, trainer: L.Trainer) -> bool:
        import optuna

        epoch = trainer.current_epoch
        value = trainer.callback_metrics.get(self.monitor)
        if not self._reporting or value is None or epoch == self._reported_epoch:
            return False
        self._reported_epoch = epoch
        try:
            self._trial.report(float(value), epoch)
            if not self._trial.should_prune():
                return False
            self._trial.set_user_attr(PRUNED_AT_EPOCH, epoch + 1)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another launch failed the trial (its sweeper gave no heartbeat for grace_period).
            log.warning(f"optuna trial {self.link.trial_number} was ended by another launch: not reporting to it")
            self._reporting = False
            return False
        log.info(
            f"optuna trial {self.link.trial_number} pruned at epoch {epoch + 1} ({self.monitor} {float(value):.4f}): "
            "training stops"
        )
        return True
