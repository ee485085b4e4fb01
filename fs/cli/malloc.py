"""glibc malloc settings for a process that moves data in megabyte buffers.

Each flush seals into a fresh buffer of its batch (4-8 MiB) and every 1 MiB I/O makes
new bytes objects. Above glibc's mmap threshold each of them is a fresh mapping whose
pages fault in zeroed on first touch, and on a small machine that costs as much as the
encryption and the I/O together (docs/PERFORMANCE.md, "Numbers behind the code").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# a flush's seal buffer is at most a file's dirty limit (8 MiB); room for larger settings
_LARGE = 32 * 1024 * 1024
_KEEP_FREE = 128 * 1024 * 1024


def _mallopt(param: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.mallopt(param, value))
    except (OSError, AttributeError):      # not glibc: its own allocator rules
        return False


def limit_malloc_arenas(arenas: int = 1) -> None:
    """glibc gives each thread that contends for malloc an arena of its own (8 per core),
    and freed chunk buffers stay cached in each one, so the mount's peak RSS grows with
    its threads. One arena costs no throughput: the crypto and I/O threads spend their
    time in AES and syscalls, not in malloc."""
    if not _mallopt(_M_ARENA_MAX, arenas):
        log.debug("malloc arenas left at the default")


def reuse_large_buffers() -> None:
    """Serve buffers up to 32 MiB from the heap and keep up to 128 MiB of it when freed,
    so the next batch reuses pages that are already mapped. The mount sets it too: its
    write buffers were already reused under glibc's adaptive threshold, but its reads over
    SMB faulted fresh receive and decrypt buffers in on the SMB threads; with it about
    half of those faults go (the rest is the chunk cache filling), writes and peak RSS
    unchanged."""
    if not (_mallopt(_M_MMAP_THRESHOLD, _LARGE) and _mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE)):
        log.debug("malloc thresholds left at the default")
