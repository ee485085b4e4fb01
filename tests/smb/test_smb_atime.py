"""A sealfs mount is noatime: over SMB, the access time sealfs shows is kept in the
entry's CreationTime, which no read or listing of the server moves (backends/smb/messages.py)."""

from __future__ import annotations

import time

from sealfs.backends.smb import SmbBackend

OLD_ATIME = 1_000_000_000_123_456_700       # behind the mtime: relatime would move it
MTIME = 1_500_000_000_987_654_300


async def _read_everything(b: SmbBackend) -> None:
    await b.read_head("d/f", 100)
    h = await b.open("d/f")
    assert await b.read_many(h, [(0, 5), (70_000, 10)]) == [b"hello", b"\0" * 10]
    await b.fstat(h)
    await b.close(h)
    h = await b.open("d/f")                  # again, maybe from the handle cache
    await b.read(h, 0, 5)
    await b.close(h)
    h = await b.open("d/f", write=True)
    await b.read(h, 0, 5)
    await b.close(h)
    await b.scandir("d")
    await b.listdir("")
    await b.stat("d/f")


async def _atimes(b: SmbBackend) -> set[int]:
    listed = dict(await b.scandir("d"))
    root = dict(await b.scandir(""))
    return {(await b.stat("d/f")).atime_ns, (await b.stat("d")).atime_ns,
            listed["f"].atime_ns, listed["s"].atime_ns, root["d"].atime_ns}


async def test_reads_and_listings_leave_the_access_time(smb_backend: SmbBackend) -> None:
    b = smb_backend
    await b.mkdir("d")
    await b.mkdir("d/s")
    h = await b.open("d/f", write=True, create=True, exclusive=True)
    await b.write(h, 0, b"hello" + bytes(80_000))
    await b.close(h)
    for path in ("d/f", "d", "d/s"):
        await b.set_times(path, OLD_ATIME, MTIME)
    assert await _atimes(b) == {OLD_ATIME}
    for _ in range(2):
        await _read_everything(b)
        time.sleep(0.01)
        assert await _atimes(b) == {OLD_ATIME}


async def test_the_access_time_is_set_at_creation_and_follows_renames_and_links(
        smb_backend: SmbBackend) -> None:
    b = smb_backend
    started = time.time_ns() // 100 * 100 - 1_000_000_000    # the server's clock, roughly
    handle = await b.create_file("f", b"x")
    await b.close(handle)
    await b.mkdir("d")
    assert (await b.stat("f")).atime_ns >= started and (await b.stat("d")).atime_ns >= started
    await b.set_times("f", OLD_ATIME, MTIME)
    await b.rename("f", "d/g")
    await b.link("d/g", "h")
    assert (await b.stat("h")).atime_ns == OLD_ATIME
    handle = await b.open("h", write=True)
    await b.fset_times(handle, OLD_ATIME + 100, MTIME)
    await b.fset_times(handle, None, MTIME + 100)           # None keeps the access time
    await b.close(handle)
    assert (await b.stat("d/g")).atime_ns == OLD_ATIME + 100
    await b.rewrite_head("d/g", b"y", OLD_ATIME + 200, MTIME)
    assert (await b.stat("h")).atime_ns == OLD_ATIME + 200
