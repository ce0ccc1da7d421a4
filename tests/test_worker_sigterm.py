"""SLURM signals every process of a job step: a SIGTERM to the whole process group stops training
cleanly, with DataLoader workers that outlive the signal and still end with their main process, and
the workers leave SIGUSR1/SIGUSR2 (the time-limit warnings) to the main process's handlers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from tests.conftest import CHEAP, tiny_data

ROOT = Path(__file__).resolve().parents[1]


def process_group(pgid: int) -> list[int]:
    """Pids of the live processes of process group ``pgid`` (Linux /proc; zombies left out)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                # /proc/<pid>/stat: "pid (comm) state ppid pgrp ...", comm may hold spaces.
                state, _ppid, pgrp = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
                if int(pgrp) == pgid and state != "Z":
                    pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def wait_until_gone(pgid: int, seconds: float) -> list[int]:
    """The processes of ``pgid`` still alive after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := process_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_sigterm_to_the_whole_process_group_stops_training_cleanly(tiny_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    cheap = [o for o in CHEAP if o != "data.num_workers=0"]
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *cheap, "data.num_workers=2", "data.batch_size=2",
               *tiny_data(tiny_root), "trainer.max_epochs=50", "run_test=false",
               f"hydra.run.dir={run}"]  # fmt: skip
    env = os.environ | {"HYDRA_FULL_ERROR": "0"}
    # Its own session: the process group holds the run and its workers only, as a SLURM job step.
    first = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        last = run / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 240
        while not last.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [pid for pid in process_group(first.pid) if pid != first.pid]
        assert first.poll() is None and len(workers) >= 2, "training ended, or has no loader workers, before SIGTERM"
        os.killpg(first.pid, signal.SIGTERM)  # as SLURM does: every process of the step, workers included
        output, _ = first.communicate(timeout=120)
        left = wait_until_gone(first.pid, 15)  # PyTorch's worker watchdog looks for its parent every 5 s
    finally:
        for pid in process_group(first.pid):
            os.kill(pid, signal.SIGKILL)
    assert first.returncode == 0, output[-4000:]
    assert "stopped by SIGTERM" in output, output[-4000:]
    assert "DataLoader worker" not in output and "Traceback" not in output, output[-4000:]
    assert 0 < torch.load(last, map_location="cpu", weights_only=True)["global_step"] < 50 * 4
    assert not (run / "metrics.json").exists()
    assert not left, f"processes left alive: {left}"


def test_a_process_that_ends_with_live_workers_does_not_wait_for_them(tmp_path: Path):
    # The workers' iterator still referenced at exit: multiprocessing's exit handler terminates the
    # (daemon) workers with SIGTERM and joins them, so they must still obey their parent's SIGTERM.
    script = tmp_path / "live_workers.py"
    script.write_text(
        textwrap.dedent(
            """
            from torch.utils.data import DataLoader
            from semseg.data.loader_workers import init_worker

            loader = DataLoader(list(range(64)), num_workers=2, worker_init_fn=init_worker, persistent_workers=True)
            ITERATOR = iter(loader)
            next(ITERATOR)
            """
        )
    )
    process = subprocess.Popen([sys.executable, str(script)], start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        for pid in process_group(process.pid):
            os.kill(pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-3000:]
    assert not wait_until_gone(process.pid, 10)


def test_workers_leave_the_job_signals_to_the_main_process(tmp_path: Path):
    # The main process's handlers (submitit's requeue on SIGUSR2, say) are inherited by forked
    # workers: a worker that ran one, or died of a signal, would end the loop with an error. (SIGTERM
    # from the main process itself does end a worker: the test above sends it from elsewhere.)
    script = tmp_path / "signalled_workers.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys, time
            from torch.utils.data import DataLoader, Dataset
            from semseg.data.loader_workers import init_worker

            class Slow(Dataset):
                def __len__(self):
                    return 12

                def __getitem__(self, index):
                    time.sleep(0.05)
                    return index

            for signum in (signal.SIGUSR1, signal.SIGUSR2):
                signal.signal(signum, lambda *_: sys.exit("a worker ran its main process's handler"))
            iterator = iter(DataLoader(Slow(), num_workers=2, worker_init_fn=init_worker))
            batches = [next(iterator), next(iterator)]  # one from each worker: both have started
            for worker in iterator._workers:
                for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT):
                    os.kill(worker.pid, signum)
            batches += list(iterator)
            assert len(batches) == 12, len(batches)
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
