"""``hydra/launcher=gpu_pool``: run a sweep's jobs in parallel, each on its own GPU(s).

The GPUs are split into slots of ``gpus_per_job``; every job runs as its own process (the training
script, as a single run in the job's sweep folder) with ``CUDA_VISIBLE_DEVICES`` set to its slot,
and a new job starts as soon as a slot is free, so 8 single-GPU jobs keep 8 GPUs busy. Hydra's
basic launcher runs jobs one by one, and the joblib and ray launchers do not hand out GPUs, hence
this one. A job's output goes to ``<job>/launcher.log``; ``<job>/launch.json`` records its devices
and times; a failed job leaves ``failed.json`` and the sweep goes on (see ``ReportFailedJobs``).
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module without registering
# it in sys.modules, where dataclasses look string annotations up.
import json
import logging
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class GpuPoolLauncherConf:
    _target_: str = "hydra_plugins.semseg_gpu_pool.gpu_pool_launcher.GpuPoolLauncher"
    gpus: Any = None  # GPU ids to use, e.g. [0, 1, 2, 3]; null: every visible GPU
    gpus_per_job: int = 1  # each job gets this many (set trainer=ddp trainer.devices=<n> to use them)
    metric: str = "val/miou"  # read from each job's metrics.json as its return value (for sweepers)


ConfigStore.instance().store(group="hydra/launcher", name="gpu_pool", node=GpuPoolLauncherConf, provider="semseg")


def _visible_gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count()))


class GpuPoolLauncher(Launcher):
    def __init__(self, gpus: Any = None, gpus_per_job: int = 1, metric: str = "val/miou") -> None:
        self.gpus = [int(g) for g in gpus] if gpus is not None else None
        self.gpus_per_job, self.metric = gpus_per_job, metric
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def _slots(self) -> list[str]:
        gpus = self.gpus if self.gpus is not None else _visible_gpus()
        if self.gpus_per_job < 1 or len(gpus) < self.gpus_per_job:
            raise ValueError(
                f"hydra.launcher: {len(gpus)} GPUs ({gpus}) cannot give {self.gpus_per_job} per job; set "
                "hydra.launcher.gpus=[...] or hydra.launcher.gpus_per_job."
            )
        per = self.gpus_per_job
        return [",".join(str(g) for g in gpus[i : i + per]) for i in range(0, len(gpus) - per + 1, per)]

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        slots: queue.Queue[str] = queue.Queue()
        for slot in self._slots():
            slots.put(slot)
        log.info(f"Launching {len(job_overrides)} jobs on {slots.qsize()} GPU slots")
        jobs = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            job_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            jobs.append((list(overrides), sweep_config, job_dir))
        with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
            return list(pool.map(lambda job: self._run(slots, *job), jobs))

    def _run(self, slots: queue.Queue, overrides: list[str], sweep_config: DictConfig, job_dir: Path) -> JobReturn:
        devices = slots.get()
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            script = os.path.abspath(sys.argv[0])
            command = [sys.executable, script, *filter_overrides(overrides), f"hydra.run.dir={job_dir}"]
            started = time.time()
            with open(job_dir / "launcher.log", "w") as out:
                env = os.environ | {"CUDA_VISIBLE_DEVICES": devices}
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
            record = {"devices": devices, "started": started, "ended": time.time(), "returncode": code}
            (job_dir / "launch.json").write_text(json.dumps(record))
        finally:
            slots.put(devices)
        return JobReturn(
            overrides=overrides,
            cfg=sweep_config,
            hydra_cfg=sweep_config,
            working_dir=str(job_dir),
            task_name=sweep_config.hydra.job.name,
            status=JobStatus.COMPLETED,
            _return_value=self._result(job_dir, overrides, code),
        )

    def _result(self, job_dir: Path, overrides: list[str], code: int) -> float | None:
        """The job's metric; None for a failed job, as ``semseg.cli.run_job`` returns in-process."""
        from semseg.run_folder import RunFolder

        run = RunFolder(job_dir)
        metrics = run.metrics
        if code == 0 and metrics.is_file():
            value = json.loads(metrics.read_text()).get(self.metric)
            return None if value is None else float(value)
        if not run.failed_job.exists():
            tail = (job_dir / "launcher.log").read_text().strip().splitlines()[-1:] or ["no output"]
            report = {"error": f"exit code {code}: {tail[0]}", "overrides": overrides, "traceback": ""}
            run.failed_job.write_text(json.dumps(report))
        return None
