"""Keeping the kernel's page cache of a file honest while it is read and written at once.

Without the kernel writeback cache, write(2) copies its bytes into the cached pages and
only then sends FUSE_WRITE. Between the two, the kernel may drop those pages (an open
without keep_cache, or auto_inval_data seeing a new mtime in a GETATTR reply), for
instance while the writer waits for a later page that an in-flight READ holds locked. A
READ of the dropped pages can then reach us *before* the WRITE: its reply puts the old
bytes back in the cache, the write completes a moment later, and the kernel serves the
old bytes until something invalidates the file again.

We cannot see that ordering, only its precondition: a READ of pages a WRITE covers, served
after the WRITE before it (write(2)s of a file are serialized, so an earlier READ cannot have
raced this one) and not already undone by a drop. Then the file's cached pages are dropped
once the WRITE has reached us (in a worker thread: dropping waits for locked pages, which we
may have to serve), and every reply that carries the file's attributes waits until that is
done. A read(2) after a completed write always asks for attributes first (the write marked
them stale, and auto_inval_data revalidates them before every read), so it cannot see the
stale pages. mmap readers do not ask; they may see them for the moment the drop takes.
tests/fuse/test_page_cache.py forces the ordering.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

log = logging.getLogger("sealfs.pagecache")

PAGE = 4096
_MAX_READS = 64          # read ranges remembered per file; beyond that, any write is suspect
_SETTLE_TIMEOUT = 5.0    # a reply never waits longer than this for a drop (it would hang a stat)

Spawn = Callable[..., bool]


@dataclass
class _Read:
    serial: int              # order among the file's READs
    generation: int          # WRITEs the file had seen when it was served
    first: int               # pages
    last: int


@dataclass
class _File:
    reads: list[_Read] = field(default_factory=list)
    flood: _Read | None = None    # too many reads to list, the latest: all pages suspect
    serial: int = 0               # READs noted
    generation: int = 0           # WRITEs noted
    requested: int = 0            # drops asked for
    done: int = 0                 # drops finished (covering every request up to this number)
    running: bool = False
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def idle(self) -> bool:
        return not self.reads and self.flood is None and not self.running \
            and self.done >= self.requested


def _pages(offset: int, size: int) -> tuple[int, int]:
    return offset // PAGE, (offset + max(size, 1) - 1) // PAGE


class PageCacheGuard:
    """Per FUSE inode: the pages recent READs served, and pending drops."""

    def __init__(self, spawn: Spawn, invalidate: Callable[[int], None]) -> None:
        self._spawn = spawn
        self._invalidate = invalidate   # drops an inode's cached pages; blocks (worker thread)
        self._files: dict[int, _File] = {}

    def note_read(self, inode: int, offset: int, size: int) -> None:
        """A READ reply is about to fill these pages with what the file holds now."""
        if size <= 0:
            return
        rec = self._files.setdefault(inode, _File())
        rec.serial += 1
        read = _Read(rec.serial, rec.generation, *_pages(offset, size))
        last = rec.reads[-1] if rec.reads else None
        if rec.flood is not None:
            rec.flood = read
        elif last is not None and last.generation == read.generation and \
                read.first <= last.last + 1 and last.first <= read.last + 1:
            last.serial = read.serial                     # a sequential reader: one range
            last.first, last.last = min(last.first, read.first), max(last.last, read.last)
        elif len(rec.reads) >= _MAX_READS:
            rec.flood = read
            rec.reads.clear()
        else:
            rec.reads.append(read)

    def note_write(self, inode: int, offset: int, size: int) -> None:
        """A WRITE has reached the file: if a READ of its pages was served while the write
        may have been under way, the writer may have put its bytes in a page that READ
        replaced: drop the file's pages again.

        write(2)s of one file are serialized by the kernel's inode lock, so a READ can only
        race the write whose WRITE comes next. A READ stays suspect for one WRITE more, in
        case a WRITE that holds no inode lock (writeback of mmap'd pages) came in between."""
        rec = self._files.get(inode)
        if rec is None:
            return
        first, last = _pages(offset, size)
        recent = rec.generation - 1
        if (rec.flood is not None and rec.flood.generation >= recent) or any(
                r.generation >= recent and r.first <= last and first <= r.last for r in rec.reads):
            rec.requested += 1
            if not rec.running:
                rec.running = self._spawn(self._drop_pages, inode, rec)
                if not rec.running:           # no background tasks (not mounted): nothing cached
                    rec.done = rec.requested
        rec.generation += 1
        self._forget_reads(rec, lambda r: r.generation < rec.generation - 1)
        if rec.idle:
            del self._files[inode]

    async def settled(self, inode: int) -> None:
        """Wait until every drop asked for so far is done; call before replying with attributes."""
        rec = self._files.get(inode)
        if rec is None:
            return
        target = rec.requested
        with trio.move_on_after(_SETTLE_TIMEOUT) as scope:
            while rec.done < target:
                await rec.changed.wait()
        if scope.cancelled_caught:
            log.warning("inode %d: dropping cached pages takes over %.0f s; replying anyway",
                        inode, _SETTLE_TIMEOUT)

    def forget(self, inode: int) -> None:
        rec = self._files.get(inode)
        if rec is not None and not rec.running:
            del self._files[inode]

    async def _drop_pages(self, inode: int, rec: _File) -> None:
        try:
            while rec.done < rec.requested:
                target = rec.requested
                cut = rec.serial
                try:
                    # abandon_on_cancel: at shutdown a drop may wait for a READ nobody serves.
                    await trio.to_thread.run_sync(self._invalidate, inode, abandon_on_cancel=True)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:     # ENOENT: the kernel holds nothing for it
                        log.warning("inode %d: could not drop cached pages: %s", inode, exc)
                # Pages of READs served before the drop began are gone; later ones may not be.
                self._forget_reads(rec, lambda r, cut=cut: r.serial <= cut)
                rec.done = target
                rec.changed.set()
                rec.changed = trio.Event()
        finally:
            rec.running = False
            if rec.done < rec.requested:              # cancelled: nobody will drop them now
                rec.done = rec.requested
                rec.changed.set()
            if rec.idle and self._files.get(inode) is rec:
                del self._files[inode]

    @staticmethod
    def _forget_reads(rec: _File, gone: Callable[[_Read], bool]) -> None:
        rec.reads = [r for r in rec.reads if not gone(r)]
        if rec.flood is not None and gone(rec.flood):
            rec.flood = None
