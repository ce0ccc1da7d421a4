"""How many processes or threads the data path may run at once (loader workers, decoding threads)."""

from __future__ import annotations

import os

# A rule of thumb, not a measurement: past 8, more workers or decoding threads rarely feed a model
# faster (decoding PNGs and light augmentation, often bound by the disk by then), while each loader
# worker is a process with its own memory; on a large shared node the affinity mask may list dozens
# of cores that other jobs need.
MAX_PARALLEL_DATA = 8


def data_parallelism() -> int:
    """Loader workers or threads for data work: one per core this process may run on, at most
    ``MAX_PARALLEL_DATA``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_PARALLEL_DATA)
