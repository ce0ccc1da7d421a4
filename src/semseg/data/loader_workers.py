"""What every loader worker process sets up as it starts (``DataLoader(worker_init_fn=init_worker)``):
its OpenCV threads, and the job signals it leaves to the main process."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import cv2


def init_worker(_worker_id: int) -> None:
    # Each loader worker is already one of several processes; OpenCV's own thread pool inside
    # every worker would oversubscribe the cores.
    cv2.setNumThreads(0)
    _leave_job_signals_to_the_main_process()


def _leave_job_signals_to_the_main_process() -> None:
    """The loader worker neither dies of nor acts on the signals SLURM sends to the whole job.

    SLURM signals every process of a job step, workers included: SIGTERM on pre-emption,
    ``scontrol requeue`` and ``scancel``, and the ``--signal`` warning before the time limit
    (SIGUSR2 for submitit, which then requeues the job; SIGUSR1 for Lightning's auto-requeue).
    They are for the main process, which stops cleanly (last.ckpt saved, exit 0) and shuts its
    workers down itself. A forked worker inherits the main process's Python handlers: each worker
    would run submitit's requeue and exit (seen on SLURM: five processes requeueing the job, then
    "DataLoader worker exited unexpectedly", a failed job); without them, SIGUSR1/2 would kill it, and PyTorch's own
    handler makes it die of a SIGTERM from anyone but its parent ("DataLoader worker ... is killed
    by signal: Terminated"). Hence SIGUSR1/2 ignored, SIGCONT back to its default (submitit's
    handler only logs, once per process), and SIGTERM obeyed from the parent only.
    """
    if not hasattr(signal, "sigwaitinfo"):  # macOS, Windows: no SLURM, and no way to learn a signal's sender
        return
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCONT, signal.SIG_DFL)
    _sigterm_only_from_parent()


def _sigterm_only_from_parent() -> None:
    """The worker ignores SIGTERM unless the process that started it (its main process) sent it.

    Not a plain SIG_IGN: the parent's own SIGTERM must still end the worker, or a process exiting
    with live workers (its iterator still referenced) waits forever in multiprocessing's exit
    handler, which terminates daemon workers and joins them. A Python handler cannot see the
    sender, so SIGTERM is blocked here and a thread takes it with its sender (``sigwaitinfo``),
    exiting quietly for the parent, as PyTorch's own handler does. If the parent dies without
    stopping the worker, PyTorch's watchdog in the worker loop ends the worker within seconds.
    """
    # Not os.getppid(): with the forkserver start method the worker's OS parent is the fork server.
    parent = multiprocessing.parent_process().pid
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit it

    def take_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=take_sigterm, name="sigterm-from-parent", daemon=True).start()
