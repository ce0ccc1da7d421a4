"""``OptunaSweeper``: checks its config and that Optuna is installed, then runs the search
(``_search.Search``). A bad key or a missing Optuna stops the sweep with one line and exit code 2,
before any job, as semseg's other config errors do."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module without registering
# it in sys.modules, where dataclasses look string annotations up. No Optuna import at the top either:
# the scan imports this module in every run, searching or not.
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig

from semseg.errors import ConfigError, config_errors_in_one_line
from semseg.extras import require_extra

_DIRECTIONS = ("minimize", "maximize")


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: DictConfig,
        pruner: DictConfig | None,
        direction: Any,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        heartbeat_interval: int | None,
        grace_period: int,
        params: DictConfig | None,
        custom_search_space: str | None,
    ) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.params, self.custom_search_space = params, custom_search_space
        self.directions: list[str] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        with config_errors_in_one_line():
            require_extra("optuna", "hparams_search=optuna")
            self._check()
            if config is not None and config.get("seeds") not in (None, 1):
                raise ConfigError(
                    f"seeds={config.seeds} repeats the jobs of a grid sweep; an Optuna search runs one seed per trial. "
                    "Drop seeds, or search first and then run the best configuration with -m seeds=3."
                )
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def _check(self) -> None:
        directions = list(self.direction) if isinstance(self.direction, (list, ListConfig)) else [self.direction]
        self.directions = [str(d) for d in directions]
        wrong = [d for d in self.directions if d not in _DIRECTIONS]
        if wrong or not self.directions:
            raise ConfigError(f"hydra.sweeper.direction={self.direction}: use minimize or maximize (or a list of them)")
        storage = self.storage
        if storage is not None and not (storage.endswith(".journal") or "://" in storage):
            raise ConfigError(
                f"hydra.sweeper.storage={storage}: use a database URL (sqlite:///optuna.db) or a journal file (a path "
                "ending in .journal), or null for <sweep dir>/optuna.journal"
            )
        if self.n_trials < 0 or self.n_jobs < 1:
            raise ConfigError(
                f"hydra.sweeper.n_trials={self.n_trials}, n_jobs={self.n_jobs}: n_trials must be 0 or more and "
                "n_jobs 1 or more"
            )
        if not 0 <= self.max_failure_rate <= 1:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: use a fraction from 0 to 1")
        if self.heartbeat_interval is not None and not 0 < self.heartbeat_interval < self.grace_period:
            raise ConfigError(
                f"hydra.sweeper.heartbeat_interval={self.heartbeat_interval}, grace_period={self.grace_period}: the "
                "interval must be above 0 and below the grace period (e.g. 60 and 300), or null for no heartbeat"
            )

    def sweep(self, arguments: list[str]) -> None:
        from hydra_plugins.semseg_optuna_sweeper._search import Search

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        with config_errors_in_one_line():
            search = Search(self, self.launcher, sweep_dir, self.config, list(arguments))
        search.run()
