"""One run at a time in a run folder: ``<run>/.lock`` names the process training into it, so that a
second one (the same ``hydra.run.dir`` twice, a requeued job whose old copy still runs) stops at
once instead of overwriting the first one's checkpoints and metrics."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from semseg.errors import ConfigError
from semseg.run_folder import RunFolder

log = logging.getLogger(__name__)

# A lock is created empty, then written: a reader that finds it unreadable waits this long for the
# writer before taking it for a damaged one.
_WRITING_S = 1.0


@contextmanager
def run_lock(run: RunFolder) -> Iterator[None]:
    """Holds ``run.lock`` for the block: the file, created atomically, names this process (host,
    pid, start time, SLURM job id). A lock left by a process that is gone (on this host), or by an
    earlier process of this SLURM job (a requeue: SLURM ended it), is taken over with a log line.

    Raises:
        ConfigError: another live process holds the folder; the message names it and the fix.
    """
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    _acquire(run, owner)
    try:
        yield
    finally:
        _release(run.lock, owner)


def _acquire(run: RunFolder, owner: dict) -> None:
    path = run.lock
    # Each pass either creates the lock, or finds it held (an error), or removes a stale one and
    # tries again; a lock taken meanwhile by another process is then found held on the next pass.
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder == {}:  # released meanwhile
                continue
            stale = _stale(holder, owner)
            if stale is None:
                raise ConfigError(_held_message(run, holder)) from None
            log.warning(f"taking over the lock {path}: {stale}")
            path.unlink(missing_ok=True)
            continue
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(owner, file)
        except BaseException:  # a full disk: leave no empty lock behind
            path.unlink(missing_ok=True)
            raise
        return


def _read(path: Path) -> dict | None:
    """The lock's contents; ``{}`` when it is gone, None when it stays unreadable."""
    deadline = time.monotonic() + _WRITING_S
    while True:
        try:
            holder = json.loads(path.read_text())
            if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                return holder
        except FileNotFoundError:
            return {}
        except ValueError:  # being written, or damaged
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _stale(holder: dict | None, owner: dict) -> str | None:
    """Why the lock ``holder`` wrote no longer holds the folder; None while its process may live."""
    if holder is None:
        return "it is unreadable (damaged)"
    if owner["slurm_job_id"] and holder.get("slurm_job_id") == owner["slurm_job_id"]:
        return f"it is this SLURM job's ({owner['slurm_job_id']}), written before the requeue that ended its process"
    if holder.get("host") != owner["host"]:
        return None  # no way to tell from here whether that process lives
    if holder.get("pid") == owner["pid"]:
        # This process holds no lock yet: an earlier process with the same pid (a container's, say) left it.
        return f"it names this process's pid ({owner['pid']}), left by an earlier process"
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return f"its process {holder['pid']} on this host has ended"
    except PermissionError:  # another user's process: alive
        pass
    return None


def _held_message(run: RunFolder, holder: dict) -> str:
    slurm = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return (
        f"the run folder {run.root} is in use by another run: process {holder.get('pid')} on host "
        f"{holder.get('host')} (started {holder.get('started')}{slurm}) holds {run.lock}, and two runs in one folder "
        f"overwrite each other's checkpoints and metrics. Fix: wait for it to finish, stop it (kill "
        f"{holder.get('pid')} on {holder.get('host')}), or give this run another hydra.run.dir; if that process is "
        f"gone (it ran on another host), delete {run.lock}."
    )


def _release(path: Path, owner: dict) -> None:
    """Removes the lock if it is still this process's (another may have taken it over, wrongly
    judging it stale: its lock stays)."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:  # deleted by hand: nothing to release
        return
    except (OSError, ValueError):
        holder = None
    if holder != owner:
        log.warning(f"left {path} in place: it no longer names this process")
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as error:  # a folder turned read-only: the error that ends the run matters more
        log.warning(f"could not remove {path} ({error.strerror}); the next run here takes it over, this process ended")
