"""One study, several launches: which trials count toward ``n_trials``, asking for trials one launch
at a time, and heartbeats that tell a killed launch's trials from running ones.

Optuna's own heartbeat (``RDBStorage(heartbeat_interval=...)``) is sent by ``study.optimize`` only,
not with ask and tell, and journal storages have none; so the launch stamps its running trials
itself (a user attribute), and any launch fails the trials whose stamp is older than the grace
period. Such a trial does not count toward ``n_trials``: another takes its place.
"""

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import FrozenTrial, Trial, TrialState

log = logging.getLogger(__name__)

# Trial user attributes.
HEARTBEAT = "heartbeat"  # time.time() of the launch's last stamp
FAILURE = "failure"  # why the sweeper told the trial FAIL (its job failed)
# Study user attribute: launches so far, which seeds each launch's sampler apart.
LAUNCHES = "launches"

# A lock held longer than this (its holder killed mid-ask) is broken by the next launch.
_LOCK_GRACE_S = 60


@contextlib.contextmanager
def one_launch_at_a_time(lock_target: Path) -> Iterator[None]:
    """Holds ``<lock_target>.lock`` (created exclusively: safe on NFS) for the block, so that counting
    the study's trials and asking for the missing ones is one step across launches."""
    lock = JournalFileOpenLock(str(lock_target), grace_period=_LOCK_GRACE_S)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def counted(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count toward ``n_trials``: finished, failed by their job, or running. Not the
    waiting (enqueued, not asked yet) ones, nor those failed because their launch died."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and not (t.state == TrialState.FAIL and FAILURE not in t.user_attrs)
    ]


def _stamped_running(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.RUNNING and HEARTBEAT in t.user_attrs]


def running_of_first(study: optuna.Study, n_trials: int) -> list[FrozenTrial]:
    """The stamped running trials among the first ``n_trials`` that count (the ones a launch with
    that target waits for, not those a launch with a larger one went on to ask for)."""
    return _stamped_running(counted(study)[:n_trials])


def tell(study: optuna.Study, trial: Trial | int, state: TrialState, values: Sequence[float] | None = None) -> bool:
    """``study.tell``; False when another launch ended the trial first (it found the trial stale, or
    this launch found it stale and its own launch told it at the same moment)."""
    try:
        return study.tell(trial, values, state=state, skip_if_finished=True).state == state
    except UpdateFinishedTrialError:
        return False
    except RuntimeError as error:
        # GridSampler stops the study when its grid is done, which works only inside optimize(); the
        # trial is told by then.
        if "Study.stop" not in str(error):
            raise
        return True


def fail_stale(study: optuna.Study, grace_period: float) -> list[int]:
    """Fails the running trials whose launch has not stamped them for ``grace_period`` seconds;
    their numbers."""
    now = time.time()
    stale = [
        t.number
        for t in _stamped_running(study.get_trials(deepcopy=False))
        if now - t.user_attrs[HEARTBEAT] > grace_period
    ]
    for number in stale:
        tell(study, number, TrialState.FAIL)
    if stale:
        log.warning(
            f"trials {stale} had no heartbeat for more than {grace_period:g} s (their launch was stopped): "
            "failed, and other trials run in their place"
        )
    return stale


def stamp(trials: Sequence[Trial]) -> None:
    """Records that this launch still runs ``trials``."""
    for trial in trials:
        try:
            trial.set_user_attr(HEARTBEAT, time.time())
        except UpdateFinishedTrialError:  # failed by another launch that found it stale
            pass
        except Exception as error:  # a storage hiccup (a busy database, NFS): the next beat may pass
            log.warning(f"heartbeat of trial {trial.number} not recorded: {error}")


class Heartbeat:
    """Stamps ``trials`` every ``interval`` seconds while the block runs (from a thread: the jobs
    may run in this process)."""

    def __init__(self, trials: Sequence[Trial], interval: float | None):
        self.trials, self.interval = list(trials), interval
        self._stop = threading.Event()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            stamp(self.trials)

    def __enter__(self) -> "Heartbeat":
        if self.interval is not None:
            threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
