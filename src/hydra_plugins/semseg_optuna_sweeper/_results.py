"""What a search leaves in its sweep folder: ``optimization_results.yaml`` (the best trial, counts
of trials by outcome), the trials table ``optuna_trials.csv`` and plots of the search. Each covers the
whole study, every launch's trials; each file is written whole (launches may end together)."""

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.semseg_optuna_sweeper._trials import FAILURE, HEARTBEAT
from semseg.files import atomic_path

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "optuna_trials.csv"


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(FAILURE in t.user_attrs for t in failed),
        "interrupted": sum(FAILURE not in t.user_attrs for t in failed),  # their launch was stopped
        "running": sum(t.state == TrialState.RUNNING for t in trials),
    }


def _best(study: optuna.Study) -> dict[str, Any]:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return {"best_params": None, "best_value": None}
    if len(study.directions) > 1:
        return {"solutions": [{"trial": t.number, "params": t.params, "values": t.values} for t in study.best_trials]}
    best = study.best_trial
    return {"best_trial": best.number, "best_params": best.params, "best_value": best.value}


def write_results(study: optuna.Study, folder: Path, storage: str) -> dict[str, Any]:
    results = {"name": "optuna", "study_name": study.study_name, "storage": storage, **_best(study)}
    results["trials"] = _counts(study)
    with atomic_path(folder / RESULTS_FILE) as tmp:
        OmegaConf.save(OmegaConf.create(results), tmp)
    log.info(f"{folder / RESULTS_FILE}: trials {results['trials']}")
    return results


def write_trials_table(study: optuna.Study, folder: Path) -> None:
    try:
        table = study.trials_dataframe()
    except ImportError as missing:  # pandas
        log.info(f"no {TRIALS_FILE}: {missing}")
        return
    table = table.drop(columns=[f"user_attrs_{HEARTBEAT}"], errors="ignore")
    with atomic_path(folder / TRIALS_FILE) as tmp:
        table.to_csv(tmp, index=False)


def _why_no_importances(study: optuna.Study) -> str | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"{len(complete)} complete trial(s); it takes 2"
    varied = {name for name in complete[0].params if len({repr(t.params.get(name)) for t in complete}) > 1}
    if not varied:
        return "no parameter took two values in the complete trials"
    return None


def _save(axes: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(figure)


def write_plots(study: optuna.Study, folder: Path) -> None:
    """``optimization_history.png``, ``intermediate_values.png`` (the per-epoch values the jobs
    reported) and ``param_importances.png`` (when there is something to compare)."""
    if len(study.directions) > 1:
        log.info("no plots: they show one objective, and the study has several")
        return
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        log.info("no plots: no trial finished")
        return
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    from optuna.visualization import matplotlib as plots

    # Plots are extras: the results are written already, and a failed plot must not fail the search.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            _save(plots.plot_optimization_history(study), folder / "optimization_history.png")
            if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
                _save(plots.plot_intermediate_values(study), folder / "intermediate_values.png")
            reason = _why_no_importances(study)
            if reason is None:
                _save(plots.plot_param_importances(study), folder / "param_importances.png")
            else:
                log.info(f"no param_importances.png: {reason}")
        except Exception as error:
            log.warning(f"plots of the search left out: {type(error).__name__}: {error}")
