"""reuse_host_memory: after it, freed host memory is reused instead of faulted in anew (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from semseg.errors import ConfigError
from semseg.training.host_memory import check_reuse_host_memory, reuse_host_memory

# In a fresh process (the setting is the process's own): the minor page faults of making and
# freeing a 64 MiB tensor five times, with glibc's defaults, then after reuse_host_memory (and five
# more to let the heap settle).
FAULTS_OF_FIVE_64MB_TENSORS = """
import resource, torch
from semseg.training.host_memory import reuse_host_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(2**24).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
applied = reuse_host_memory("auto", trains_on_cpu=True)
faults()  # the heap grows to hold them (how often depends on what else it holds), then settles
print(default, applied, faults())
"""
PAGES_OF_64MB = 2**26 // 4096


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting acts on glibc's malloc only")
def test_reused_host_memory_is_not_faulted_in_again():
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_FIVE_64MB_TENSORS], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    default, applied, reused = done.stdout.split()
    assert int(default) > 0.9 * 5 * PAGES_OF_64MB, default  # glibc's default: every page, every time
    # Settled, the same pages serve every tensor: not even one tensor's pages faulted in again.
    assert applied == "True" and int(reused) < PAGES_OF_64MB // 4, reused


def test_auto_applies_on_the_cpu_only_and_bad_values_are_refused():
    assert reuse_host_memory(False, trains_on_cpu=True) is False
    assert reuse_host_memory("auto", trains_on_cpu=False) is False
    with pytest.raises(ConfigError, match="reuse_host_memory='yes': choose auto, true or false"):
        check_reuse_host_memory("yes")
