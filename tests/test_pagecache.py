"""PageCacheGuard's bookkeeping, with a recording drop in place of the kernel notification.

tests/fuse/test_page_cache.py shows the kernel race itself through a real mount; this file
pins down which writes drop the cached pages and that attribute replies wait for the drop.
"""

from __future__ import annotations

import threading

import trio

from sealfs.fs.fuse.pagecache import PAGE, PageCacheGuard

INODE = 7


class Drops:
    """Stands in for pyfuse3.invalidate_inode: records inodes, optionally blocks."""

    def __init__(self) -> None:
        self.inodes: list[int] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, inode: int) -> None:
        self.release.wait(10)
        self.inodes.append(inode)


async def test_a_write_over_pages_read_just_before_it_drops_them(nursery) -> None:
    drops = Drops()
    guard = PageCacheGuard(lambda fn, *args: nursery.start_soon(fn, *args) or True, drops)
    guard.note_write(INODE, 0, 100)                      # nothing was read: nothing cached
    guard.note_read(INODE, 24 * PAGE, 3 * PAGE)          # pages 24-26
    guard.note_write(INODE, 34 * PAGE + 10, 1532)        # other pages: no drop ...
    await guard.settled(INODE)
    assert drops.inodes == []
    guard.note_write(INODE, 25 * PAGE + 1776, 1532)      # ... the read still counts one WRITE on
    await guard.settled(INODE)
    assert drops.inodes == [INODE]
    guard.note_write(INODE, 25 * PAGE + 1776, 1532)      # the drop took that read's pages away
    await guard.settled(INODE)
    assert drops.inodes == [INODE]


async def test_a_read_ages_out_after_two_writes(nursery) -> None:
    drops = Drops()
    guard = PageCacheGuard(lambda fn, *args: nursery.start_soon(fn, *args) or True, drops)
    guard.note_read(INODE, 5 * PAGE, PAGE)
    guard.note_write(INODE, 50 * PAGE, PAGE)
    guard.note_write(INODE, 51 * PAGE, PAGE)
    guard.note_write(INODE, 5 * PAGE, PAGE)              # the write(2) it could race came and went
    await guard.settled(INODE)
    assert drops.inodes == []


async def test_attribute_replies_wait_for_the_drop(nursery) -> None:
    drops = Drops()
    drops.release.clear()
    guard = PageCacheGuard(lambda fn, *args: nursery.start_soon(fn, *args) or True, drops)
    guard.note_read(INODE, 0, PAGE)
    guard.note_write(INODE, 100, 10)
    with trio.move_on_after(0.2) as waited:
        await guard.settled(INODE)
    assert waited.cancelled_caught and drops.inodes == []
    drops.release.set()
    with trio.fail_after(5):
        await guard.settled(INODE)
    assert drops.inodes == [INODE]
    await guard.settled(INODE + 1)                       # another file never waits


async def test_sequential_reads_are_one_range_and_scattered_ones_flood(nursery) -> None:
    drops = Drops()
    guard = PageCacheGuard(lambda fn, *args: nursery.start_soon(fn, *args) or True, drops)
    for page in range(100):
        guard.note_read(INODE, page * PAGE, PAGE)
    guard.note_write(INODE, 1000 * PAGE, 1)              # outside the one range read
    await guard.settled(INODE)
    assert drops.inodes == []
    for page in range(0, 400, 2):                        # too many ranges to list
        guard.note_read(INODE, page * PAGE, PAGE)
    guard.note_write(INODE, 1000 * PAGE, 1)              # so every write is suspect ...
    await guard.settled(INODE)
    assert drops.inodes == [INODE]
    guard.note_write(INODE, 1000 * PAGE, 1)              # ... until a drop
    await guard.settled(INODE)
    assert drops.inodes == [INODE]


async def test_without_background_tasks_nothing_is_pending() -> None:
    drops = Drops()
    guard = PageCacheGuard(lambda fn, *args: False, drops)   # not mounted
    guard.note_read(INODE, 0, PAGE)
    guard.note_write(INODE, 0, PAGE)
    with trio.fail_after(1):
        await guard.settled(INODE)
    assert drops.inodes == []
