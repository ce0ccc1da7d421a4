"""The configs of ``hydra/sweeper=optuna``, its samplers (``hydra/sweeper/sampler``) and pruners
(``hydra/sweeper/pruner``). A sampler's or pruner's key left null takes Optuna's default."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module without registering
# it in sys.modules, where dataclasses look string annotations up.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.semseg_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # The sampler and pruner reach the sweeper as configs: it seeds the sampler per launch and hands
    # the pruner's config to the jobs, which build their own.
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])

    sampler: Any = MISSING
    # Pruning acts on the values the jobs report each epoch (semseg.callbacks.OptunaPruning).
    pruner: Any = MISSING
    # minimize or maximize; a list of them for several objectives (the task then returns a list).
    direction: Any = "minimize"
    # Trials and launches of one study share it by name; null: a new study with a generated name.
    study_name: str | None = "semseg"
    # A database URL (sqlite:///optuna.db) or a journal file (a path ending in .journal); null: the
    # journal file optuna.journal in the sweep folder.
    storage: str | None = None
    # The study's total: a launch on a study that has trials runs only the missing ones.
    n_trials: int = 20
    # Trials launched together (with hydra/launcher=gpu_pool: as many as there are GPU slots).
    n_jobs: int = 1
    # Of a batch of n_jobs trials, the failed fraction above which the search stops.
    max_failure_rate: float = 0.0
    # Every heartbeat_interval seconds a launch stamps its running trials; another launch fails a
    # running trial unstamped for grace_period seconds (its launch was killed) and runs another in
    # its place. null: no heartbeat, a killed launch's trials stay RUNNING.
    heartbeat_interval: int | None = 60
    grace_period: int = 300
    # key: a Hydra sweep (interval(...), tag(log, interval(...)), choice(...), range(...)) or a value.
    params: dict[str, Any] | None = None
    # A function (config, trial) that suggests more parameters with trial.suggest_*.
    custom_search_space: str | None = None


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool | None = None
    group: bool = False
    # Running trials count as if they had the worst value, so that trials run at once differ.
    constant_liar: bool = True


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class CmaEsSamplerConf:  # needs the cmaes package
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    sigma0: float | None = None
    n_startup_trials: int = 1
    restart_strategy: str | None = None
    popsize: int | None = None
    use_separable_cma: bool = False
    with_margin: bool = False
    consider_pruned_trials: bool = False


@dataclass
class GridSamplerConf:
    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = None
    # null: every value of params (choice and range sweeps), which then must be discrete.
    search_space: dict[str, Any] | None = None


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    # Prunes a trial whose val/miou is below the median of the other trials' at the same epoch.
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # trials finished before any is pruned: the median needs a few
    n_warmup_steps: int = 2  # epochs a trial runs before it may be pruned (Optuna's default, 0, judges the 1st)
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # epochs; auto: the most a trial reported
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConf:
    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None  # e.g. 0.2: prune a trial whose val/miou is below it
    upper: float | None = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="semseg")
for _name, _node in {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "grid": GridSamplerConf,
    "nsgaii": NSGAIISamplerConf,
}.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="semseg")
for _name, _node in {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "threshold": ThresholdPrunerConf,
}.items():
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="semseg")
