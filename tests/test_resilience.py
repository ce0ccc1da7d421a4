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

from tests.conftest import CHEAP

ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_saves_a_checkpoint_exits_cleanly_and_the_rerun_continues(tiny_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *CHEAP, f"data.root={tiny_root}",
               "data.synthetic=null", "trainer.max_epochs=6", "run_test=false", f"hydra.run.dir={run}"]  # fmt: skip
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
