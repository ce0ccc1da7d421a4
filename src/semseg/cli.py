"""What every entry point shares: user errors printed as one clear message, not a traceback,
multirun jobs that fail without stopping the sweep, and a console without upstream noise."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig

from semseg.errors import SemsegError
from semseg.extras import check_command_line
from semseg.files import write_json_atomic
from semseg.reporting.console import quiet_upstream_noise
from semseg.run_folder import RunFolder
from semseg.training.distributed import in_multirun

log = logging.getLogger(__name__)

T = TypeVar("T")


def user_message(error: SemsegError) -> str:
    """The error's own words, without the worker traceback that a DataLoader worker prepends
    when it re-raises an exception in the main process."""
    message = str(error)
    marker = f"{type(error).__module__}.{type(error).__name__}: "
    return message.rsplit(marker, 1)[1].strip() if marker in message else message


def exit_on_user_error(main: Callable[..., T] | None = None, *, lightning: bool = True):
    """Runs ``main``; a ``SemsegError`` (bad data or config) prints its message and exits 2.
    Upstream messages that need no action are left out of its console (``quiet_upstream_noise``).

    ``@exit_on_user_error(lightning=False)``: for an entry point that never loads Lightning
    (scripts/inspect_data.py), which then does not import it to quiet it (seconds at start-up)."""
    if main is None:
        return functools.partial(exit_on_user_error, lightning=lightning)

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        quiet_upstream_noise(lightning=lightning)
        try:
            return main(*args, **kwargs)
        except SemsegError as error:
            print(f"error: {user_message(error)}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def exit_if_extras_missing(overrides: list[str] | None = None) -> None:
    """Before Hydra reads the command line: a choice that needs an extra that is not installed
    (``hydra/launcher=slurm``, ``logger=mlflow``, ...) prints one line with the install command and
    exits 2, as a config error does (``semseg.extras``)."""
    try:
        check_command_line(sys.argv[1:] if overrides is None else overrides)
    except SemsegError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run_job(main: Callable[..., float | None]) -> Callable[..., float | None]:
    """``exit_on_user_error`` for a single run; in a multirun, a failing job writes ``failed.json``
    into its folder, logs the error and returns None (the Optuna sweeper tells such a trial FAIL;
    NaN would break its tell), so the other jobs run on and ``ReportFailedJobs`` lists the failures
    at the end. A job that succeeds removes the ``failed.json`` an earlier attempt of it left (a
    requeued job that failed once, then resumed)."""
    single = exit_on_user_error(main)

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> float | None:
        if not in_multirun():
            return single(*args, **kwargs)
        quiet_upstream_noise()
        hydra = HydraConfig.get()
        failed = RunFolder(hydra.runtime.output_dir).failed_job
        try:
            result = main(*args, **kwargs)
        except Exception as error:
            message = user_message(error) if isinstance(error, SemsegError) else f"{type(error).__name__}: {error}"
            log.error(f"job {hydra.job.num} failed: {message}\n{traceback.format_exc()}")
            report = {"error": message, "overrides": list(hydra.overrides.task), "traceback": traceback.format_exc()}
            try:
                write_json_atomic(failed, report)
            except OSError as unwritable:  # a full or read-only disk, likely what failed the job: the sweep goes on
                log.error(f"job {hydra.job.num}: could not write {failed} ({unwritable}); its error is above")
            return None
        if failed.exists():  # an earlier attempt of this job (requeued, resumed) failed; this one did not
            failed.unlink()
            log.info(f"job {hydra.job.num} succeeded: removed {failed}, left by an earlier attempt that failed")
        return result

    return wrapper
