"""Lightning DDP inside a Hydra multirun: each job's ranks train that job, and nothing else.

Lightning starts DDP ranks 1..N-1 by re-running the script with the parent's ``sys.argv`` plus
``hydra.run.dir=<HydraConfig run.dir>`` (``_hydra_subprocess_cmd``). In a multirun the argv holds
``-m`` and the sweep, so every child would launch the whole sweep again, into a new folder.
``ranks_run_this_job`` hands the children this job's own overrides and folder instead, and after
the job leaves nothing behind for the next job of the same process: the process group is
destroyed and the environment variables Lightning set (MASTER_PORT, ...) are restored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def ranks_run_this_job() -> Iterator[None]:
    """Within it, DDP child processes re-run the current multirun job as a single run in its folder."""
    if not in_multirun():
        yield
        return
    hydra = HydraConfig.instance().cfg.hydra
    saved_argv, saved_run_dir, saved_env = sys.argv[:], hydra.run.dir, dict(os.environ)
    sys.argv = [sys.argv[0], *hydra.overrides.task]  # this job's overrides, no -m, no sweep
    with read_write(hydra.run):
        hydra.run.dir = hydra.runtime.output_dir  # Lightning passes it on as hydra.run.dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(hydra.run):
            hydra.run.dir = saved_run_dir
        import torch.distributed as dist  # here: the entry points import this module before parsing --help

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # the next job starts its own, with its own ranks
        os.environ.clear()
        os.environ.update(saved_env)
