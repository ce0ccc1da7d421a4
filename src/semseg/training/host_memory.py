"""Training on the CPU: the host memory PyTorch frees is kept for the next step (glibc on Linux).

glibc's ``malloc`` serves each request above its mmap threshold (32 MB at most) with a fresh
``mmap`` and unmaps it on ``free``, and the kernel zeroes every page of a new mapping at its first
touch. A CPU training step allocates and frees its activations and gradients anew, so every step
maps them again (figures for U-Net ResNet-18 in docs/speed.md). ``M_MMAP_MAX = 0`` serves those requests from the
heap, and a high ``M_TRIM_THRESHOLD`` keeps the freed heap instead of returning it, so later steps
reuse pages already faulted in.

Written by hand because nothing in the stack does it: PyTorch caches freed memory on GPUs only,
and tcmalloc or jemalloc must be preloaded (``LD_PRELOAD``) before the process starts, where
``mallopt`` acts on this process from the call on. The cost: the process keeps its peak heap until
it exits, as a GPU's caching allocator keeps its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

from semseg.errors import ConfigError

log = logging.getLogger(__name__)

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes a C int: return a freed heap top only above 2 GiB
SETTINGS = ("auto", True, False)


def check_reuse_host_memory(setting: object) -> None:
    if setting not in SETTINGS:
        raise ConfigError(f"reuse_host_memory={setting!r}: choose auto, true or false.")


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (whose ``mallopt`` takes these options), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def reuse_host_memory(setting: object, trains_on_cpu: bool) -> bool:
    """Applies ``reuse_host_memory`` (``auto``: where training runs on the CPU; ``true``; ``false``:
    glibc's defaults untouched) to this process; True when it took effect."""
    check_reuse_host_memory(setting)
    if setting is False or (setting == "auto" and not trains_on_cpu):
        return False
    libc = _glibc()
    if libc is None:
        if setting is True:
            log.warning(f"reuse_host_memory=true: {platform.system()} without glibc has no such setting; left as it is")
        return False
    # mallopt returns 1 on success, 0 on an option this glibc does not take.
    done = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
    log.debug(f"reuse_host_memory: glibc mallopt {'applied' if done else 'refused'}")
    return done
