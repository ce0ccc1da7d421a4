"""hydra/launcher=slurm_cpu against a real one-node SLURM cluster started here (Debian's slurm-wlm
and munge, as root), and which of Lightning and submitit owns requeueing (``slurm_plugins``).

The cluster (munged, slurmctld, slurmd with their own config, ports, state and logs in a temporary
folder) is started once for the module and stopped after; without the binaries, without root (the
daemons run as root here, as slurmd must) or when the node is not idle within a minute, the cluster
tests are skipped with the reason. ``.ci/run`` installs the packages where it can.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment

from semseg.trainer_defaults import slurm_plugins
from tests.conftest import CHEAP, tiny_data

ROOT = Path(__file__).resolve().parents[1]
# Where Debian puts the daemons; a non-root PATH often lacks the sbin folders.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
STARTUP_S = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(folder: Path, node: str) -> str:
    """A minimal one-node cluster: every job runs on this host, as root, with no accounting (submitit
    then says "Bypassing sacct error" and follows its jobs by their result files). A requeued job
    waits ``cred_expire`` seconds (120 by default) before it may start again, and the scheduler
    looks at pending jobs every ``sched_interval`` seconds (60): both short here, to keep the test short."""
    return f"""\
ClusterName=semsegtest
SlurmctldHost={node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder / "munge" / "munge.sock"},cred_expire=5
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder / "slurmd.log"}
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName={node} CPUs={os.cpu_count()} RealMemory=2048 State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    """Waits up to 10 s for ``process`` to create ``path``."""
    deadline = time.monotonic() + 10
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def _stop(processes: list[subprocess.Popen]) -> None:
    """Stops the daemons this module started, last started first."""
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running one-node SLURM cluster; yields the environment its clients (and jobs) need."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=SEARCH_PATH) is None]
    if missing:
        pytest.skip(f"no SLURM here ({', '.join(missing)} missing: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's slurmd runs jobs as root: run the SLURM tests as root")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(mode=0o700)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, node))
    env = os.environ | {"SLURM_CONF": str(conf), "PATH": SEARCH_PATH}
    munge = folder / "munge"
    subprocess.run([shutil.which("mungekey", path=SEARCH_PATH), "--create", f"--keyfile={munge / 'munge.key'}"],
                   check=True, capture_output=True)  # fmt: skip
    munge_files = {"socket": "munge.sock", "key-file": "munge.key", "pid-file": "munged.pid",
                   "log-file": "munged.log", "seed-file": "munged.seed"}  # fmt: skip
    commands = [
        # --force: munged refuses root-owned keys and sockets under /tmp otherwise.
        ["munged", "--foreground", "--force", *(f"--{option}={munge / name}" for option, name in munge_files.items())],
        ["slurmctld", "-D", "-i", "-f", str(conf)],  # -i: no state from an earlier cluster
        ["slurmd", "-D", "-f", str(conf)],
    ]
    processes: list[subprocess.Popen] = []
    try:
        for command in commands:
            with open(folder / f"{command[0]}.out", "wb") as output:  # the daemon keeps its own copy
                processes.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env))
            if command[0] == "munged":  # slurmctld authenticates through its socket from the start
                _wait_for(munge / "munge.sock", processes[-1])
        deadline = time.monotonic() + STARTUP_S
        state = ""
        while time.monotonic() < deadline and all(p.poll() is None for p in processes):
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout
            if state.strip() == "idle":
                break
            time.sleep(1)
        else:
            files = [*folder.glob("*.out"), *folder.glob("**/*.log")]  # the daemons' output and logs
            logs = "\n".join(f"{path.name}: {path.read_text(errors='replace')[-600:]}" for path in sorted(files))
            pytest.skip(f"SLURM did not come up within {STARTUP_S} s (node state {state.strip()!r}):\n{logs}")
    except BaseException:  # a skip too
        _stop(processes)
        raise
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
        time.sleep(1)  # let slurmd end what scancel signalled
        _stop(processes)


def _sweep_command(sweep: Path, tiny_root: Path, *overrides: str) -> list[str]:
    """``scripts/train.py -m hydra/launcher=slurm_cpu`` on the tiny data set, sized for this host."""
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "hydra/launcher=slurm_cpu",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", *CHEAP, *tiny_data(tiny_root),
            "run_test=false", f"hydra.sweep.dir={sweep}", *overrides]  # fmt: skip


def _jobs(env: dict[str, str]) -> list[str]:
    """The cluster's jobs that are pending or running (array tasks as ``<job>_<task>``)."""
    listed = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env, check=True)
    return listed.stdout.split()


@pytest.mark.slow
def test_a_two_job_sweep_runs_as_slurm_jobs(slurm: dict[str, str], tiny_root: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        _sweep_command(sweep, tiny_root, "seed=0,1"), capture_output=True, text=True, timeout=300, env=slurm
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for job in ("0", "1"):
        assert 0 <= json.loads((sweep / job / "metrics.json").read_text())["val/miou"] <= 1
    assert len(list((sweep / ".submitit").glob("*_*/*_result.pkl"))) == 2  # submitit ran both, as SLURM jobs


def _wait_until(condition: Callable[[], bool], process: subprocess.Popen, what: str, seconds: float = 240) -> None:
    """Waits for ``condition`` while ``process`` (the sweep) runs."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_pre_empted_then_timed_out_job_resumes_each_time_and_the_sweep_succeeds(
    slurm: dict[str, str], tiny_root: Path, tmp_path: Path
):
    # Loader workers as in the report: SLURM signals them too, and they must not end the run.
    epochs = 8
    sweep = tmp_path / "sweep"
    cheap = [f"trainer.max_epochs={epochs}", "data.num_workers=2", "data.batch_size=2", "seed=0"]
    process = subprocess.Popen(
        _sweep_command(sweep, tiny_root, *cheap), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm
    )
    train_log = sweep / "0" / "train.log"

    def log() -> str:
        return train_log.read_text() if train_log.exists() else ""

    try:
        _wait_until(lambda: f"epoch 1/{epochs}" in log(), process, "first epoch")
        (job,) = _jobs(slurm)
        # Pre-emption: SLURM requeues the job and sends SIGTERM to every process of it.
        subprocess.run(["scontrol", "requeue", job], check=True, env=slurm)

        def resumed_an_epoch() -> bool:
            _, resumed, since = log().partition("resuming from")
            return bool(resumed) and f"/{epochs}: train/loss" in since

        _wait_until(resumed_an_epoch, process, "an epoch after resuming")
        # The time-limit warning (--signal=USR2@signal_delay_s), to every process: submitit requeues.
        subprocess.run(["scancel", "--signal=USR2", job], check=True, env=slurm)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-4000:]
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=slurm).stdout
    assert "Restarts=2" in shown, shown  # the job itself may still be ending: submitit has its result
    assert "stopped by SIGTERM" in log() and log().count("resuming from") == 2, log()[-4000:]
    assert json.loads((sweep / "0" / "run_info.json").read_text())["epochs"] == epochs
    assert not (sweep / "0" / "failed.json").exists()
    job_output = "".join(path.read_text() for path in (sweep / ".submitit").glob("*/*_log.*"))
    assert "Exiting gracefully after preemption/timeout" in job_output, job_output[-4000:]  # submitit's requeue
    assert "DataLoader worker" not in job_output and "Traceback" not in job_output, job_output[-4000:]


def test_under_submitit_on_slurm_lightning_leaves_requeueing_to_submitit(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert slurm_plugins() == []  # elsewhere Lightning chooses its environment itself
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert slurm_plugins() == []
    # As srun sets it for one task, so that the environment does not warn that srun is unused.
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}.items():
        monkeypatch.setenv(name, value)
    (environment,) = slurm_plugins()
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
