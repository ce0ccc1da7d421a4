"""A run folder that cannot be written any more (a full disk or quota, a read-only mount): one line
naming the folder, its free space, what a checkpoint needs and the fix, instead of a traceback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from semseg.errors import FULL_DISK, OutputError, output_fault
from semseg.run_folder import RunFolder


@contextmanager
def output_faults(run: RunFolder) -> Iterator[None]:
    """A write into the run folder that fails for want of space or permission (a full disk or quota,
    a read-only mount) ends the run with one ``OutputError`` naming the folder, its free space, what
    a checkpoint needs and the fix, not a traceback. The checkpoints saved so far stay whole: each is
    written beside the old one, then renamed into place (``CheckpointBeside``)."""
    try:
        yield
    except Exception as error:
        fault = output_fault(error, run.root)
        if fault is None:
            raise
        raise OutputError(_output_fault_message(fault, run)) from error


def _output_fault_message(fault: OSError, run: RunFolder) -> str:
    last = run.last_checkpoint
    saved = last.is_file()
    written = fault.filename2 or fault.filename
    problem = f"cannot write into the run folder {run.root}" + (f" ({written})" if written else "")
    rerun = f"rerun with hydra.run.dir={run.root}" + (" (it resumes from last.ckpt, which is intact)" if saved else "")
    resume = f" with ckpt_path={last}" if saved else ""
    if fault.errno not in FULL_DISK:
        return (
            f"{problem}: {fault.strerror}. Fix: make it writable and {rerun}, or point hydra.run.dir at a folder "
            f"you can write{resume}."
        )
    existing = next(p for p in (run.root, *run.root.parents) if p.is_dir())
    sizes = [p.stat().st_size for p in (last, run.best_checkpoint) if p.is_file()]
    need = f"; a checkpoint needs about {_mib(max(sizes))} (the size of the saved ones)" if sizes else ""
    return (
        f"{problem}: {fault.strerror}; {_mib(shutil.disk_usage(existing).free)} free there{need}. "
        f"Fix: free space there and {rerun}, or point hydra.run.dir at another disk{resume}."
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
