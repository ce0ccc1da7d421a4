"""hydra/sweeper=optuna (src/hydra_plugins/semseg_optuna_sweeper): failed and pruned trials, studies
that resume and that several launches share, its outputs, and its one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.semseg_optuna_sweeper._search import Search
from hydra_plugins.semseg_optuna_sweeper._search_space import grid_search_space, parse_search_space
from hydra_plugins.semseg_optuna_sweeper._trials import HEARTBEAT, counted, fail_stale
from hydra_plugins.semseg_optuna_sweeper.optuna_sweeper import OptunaSweeper
from semseg.callbacks.optuna_pruning import PRUNED_AT_EPOCH, OptunaPruning, TrialLink, open_storage
from tests.sweeps import run_sweep, sweep_command, sweep_env

CHEAP_TRIALS = ("trainer.limit_train_batches=1", "run_test=false")


def study_trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="semseg", storage=open_storage(storage)).get_trials()


def job_folders(sweep: Path) -> list[str]:
    """The trials' job folders, each checked to be one job's: its link names the trial of its name."""
    folders = sorted((p.parent for p in sweep.rglob(".hydra")), key=lambda p: int(p.name))
    for folder in folders:
        assert TrialLink.read(folder).trial_number == int(folder.name)
        assert folder.parent == sweep
    return [folder.name for folder in folders]


def test_optuna_search_survives_a_failed_trial(tiny_root: Path, tmp_path: Path):
    # The shipped search, plus a parameter that makes some trials fail: 2 classes do not fit the
    # 5-class masks, so those trials stop at the data check.
    extra = tmp_path / "conf" / "hparams_search"
    extra.mkdir(parents=True)
    (extra / "optuna_with_failures.yaml").write_text(
        "# @package _global_\ndefaults:\n  - optuna\n"
        "hydra:\n  sweeper:\n    n_trials: 4\n    params:\n      data.num_classes: choice(2, 5)\n"
    )
    sweep = tmp_path / "sweep"
    result = run_sweep(
        sweep,
        tiny_root,
        [],
        *CHEAP_TRIALS,
        "data.class_names=null",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "hparams_search=optuna_with_failures",
        "hydra.sweeper.sampler.seed=6",
    )
    jobs = sorted(p.parent for p in sweep.rglob(".hydra"))
    failed = [job for job in jobs if (job / "failed.json").exists()]
    assert len(jobs) == 4, result.stderr[-3000:]  # every trial ran
    assert failed and len(failed) < 4
    assert all("data.num_classes=2" in json.loads((job / "failed.json").read_text())["overrides"] for job in failed)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = [json.loads((job / "metrics.json").read_text())["val/miou"] for job in jobs if job not in failed]
    assert best["best_value"] == pytest.approx(max(scores))
    assert best["best_params"]["data.num_classes"] == 5
    assert best["trials"] | {"complete": 4 - len(failed), "failed": len(failed), "pruned": 0} == best["trials"]
    assert result.returncode == 1 and f"{len(failed)} of 4 jobs failed" in result.stderr
    # storage null: the study is the sweep folder's journal, its failed trials told FAIL with the reason.
    trials = study_trials(str(sweep / "optuna.journal"))
    assert sorted(str(t.number) for t in trials if t.state.name == "FAIL") == sorted(job.name for job in failed)
    assert all("failure" in t.user_attrs for t in trials if t.state.name == "FAIL")
    assert (sweep / "optimization_history.png").stat().st_size > 0
    assert (sweep / "param_importances.png").exists() == (len(scores) >= 2)
    assert len((sweep / "optuna_trials.csv").read_text().splitlines()) == 1 + 4


def test_a_stopped_search_resumes_to_n_trials_in_all_and_prunes(tiny_root: Path, tmp_path: Path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep = tmp_path / "sweep"
    search = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}", *CHEAP_TRIALS]
    first = run_sweep(sweep, tiny_root, [], *search, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [t.state.name for t in study_trials(storage)] == ["COMPLETE", "COMPLETE"]

    # n_trials is the study's total: the second launch runs one trial, which its pruner stops after
    # the first of its two epochs (no val/miou reaches 1.0).
    second = run_sweep(
        sweep,
        tiny_root,
        [],
        *search,
        "hydra.sweeper.n_trials=3",
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=1.0",
        "trainer.max_epochs=2",
    )
    assert second.returncode == 0, second.stderr[-3000:]
    trials = study_trials(storage)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED")]
    assert trials[2].user_attrs[PRUNED_AT_EPOCH] == 1 and list(trials[2].intermediate_values) == [0]
    assert json.loads((sweep / "2" / "run_info.json").read_text())["epochs"] == 1  # stopped early
    assert "optuna trial 2 pruned at epoch 1" in (sweep / "2" / "train.log").read_text()
    assert job_folders(sweep) == ["0", "1", "2"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"]["complete"] == 2 and results["trials"]["pruned"] == 1
    assert results["best_value"] == max(t.value for t in trials[:2])


def test_two_launches_at_once_share_one_study(tiny_root: Path, tmp_path: Path):
    storage = str(tmp_path / "study.journal")
    sweep = tmp_path / "sweep"
    command = sweep_command(
        sweep, tiny_root, [], "hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=4",
        *CHEAP_TRIALS,
    )  # fmt: skip
    launches = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=sweep_env())
        for _ in range(2)
    ]
    outputs = [launch.communicate(timeout=900)[0] for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    trials = study_trials(storage)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state.name for t in trials} == {"COMPLETE"}
    launched = [int(n) for out in outputs for found in re.findall(r"launching trials \[([\d, ]+)\]", out)
                for n in found.split(",")]  # fmt: skip
    assert sorted(launched) == [0, 1, 2, 3]  # each trial run once, by one launch
    assert job_folders(sweep) == ["0", "1", "2", "3"]
    for folder in ("0", "1", "2", "3"):
        assert (sweep / folder / "train.log").read_text().count("config digest") == 1
    # The later launch waited for the other's trials: both results cover the whole study.
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"]["complete"] == 4


class _Strategy:
    def broadcast(self, obj, src=0):
        return obj


class _Trainer:
    """What OptunaPruning reads of a Lightning Trainer."""

    sanity_checking, is_global_zero, should_stop = False, True, False
    strategy = _Strategy()

    def __init__(self):
        self.current_epoch, self.callback_metrics = 0, {}

    def validated(self, epoch: int, miou: float) -> None:
        self.current_epoch, self.callback_metrics = epoch, {"val/miou": torch.tensor(miou)}


def test_pruning_reports_each_epoch_and_stops_the_trial_its_pruner_prunes(tmp_path: Path):
    storage = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="semseg", storage=open_storage(storage), direction="maximize")
    trial = study.ask()
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5}
    TrialLink(storage, "semseg", trial.number, trial._trial_id, pruner).write(tmp_path)
    callback = OptunaPruning.for_run(tmp_path)
    trainer = _Trainer()
    callback.on_fit_start(trainer, None)
    trainer.validated(0, 0.7)
    callback.on_validation_end(trainer, None)
    assert not trainer.should_stop
    trainer.validated(1, 0.3)
    callback.on_validation_end(trainer, None)
    assert trainer.should_stop
    frozen = study.get_trials()[0]
    assert frozen.intermediate_values == {0: pytest.approx(0.7), 1: pytest.approx(0.3)}
    assert frozen.user_attrs[PRUNED_AT_EPOCH] == 2
    assert OptunaPruning.for_run(tmp_path / "elsewhere") is None  # a run that is no trial's job


def test_search_space_reads_hydra_sweeps_and_the_command_line_wins():
    distributions, fixed = parse_search_space(
        {"lr": "tag(log, interval(0.0001, 0.1))", "wd": "interval(0, 1)", "batch": "tag(int, log, interval(2, 16))",
         "loss": "choice(ce, dice)", "depth": "range(2, 8, 2)", "model": "unet"},
        ["loss=ce", "hparams_search=optuna"],
    )  # fmt: skip
    assert distributions == {
        "lr": optuna.distributions.FloatDistribution(0.0001, 0.1, log=True),
        "wd": optuna.distributions.FloatDistribution(0.0, 1.0),
        "batch": optuna.distributions.IntDistribution(2, 16, log=True),
        "depth": optuna.distributions.IntDistribution(2, 6, step=2),  # Hydra's range leaves 8 out
    }
    assert fixed == ["model=unet", "loss=ce", "hparams_search=optuna"]
    grid = grid_search_space(
        {"depth": distributions["depth"], "loss": optuna.distributions.CategoricalDistribution(["a"])}
    )
    assert grid == {"depth": [2, 4, 6], "loss": ["a"]}


def _sweeper(**changes) -> OptunaSweeper:
    settings = dict(
        sampler=None, pruner=None, direction="maximize", study_name="semseg", storage=None, n_trials=2, n_jobs=1,
        max_failure_rate=0.0, heartbeat_interval=60, grace_period=300, params=None, custom_search_space=None,
    )  # fmt: skip
    return OptunaSweeper(**(settings | changes))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"direction": "up"}, "hydra.sweeper.direction=up"),
        ({"storage": "optuna.db"}, "hydra.sweeper.storage=optuna.db"),
        ({"heartbeat_interval": 600}, "hydra.sweeper.heartbeat_interval=600, grace_period=300"),
    ],
)
def test_a_bad_key_is_one_line_naming_it(changes: dict, key: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as stopped:
        _sweeper(**changes).setup(hydra_context=None, task_function=None, config=None)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith(f"error: {key}:") and error.count("\n") == 1


def test_seeds_with_a_search_is_refused_in_one_line(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as stopped:
        _sweeper().setup(hydra_context=None, task_function=None, config=OmegaConf.create({"seeds": 3}))
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith("error: seeds=3 repeats the jobs of a grid sweep")


def test_without_optuna_the_sweeper_says_what_to_install(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` fails, find_spec finds nothing
    with pytest.raises(SystemExit) as stopped:
        _sweeper().setup(hydra_context=None, task_function=None, config=None)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.count("\n") == 1
    assert error.startswith("error: hparams_search=optuna needs optuna") and 'pip install "semseg[optuna]"' in error


class _Launcher:
    """Runs each trial's "job" at once: its value is x, and x=2 fails as semseg.cli.run_job's failed jobs do."""

    def __init__(self):
        self.jobs: list[list[str]] = []

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        self.jobs += [list(overrides) for overrides in job_overrides]
        values = [float(next(o for o in overrides if o.startswith("x="))[2:]) for overrides in job_overrides]
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=None if v == 2 else v) for v in values]


def test_the_grid_sampler_runs_each_point_once_and_failures_are_told_fail(tmp_path: Path):
    sweeper = _sweeper(
        sampler=OmegaConf.create({"_target_": "optuna.samplers.GridSampler", "seed": 0}),
        params=OmegaConf.create({"x": "choice(1, 2, 3)"}),
        n_trials=10,  # the grid has 3 points
        n_jobs=2,
        max_failure_rate=1.0,
    )
    sweeper._check()
    launcher = _Launcher()
    Search(sweeper, launcher, tmp_path, OmegaConf.create(), ["model=unet"]).run()
    assert sorted(job[1] for job in launcher.jobs) == ["x=1", "x=2", "x=3"]
    assert all(job[0] == "model=unet" and job[-1].startswith("hydra.sweep.subdir=") for job in launcher.jobs)
    trials = study_trials(str(tmp_path / "optuna.journal"))
    assert sorted((t.params["x"], t.state.name) for t in trials) == [(1, "COMPLETE"), (2, "FAIL"), (3, "COMPLETE")]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"x": 3} and results["trials"]["failed"] == 1


def test_a_stopped_launchs_trials_are_failed_after_the_grace_period_and_not_counted(tmp_path: Path):
    study = optuna.create_study(study_name="semseg", storage=open_storage(str(tmp_path / "study.journal")))
    alive, dead, done = study.ask(), study.ask(), study.ask()
    alive.set_user_attr(HEARTBEAT, time.time())
    dead.set_user_attr(HEARTBEAT, time.time() - 301)
    study.tell(done, 1.0)
    assert fail_stale(study, grace_period=300) == [dead.number]
    assert [t.number for t in counted(study)] == [alive.number, done.number]
