"""Hydra callbacks: credentials refused before anything is saved; an output folder that cannot be
made or written refused before any work; the end-of-sweep report of the jobs that failed."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from semseg.errors import FULL_DISK, ConfigError, config_errors_in_one_line
from semseg.run_folder import FAILED_JOB_FILE
from semseg.secrets import find_secrets, secrets_message


class RefuseSecrets(Callback):
    """Stops a run or sweep whose config holds a credential, before Hydra saves the config.

    Hydra writes .hydra/config.yaml before the job starts, so a check inside the job would come too
    late; these hooks run before any job.
    """

    def _check(self, config: DictConfig) -> None:
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        paths = find_secrets(task)
        if paths:
            print(f"error: {secrets_message(paths)}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)


class CheckOutputFolder(Callback):
    """Stops a run (a sweep) whose folder, ``hydra.run.dir`` (``hydra.sweep.dir``), cannot be made or
    written: one line naming it, the reason and the fix, exit 2, before Hydra makes it and before any
    work; otherwise Hydra's own ``mkdir`` fails with a traceback, or the run fails at its first save.

    Reading the folder's name here resolves its ``${now:...}`` once: OmegaConf caches the value in
    the config, so Hydra makes the same folder.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unwritable(Path(config.hydra.run.dir), "hydra.run.dir", "outputs/my_run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unwritable(Path(config.hydra.sweep.dir), "hydra.sweep.dir", "multirun/my_sweep")


def _refuse_unwritable(folder: Path, key: str, example: str) -> None:
    problem = _unwritable(folder)
    if problem is None:
        return
    reason, full = problem
    fix = "free space there, or point" if full else "point"
    print(
        f"error: cannot write the output folder {folder} ({key}): {reason}. Fix: {fix} {key} at a folder you can "
        f"write (e.g. {key}={example}).",
        file=sys.stderr,
    )
    sys.exit(2)


def _unwritable(folder: Path) -> tuple[str, bool] | None:
    """Why ``folder`` cannot be made or written, and whether for want of space; None when it can.

    Makes ``folder`` (Hydra would next) and writes a probe file into it, removed at once: permission
    bits, read-only mounts, ACLs and quotas all show only when one tries.
    """
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder", False
    probe = folder / f".semseg-write-probe.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):  # a full disk may have let the probe be made, empty
            probe.unlink(missing_ok=True)
        return f"{(error.strerror or str(error)).lower()} ({error.filename or folder})", error.errno in FULL_DISK
    return None


class ReportFailedJobs(Callback):
    """After a multirun, lists the failed jobs (folder, overrides, error) and exits 1 if any failed.

    Jobs catch their own errors in a multirun (see ``semseg.cli.run_job``), so one failure does not
    stop the others; this is where the failures come back.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = [p.parent for p in sweep.rglob(".hydra") if p.is_dir()]
        failed = sorted(sweep.rglob(FAILED_JOB_FILE))
        if not failed:
            return
        lines = [f"{len(failed)} of {len(jobs)} jobs failed:"]
        for path in failed:
            report = json.loads(path.read_text())
            lines.append(f"  {path.parent} ({' '.join(report['overrides'])}): {report['error']}")
        print("\n".join(lines), file=sys.stderr)
        sys.exit(1)


class EndSweepParentRun(Callback):
    """Ends the sweep's MLflow parent run (``semseg.training.mlflow_sweep``) when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from semseg.training.mlflow_sweep import end_sweep_parent_run

        end_sweep_parent_run(Path(config.hydra.sweep.dir))


def seed_values(seed: int, seeds: object) -> str:
    """The seeds of a sweep that repeats every job over ``seeds`` seeds from ``seed`` on, in Hydra's
    override grammar: ``range(0,3)``."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds={seeds}: give a number of seeds (1 or more) to repeat every job of the sweep with.")
    return f"range({seed},{seed + seeds})"


class RepeatOverSeeds(Callback):
    """``-m ... seeds=3``: every job of the sweep over 3 seeds, from ``seed`` on.

    Puts ``seed: range(<seed>,<seed + seeds>)`` first among the parameters Hydra's basic sweeper
    expands (``hydra.sweeper.params``), before the sweeper reads them: the seed is the sweep's
    outermost axis, so the first seed of every configuration runs before the second of any. A
    ``seed=`` on the command line or in ``hydra.sweeper.params`` wins; other sweepers
    (``hparams_search=optuna``) are left alone, and refuse ``seeds`` themselves.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        seeds, sweeper = config.get("seeds"), config.hydra.sweeper
        if seeds in (None, 1) or not str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
            return
        with config_errors_in_one_line():
            values = seed_values(config.seed, seeds)
        params = dict(sweeper.get("params") or {})
        if "seed" in params or any(o.split("=", 1)[0].lstrip("+~") == "seed" for o in config.hydra.overrides.task):
            return
        with read_write(config), open_dict(config):
            sweeper.params = {"seed": values, **params}
