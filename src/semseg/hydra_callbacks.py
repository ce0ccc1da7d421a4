"""Hydra callbacks: credentials refused before anything is saved; the end-of-sweep report of the
jobs that failed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

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
