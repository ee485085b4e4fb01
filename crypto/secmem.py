"""Locked key memory: one mlock()ed, never-dumped arena from which key buffers are carved.

Why an arena and not a bytearray per key: mlock works on whole pages, and a bytearray
lives wherever the allocator puts it (next to ordinary objects, moved on resize), so
locking it half-works at best. Anonymous mmap pages are page-aligned, locked once,
marked MADV_DONTDUMP and never moved; every key sealfs itself holds (cached DEKs,
local KEKs, per-file and per-volume derived keys) lives in one slot of them and is
zeroed when its owner lets go.

A slot is handed out as a memoryview (no copy). A slot is reused only once no view of
it is alive any more, so a stale view can read zeros but never someone else's key.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import sys
import threading

log = logging.getLogger("sealfs")

SLOT_SIZE = 64            # the largest key sealfs holds: the 64-byte AES-SIV name key
_PAGE = mmap.PAGESIZE
_SLOTS_PER_PAGE = _PAGE // SLOT_SIZE

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL | None:
    """libc with argtypes set: without them ctypes passes addresses as 32-bit ints."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            return None
        lib.mlock.argtypes = lib.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mlock.restype = lib.munlock.restype = ctypes.c_int
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong]
        lib.prctl.restype = ctypes.c_int
        _libc = lib
    return _libc


class _Slot:
    __slots__ = ("arr", "baseline", "free")

    def __init__(self, arr: ctypes.Array) -> None:
        self.arr = arr
        self.baseline = 0
        self.free = True

    def settle(self) -> None:
        """Record the reference count with no view alive (measured as unused() measures it)."""
        self.baseline = sys.getrefcount(self.arr)

    def unused(self) -> bool:
        """Free and no memoryview still refers to it (each view holds a reference)."""
        return self.free and sys.getrefcount(self.arr) <= self.baseline


class SecretBuffer:
    """n bytes of locked memory; view is the only way to the bytes, wipe() zeroes them."""

    __slots__ = ("_slot", "_arena", "size")

    def __init__(self, arena: LockedArena, slot: _Slot, size: int) -> None:
        self._arena = arena
        self._slot = slot
        self.size = size

    @property
    def view(self) -> memoryview:
        """A writable view of the key (for readinto / derive_into)."""
        if self._slot is None:
            raise ValueError("the secret was wiped")
        return memoryview(self._slot.arr).cast("B")[:self.size]

    def readonly(self) -> memoryview:
        return self.view.toreadonly()

    @property
    def wiped(self) -> bool:
        return self._slot is None

    def wipe(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            self._arena.release(slot)

    def __del__(self) -> None:
        self.wipe()


class LockedArena:
    """Pages of anonymous memory, mlock()ed and excluded from core dumps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: list[mmap.mmap] = []
        self._slots: list[_Slot] = []
        self._warned = False
        self.locked_pages = 0

    def alloc(self, data: bytes | bytearray | memoryview | int) -> SecretBuffer:
        """A new secret: a copy of data (whose caller wipes the original), or n zero bytes."""
        size = data if isinstance(data, int) else len(data)
        if not 0 < size <= SLOT_SIZE:
            raise ValueError(f"a secret is 1 to {SLOT_SIZE} bytes, not {size}")
        with self._lock:
            slot = next((s for s in self._slots if s.unused()), None) or self._grow()
            slot.free = False
        secret = SecretBuffer(self, slot, size)
        if not isinstance(data, int):
            secret.view[:] = data
        return secret

    def release(self, slot: _Slot) -> None:
        ctypes.memset(ctypes.addressof(slot.arr), 0, SLOT_SIZE)
        with self._lock:
            slot.free = True

    def _grow(self) -> _Slot:
        page = mmap.mmap(-1, _PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_DONTDUMP"):
            page.madvise(mmap.MADV_DONTDUMP)
        base = ctypes.addressof(ctypes.c_char.from_buffer(page))
        self._lock_page(base)
        self._pages.append(page)
        slots = [_Slot((ctypes.c_char * SLOT_SIZE).from_buffer(page, i * SLOT_SIZE))
                 for i in range(_SLOTS_PER_PAGE)]
        for slot in slots:
            slot.settle()
        self._slots.extend(slots)
        return slots[0]

    def _lock_page(self, address: int) -> None:
        lib = libc()
        if lib is not None and lib.mlock(address, _PAGE) == 0:
            self.locked_pages += 1
            return
        if not self._warned:     # once: an unprivileged user's RLIMIT_MEMLOCK can be tiny
            self._warned = True
            err = ctypes.get_errno() if lib is not None else 0
            log.warning("cannot mlock key memory (%s): keys may be swapped out; raise "
                        "RLIMIT_MEMLOCK (ulimit -l, LimitMEMLOCK=) to lock them",
                        os.strerror(err) if err else "no libc")


#: the process's one arena
ARENA = LockedArena()


def secret(data: bytes | bytearray | memoryview | int) -> SecretBuffer:
    return ARENA.alloc(data)
