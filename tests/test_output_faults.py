"""The run's output folder at fault: one it cannot make or write, one another run is using, a disk
that fills up mid-run. Each is one line naming the folder, the reason and the fix; nothing saved
before is lost."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from semseg.cli import exit_on_user_error, run_job
from semseg.errors import ConfigError, OutputError, output_fault
from semseg.inference.checkpoint import read_checkpoint
from semseg.run_folder import RunFolder
from semseg.training.run_lock import run_lock
from semseg.training.train import train
from tests.conftest import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT)}
# Checkpoints of 5 MB, not 27: a narrow decoder on the tiny encoder (filled disks fill faster).
SMALL_MODEL = "+model.kwargs.decoder_channels=[16,8,8,8,8]"


def script(name: str, *overrides: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *overrides],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=cwd,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's single ``error:`` line; it exited 2 without a traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` for the block (``mount -o <options>``); skips the test where
    mounting is not permitted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small or read-only file system needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


# --- a folder that cannot be made or written: refused before any work ---


@pytest.mark.parametrize("name", ["train", "eval", "predict", "export", "inspect_data", "benchmark"])
def test_an_output_folder_under_a_file_stops_every_script_in_one_line(name: str, tmp_path: Path):
    (tmp_path / "afile").write_text("not a folder")
    line = one_error_line(script(name, f"hydra.run.dir={tmp_path / 'afile' / 'run'}"))
    assert f"{tmp_path / 'afile' / 'run'} (hydra.run.dir)" in line and f"{tmp_path / 'afile'} is a file" in line
    assert "Fix: point hydra.run.dir at a folder you can write" in line


def test_a_sweep_folder_under_a_file_stops_the_multirun_in_one_line(tmp_path: Path):
    (tmp_path / "afile").write_text("not a folder")
    line = one_error_line(script("train", "-m", f"hydra.sweep.dir={tmp_path / 'afile' / 'sweep'}", "loss=ce,dice"))
    assert f"{tmp_path / 'afile' / 'sweep'} (hydra.sweep.dir)" in line and "hydra.sweep.dir=" in line


def test_a_read_only_output_folder_stops_the_run_in_one_line(tmp_path: Path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        line = one_error_line(script("train", f"hydra.run.dir={folder / 'run'}"))
    assert f"{folder / 'run'} (hydra.run.dir): read-only file system" in line


def test_the_folder_checked_is_the_folder_hydra_makes(tmp_path: Path):
    # ${now:...} resolved by the check and again by Hydra would name two folders (microseconds differ).
    job = (
        "import hydra\n"
        f"@hydra.main(version_base='1.3', config_path={str(ROOT / 'conf')!r}, config_name='train')\n"
        "def main(cfg):\n"
        "    pass\n"
        "main()\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", job, "hydra.run.dir=out/${now:%H-%M-%S-%f}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    assert len(list((tmp_path / "out").iterdir())) == 1


# --- two runs in one folder: the second stops at once ---


def write_lock(run: RunFolder, **holder) -> None:
    run.root.mkdir(parents=True, exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": 0, "started": "2025-01-01T00:00:00+00:00", "slurm_job_id": None}
    run.lock.write_text(json.dumps(owner | holder))


def test_a_folder_held_by_a_live_process_stops_the_second_run_before_it_writes(make_cfg, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = make_cfg()
    run = RunFolder(cfg.output_dir)
    other = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(run, pid=other.pid)
        with pytest.raises(ConfigError) as refused:
            train(cfg)
    finally:
        other.kill()
        other.wait()
    message = str(refused.value)
    assert "\n" not in message
    assert f"{run.root} is in use by another run: process {other.pid} on host {socket.gethostname()}" in message
    assert f"kill {other.pid}" in message and "another hydra.run.dir" in message
    assert sorted(p.name for p in run.root.iterdir()) == [".lock"]  # nothing written, its lock untouched
    assert json.loads(run.lock.read_text())["pid"] == other.pid


def test_under_ddp_only_rank_0_takes_the_lock(make_cfg, monkeypatch):
    # Every rank calls train() with the one folder: rank 1 must not stop at rank 0's lock.
    monkeypatch.setattr("semseg.training.train.rank_zero_only.rank", 1)
    cfg = make_cfg()
    write_lock(RunFolder(cfg.output_dir), pid=os.getppid())  # alive: the lock of this job's rank 0

    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr("semseg.training.train.build_run", reached)
    with pytest.raises(Reached):
        train(cfg)


def test_a_lock_from_another_host_names_the_file_to_delete(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run = RunFolder(tmp_path / "run")
    write_lock(run, host="elsewhere", pid=4242, slurm_job_id="7")
    with pytest.raises(ConfigError) as refused, run_lock(run):
        pass
    assert "process 4242 on host elsewhere (started 2025-01-01T00:00:00+00:00, SLURM job 7)" in str(refused.value)
    assert str(refused.value).endswith(f"if that process is gone (it ran on another host), delete {run.lock}.")


def test_a_lock_whose_process_ended_is_taken_over_and_released(tmp_path: Path, caplog, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    ended = subprocess.Popen(["true"])
    ended.wait()
    run = RunFolder(tmp_path / "run")
    write_lock(run, pid=ended.pid)
    with caplog.at_level(logging.WARNING, logger="semseg.training.run_lock"), run_lock(run):
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()
    assert f"taking over the lock {run.lock}: its process {ended.pid} on this host has ended" in caplog.messages
    assert not run.lock.exists()


def test_a_lock_of_the_same_slurm_job_is_a_requeue_and_taken_over(tmp_path: Path, caplog, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    run = RunFolder(tmp_path / "run")
    write_lock(run, host="node-17", pid=4242, slurm_job_id="991")  # the job's earlier node: no pid to check
    with caplog.at_level(logging.WARNING, logger="semseg.training.run_lock"), run_lock(run):
        assert json.loads(run.lock.read_text())["slurm_job_id"] == "991"
    assert any("this SLURM job's (991)" in m for m in caplog.messages), caplog.messages
    assert not run.lock.exists()


# --- a disk that fills up, a folder that turns read-only, mid-run ---


class FillDisk(L.Callback):
    """Fills the file system of ``path`` (a file written until no space is left) when training epoch
    ``epoch`` starts: the earlier epochs' checkpoints are saved, the next save fails."""

    def __init__(self, path: str, epoch: int = 1):
        self.path, self.epoch = Path(path), epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            return
        try:
            with open(self.path, "wb") as file:
                while True:
                    file.write(b"\0" * 2**20)
                    file.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error


class RemountReadOnly(L.Callback):
    """Remounts the file system at ``mount`` read-only when training epoch ``epoch`` starts."""

    def __init__(self, mount: str, epoch: int = 1):
        self.mount, self.epoch = mount, epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            subprocess.run(["mount", "-o", "remount,ro", self.mount], check=True)


def assert_epoch_1_checkpoints_load(run: RunFolder) -> None:
    for checkpoint in (run.last_checkpoint, run.best_checkpoint):
        assert read_checkpoint(checkpoint)["epoch"] == 0  # the first epoch's, whole
    assert not [p.name for p in run.checkpoints.iterdir() if p.name.startswith(".")]  # no staging file left


def test_a_full_disk_mid_run_stops_in_one_line_and_the_saved_checkpoints_load(make_cfg, capsys, monkeypatch):
    monkeypatch.setattr("semseg.cli.quiet_upstream_noise", lambda **_: None)  # process-wide, for entry points
    # Room for the first epoch's two checkpoints and then some: the filler takes the rest.
    with tmpfs(Path(make_cfg().output_dir).parent / "disk", "size=32m") as disk:
        run = RunFolder(disk / "run")
        fill = [f"+callbacks.fill._target_={__name__}.FillDisk", f"+callbacks.fill.path={disk / 'filler'}"]
        cfg = make_cfg("trainer.max_epochs=2", SMALL_MODEL, "run_test=false", *fill)
        with open_dict(cfg):
            cfg.output_dir = str(run.root)
        with pytest.raises(SystemExit) as stopped:
            exit_on_user_error(train)(cfg)  # as the scripts run it
        assert stopped.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: cannot write into the run folder {run.root}")
        assert "No space left on device; 0.0 MiB free there; a checkpoint needs about 5." in line
        assert f"Fix: free space there and rerun with hydra.run.dir={run.root} (it resumes" in line
        assert line.endswith(f"or point hydra.run.dir at another disk with ckpt_path={run.last_checkpoint}.")
        assert_epoch_1_checkpoints_load(run)
        assert not run.lock.exists() and not run.metrics.exists()


def test_a_folder_turned_read_only_mid_run_stops_with_the_saved_checkpoints_loading(make_cfg, tmp_path: Path):
    with tmpfs(tmp_path / "disk", "size=32m") as disk:
        cfg = make_cfg(
            "trainer.max_epochs=2",
            SMALL_MODEL,
            "run_test=false",
            f"+callbacks.remount._target_={__name__}.RemountReadOnly",
            f"+callbacks.remount.mount={disk}",
        )
        with open_dict(cfg):
            cfg.output_dir = str(disk / "run")
        with pytest.raises(OutputError) as stopped:
            train(cfg)
        run = RunFolder(disk / "run")
        assert f"cannot write into the run folder {run.root}" in str(stopped.value)
        assert "Read-only file system. Fix: make it writable and rerun" in str(stopped.value)
        assert ".lock" not in str(stopped.value)  # the lock it could not remove is not the error
        assert_epoch_1_checkpoints_load(run)
        assert run.lock.exists()  # a read-only folder keeps it; the next run takes it over (its process ended)


def test_write_errors_are_found_behind_wrappers_and_only_for_the_output_folder(tmp_path: Path):
    run = tmp_path / "run"
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as error:
            raise RuntimeError("the logger's teardown failed") from error
    except RuntimeError as wrapped:
        assert output_fault(wrapped, run) is full
    elsewhere = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "a.png"))
    assert output_fault(elsewhere, run) is None  # an unreadable data file is not the output's fault
    inside = OSError(errno.EROFS, "Read-only file system", "/tmp/staging", None, str(run / "checkpoints" / "last.ckpt"))
    assert output_fault(inside, run) is inside
    assert output_fault(ValueError("no"), run) is None


# --- a multirun job that succeeds after a failed attempt ---


def test_a_job_that_succeeds_removes_the_failed_json_of_an_earlier_attempt(tmp_path: Path, caplog, monkeypatch):
    # A requeued SLURM job: its first attempt failed (failed.json), the next resumed and succeeded.
    monkeypatch.setattr("semseg.cli.quiet_upstream_noise", lambda **_: None)  # process-wide, for entry points
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "0")
        cfg.hydra.job.num = 0
    failed = RunFolder(tmp_path / "0").failed_job
    attempts = iter([RuntimeError("node lost"), 0.5])

    def job(_cfg) -> float:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    HydraConfig.instance().set_config(cfg)
    try:
        with caplog.at_level(logging.INFO, logger="semseg.cli"):
            assert run_job(job)(cfg) is None
            assert "node lost" in json.loads(failed.read_text())["error"]
            assert run_job(job)(cfg) == 0.5
    finally:
        HydraConfig.instance().cfg = None
    assert not failed.exists()
    assert f"job 0 succeeded: removed {failed}, left by an earlier attempt that failed" in caplog.messages
