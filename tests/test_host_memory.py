"""reuse_host_memory: after it, freed host memory is reused instead of faulted in anew (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from semseg.errors import ConfigError
from semseg.training.host_memory import check_reuse_host_memory, reuse_host_memory

# A 64 MiB tensor made and freed five times; prints the minor page faults that cost.
FAULTS_OF_FIVE_64MB_TENSORS = """
import resource, sys, torch
from semseg.training.host_memory import reuse_host_memory
applied = reuse_host_memory(sys.argv[1] == "true", trains_on_cpu=True)
torch.ones(2**24).sum()  # the first one faults in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(2**24).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(on: bool) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_FIVE_64MB_TENSORS, str(on).lower()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting acts on glibc's malloc only")
def test_reused_host_memory_is_not_faulted_in_again():
    applied, faults = _faults(on=False)
    assert applied == "False" and faults > 0.9 * 5 * 16384, faults  # glibc's default: every 4 KiB page, every time
    applied, faults = _faults(on=True)
    assert applied == "True" and faults < 16384 + 1000, faults  # at most once more, while the heap settles


def test_auto_applies_on_the_cpu_only_and_bad_values_are_refused():
    assert reuse_host_memory(False, trains_on_cpu=True) is False
    assert reuse_host_memory("auto", trains_on_cpu=False) is False
    with pytest.raises(ConfigError, match="reuse_host_memory='yes': choose auto, true or false"):
        check_reuse_host_memory("yes")
