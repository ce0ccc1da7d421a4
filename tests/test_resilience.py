"""Stopping and starting again: SIGTERM saves the state, and a rerun in the folder carries on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from semseg.training.train import train
from tests.conftest import CHEAP, tiny_data

ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_saves_a_checkpoint_exits_cleanly_and_the_rerun_continues(tiny_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *CHEAP, *tiny_data(tiny_root),
               "trainer.max_epochs=6", "run_test=false", f"hydra.run.dir={run}"]  # fmt: skip
    env = os.environ | {"HYDRA_FULL_ERROR": "0"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # as SLURM does before pre-emption
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert "stopped by SIGTERM" in stdout and "Traceback" not in stderr, stdout[-2000:] + stderr[-2000:]
    assert not (run / "metrics.json").exists()  # it was stopped, not finished
    stopped_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < stopped_at < 6 * 2

    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)  # the requeued job
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {last}" in second.stdout
    assert json.loads((run / "run_info.json").read_text())["epochs"] == 6
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6 * 2
    assert 0 <= json.loads((run / "metrics.json").read_text())["val/miou"] <= 1


def test_a_run_killed_mid_epoch_resumes_from_last_ckpt_to_the_uninterrupted_result(make_cfg, tiny_root: Path):
    # Loader workers (persistent), shuffling, augmentations and a step-wise LR schedule: every
    # random state a fresh process would lose.
    settings = ["trainer.max_epochs=3", "trainer.deterministic=true", "data.num_workers=2", "scheduler=cosine"]
    uninterrupted = train(make_cfg(*settings, "data.synthetic=null"))

    run = Path(make_cfg().output_dir).parent / "killed"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *CHEAP, *settings, *tiny_data(tiny_root),
               f"hydra.run.dir={run}"]  # fmt: skip
    env = os.environ | {"HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT)}
    kill = [
        "+callbacks.sigkill._target_=tests.crash.SigkillAt",
        "+callbacks.sigkill.epoch=1",
        "+callbacks.sigkill.batch=1",
    ]
    crashed = subprocess.run([*command, *kill], capture_output=True, text=True, timeout=300, env=env)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0  # the last finished epoch
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run([*command, "ckpt_path=last"], capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    assert json.loads((run / "metrics.json").read_text()) == uninterrupted


def processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line holds ``text`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def test_a_failing_rank_0_does_not_leave_the_other_ranks_waiting(tiny_root: Path, tmp_path: Path):
    # Rank 1 is a process re-running the script with hydra.run.dir=<run>: it names the folder.
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *CHEAP, "trainer=ddp_cpu", "data.batch_size=2",
               *tiny_data(tiny_root), f"hydra.run.dir={run}",
               "+callbacks.fail._target_=tests.crash.RaiseOnRank", "+callbacks.fail.rank=0"]  # fmt: skip
    env = os.environ | {"HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT)}
    try:
        # A rank left waiting would hold the output pipes open: run() would time out.
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    finally:
        left = processes_mentioning(str(run))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert result.returncode != 0 and "rank 0 failed on purpose" in result.stderr, result.stderr[-3000:]
    assert not left
