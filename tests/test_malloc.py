"""The malloc settings take effect: with them, a process that keeps allocating and
freeing megabyte buffers (a flush's seal buffers, 1 MiB I/O) reuses mapped pages
instead of faulting fresh ones in. (mallopt's return value cannot tell: glibc 2.36
answers 1 even to a parameter it does not know.)"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

_CHURN = """
import resource, sys
if sys.argv[1] == "tuned":
    from sealfs.fs.cli.malloc import reuse_large_buffers
    reuse_large_buffers()
MiB = 1 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):                 # two seal buffers and a few 1 MiB pieces per flush
    a = bytearray(8 * MiB); b = bytearray(8 * MiB); c = [bytes(MiB) for _ in range(4)]
    del a, b, c
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True,
                         timeout=120, check=True)
    return int(out.stdout)


def test_reused_buffers_fault_in_a_fraction_of_the_pages() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    # 20 rounds of 20 MiB: 18k-84k page faults without the settings (glibc's adaptive
    # threshold helps some, depending on the heap's history), ~5k (one round's) with them
    assert tuned * 2 < default, (tuned, default)
