"""The search loop: open (or resume) the study, ask for the missing trials a batch at a time, launch
them as Hydra jobs, tell their outcomes, and write the results.

Each trial's job runs in ``<sweep dir>/<trial number>``: trial numbers are unique in a study, so
launches that share one never write into the same folder. The job finds its trial through the
``TrialLink`` the sweeper leaves in that folder (pruning: ``semseg.callbacks.OptunaPruning``).
"""

import contextlib
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import Trial, TrialState

from hydra_plugins.semseg_optuna_sweeper import _results, _trials
from hydra_plugins.semseg_optuna_sweeper._search_space import grid_search_space, parse_search_space
from semseg.callbacks.optuna_pruning import JOURNAL_SUFFIX, PRUNED_AT_EPOCH, TrialLink, open_storage
from semseg.errors import ConfigError

log = logging.getLogger(__name__)

# With storage null, the study lives in this journal file of the sweep folder rather than in memory:
# the jobs report to it from other processes (gpu_pool, submitit), and a stopped search resumes
# from it (hydra.sweep.dir=<that folder>).
DEFAULT_JOURNAL = "optuna" + JOURNAL_SUFFIX
# A launch with no trial left to ask waits for the other launches' running trials this often: a
# trial whose launch died fails after grace_period and is replaced.
_WAIT_S = 5


def absolute_storage(storage: str) -> str:
    """``storage`` with a relative journal or SQLite path made absolute: the jobs may run in another
    working directory."""
    if storage.endswith(JOURNAL_SUFFIX):
        return os.path.abspath(storage)
    scheme = "sqlite:///"
    path = storage[len(scheme) :]
    if storage.startswith(scheme) and not path.startswith("/") and path != ":memory:":
        return scheme + os.path.abspath(path)
    return storage


def _options(node: DictConfig | None) -> dict[str, Any]:
    """A sampler's or pruner's config without its null keys (null: Optuna's default)."""
    options = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    return {key: value for key, value in options.items() if value is not None}


class Search:
    def __init__(self, sweeper: Any, launcher: Launcher, sweep_dir: Path, config: DictConfig, arguments: list[str]):
        self.sweeper, self.launcher, self.sweep_dir, self.config = sweeper, launcher, sweep_dir, config
        self.distributions, self.fixed = parse_search_space(sweeper.params, arguments)
        self.directions = sweeper.directions
        self.n_trials = sweeper.n_trials
        self.storage = absolute_storage(sweeper.storage or str(sweep_dir / DEFAULT_JOURNAL))
        # Counting and asking go one launch at a time: beside a journal or SQLite file, that file's
        # lock; for a database server, the sweep folder's, which its launches share.
        target = self.storage.removeprefix("sqlite:///") if self.storage.startswith("sqlite:///") else self.storage
        if "://" in target:
            target = str(sweep_dir / DEFAULT_JOURNAL)
        self.lock_target = Path(f"{target}.trials")
        self.lock_target.parent.mkdir(parents=True, exist_ok=True)
        self.pruner = _options(sweeper.pruner)
        self.study = self._open_study()

    def _open_study(self) -> optuna.Study:
        study = optuna.create_study(
            study_name=self.sweeper.study_name,
            storage=open_storage(self.storage),
            pruner=instantiate(self.pruner) if self.pruner else optuna.pruners.NopPruner(),
            directions=self.directions,
            load_if_exists=True,
        )
        made_for = [d.name.lower() for d in study.directions]
        if made_for != self.directions:
            raise ConfigError(
                f"hydra.sweeper.direction={self.sweeper.direction}: study {study.study_name} in {self.storage} "
                f"was made to {' and '.join(made_for)}; set that direction, or a new hydra.sweeper.study_name"
            )
        with _trials.one_launch_at_a_time(self.lock_target):
            launch = study.user_attrs.get(_trials.LAUNCHES, 0)
            study.set_user_attr(_trials.LAUNCHES, launch + 1)
        study.sampler = self._sampler(launch)
        pruner = self.pruner.get("_target_", "none").rsplit(".", 1)[-1]
        log.info(
            f"Optuna study {study.study_name} in {self.storage}: {len(_trials.counted(study))} of {self.n_trials} "
            f"trials exist; sampler {type(study.sampler).__name__}, pruner {pruner}, {' and '.join(self.directions)}"
        )
        return study

    def _sampler(self, launch: int) -> optuna.samplers.BaseSampler:
        options = _options(self.sweeper.sampler)
        if launch and "seed" in options:
            # Launches of one study with one seed would sample the same parameters.
            options["seed"] += launch
            log.info(f"launch {launch + 1} of this study: sampler seed {options['seed']} (the config's + {launch})")
        if issubclass(get_class(options["_target_"]), optuna.samplers.GridSampler) and "search_space" not in options:
            options["search_space"] = grid_search_space(self.distributions)
            size = math.prod(len(values) for values in options["search_space"].values())
            if size < self.n_trials:
                log.info(f"the grid has {size} points: n_trials {self.n_trials} -> {size}")
                self.n_trials = size
        return instantiate(options)

    def run(self) -> None:
        while True:
            trials = self._ask()
            if not trials:
                if self.sweeper.heartbeat_interval is not None and _trials.running_of_first(self.study, self.n_trials):
                    time.sleep(_WAIT_S)  # other launches' trials: they may need replacing
                    continue
                break
            returns = self._launch(trials)
            # Read from the storage, not from the trials: the jobs wrote to it (pruned_at_epoch), and a
            # database storage caches the trials this process asked for.
            attrs = {t.number: t.user_attrs for t in self.study.get_trials(deepcopy=False)}
            states = [self._tell(trial, job, attrs[trial.number]) for trial, job in zip(trials, returns, strict=True)]
            failed = states.count(TrialState.FAIL)
            if failed / len(trials) > self.sweeper.max_failure_rate:
                log.error(
                    f"{failed} of {len(trials)} trials failed, more than hydra.sweeper.max_failure_rate="
                    f"{self.sweeper.max_failure_rate}: the search stops"
                )
                break
        self._write_results()

    def _ask(self) -> list[Trial]:
        with _trials.one_launch_at_a_time(self.lock_target):
            if self.sweeper.heartbeat_interval is not None:
                _trials.fail_stale(self.study, self.sweeper.grace_period)
            missing = self.n_trials - len(_trials.counted(self.study))
            trials = [self.study.ask(self.distributions) for _ in range(max(0, min(self.sweeper.n_jobs, missing)))]
            if self.sweeper.custom_search_space:
                extend = get_method(self.sweeper.custom_search_space)
                for trial in trials:
                    extend(self.config, trial)
            if self.sweeper.heartbeat_interval is not None:
                _trials.stamp(trials)  # seen by the other launches as soon as they are asked
        return trials

    def _launch(self, trials: Sequence[Trial]) -> Sequence[JobReturn]:
        overrides = []
        for trial in trials:
            job_dir = self.sweep_dir / str(trial.number)
            job_dir.mkdir(parents=True, exist_ok=True)
            if len(self.directions) == 1:  # Optuna prunes single-objective studies only
                # trial._trial_id: the storage's id, which the job needs to report to this trial.
                link = TrialLink(self.storage, self.study.study_name, trial.number, trial._trial_id, self.pruner)
                link.write(job_dir)
            params = [f"{name}={value}" for name, value in trial.params.items()]
            overrides.append([*self.fixed, *params, f"hydra.sweep.subdir={trial.number}"])
        log.info(f"launching trials {[t.number for t in trials]} (the study: {self.n_trials} trials in all)")
        try:
            with _trials.Heartbeat(trials, self.sweeper.heartbeat_interval):
                return self.launcher.launch(overrides, initial_job_idx=trials[0].number)
        except BaseException:
            # Stopped (Ctrl-C, a launcher error): the trials are told FAIL with no failure of their own,
            # so that they do not count toward n_trials and a resumed search runs others in their place.
            for trial in trials:
                _trials.tell(self.study, trial, TrialState.FAIL)
            raise

    def _tell(self, trial: Trial, job: JobReturn, user_attrs: dict[str, Any]) -> TrialState:
        """Tells the trial its job's outcome: COMPLETE with its value, PRUNED if its pruner stopped
        it, FAIL (with the reason in its ``failure`` attribute) if it raised, returned None (a failed
        job: semseg.cli.run_job) or a value that is not a finite number. Returns the state told."""
        try:
            value = job.return_value
        except Exception as error:
            return self._fail(trial, f"{type(error).__name__}: {error}")
        if value is None:
            return self._fail(trial, f"the job failed (see {self.sweep_dir / str(trial.number)})")
        if PRUNED_AT_EPOCH in user_attrs:
            return self._finish(trial, TrialState.PRUNED)
        values = value if isinstance(value, Sequence) else [value]
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            return self._fail(trial, f"the job returned {value!r}, not a number")
        if len(values) != len(self.directions) or not all(math.isfinite(v) for v in values):
            return self._fail(trial, f"the job returned {value!r}, not {len(self.directions)} finite number(s)")
        return self._finish(trial, TrialState.COMPLETE, values)

    def _fail(self, trial: Trial, reason: str) -> TrialState:
        log.warning(f"trial {trial.number} failed: {reason}")
        with contextlib.suppress(UpdateFinishedTrialError):  # ended by another launch: _finish says so
            trial.set_user_attr(_trials.FAILURE, reason)
        return self._finish(trial, TrialState.FAIL)

    def _finish(self, trial: Trial, state: TrialState, values: list[float] | None = None) -> TrialState:
        if not _trials.tell(self.study, trial, state, values):
            log.warning(f"trial {trial.number} was ended by another launch (no heartbeat for too long): result dropped")
        return state

    def _write_results(self) -> None:
        results = _results.write_results(self.study, self.sweep_dir, self.storage)
        if results.get("best_value") is not None:
            log.info(f"Best parameters: {results['best_params']}; best value: {results['best_value']}")
        _results.write_trials_table(self.study, self.sweep_dir)
        _results.write_plots(self.study, self.sweep_dir)
