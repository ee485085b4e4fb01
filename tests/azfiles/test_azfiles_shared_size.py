"""The size every handle on one file shares (Put Range cannot grow a file, so a write
past it resizes first) is never set from a server answer older than a resize made
through another handle: such a "grow" would shrink the file and cut what that handle
wrote, leaving a sealed file whose final chunk is gone (EIO on every open).

The server holds the stat's answer back (hold_next) until the other handle is done, so
the stat is answered from the file before that handle's resize, as a request that
overlaps it can be on any network."""

from __future__ import annotations

import pytest
import trio

from sealfs.backends.azfiles import AzureFilesBackend

pytestmark = pytest.mark.azfiles


async def _ran(srv, op: str, count: int) -> None:
    """Until the server has run op count times in all."""
    with trio.fail_after(10):
        while srv.calls[op] < count:
            await trio.sleep(0.005)


async def test_a_stat_overlapping_another_handles_grow_does_not_shrink_the_file(
        azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    b, srv = azfiles_backend, azfiles_store.server
    h = await b.create_file("f", b"a" * 100)
    other = await b.open("f", write=True)
    stats = srv.calls["head_file"]
    release = srv.hold_next("head_file")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.fstat, h)
        await _ran(srv, "head_file", stats + 1)         # answered: the file is 100 bytes
        await b.write(other, 100, b"b" * 100)           # grows it to 200
        release.set()
    await b.write(h, 150, b"c" * 10)                    # inside the file: no resize
    assert srv.file_bytes("vol", f"{azfiles_store.path}/f") == b"a" * 100 + b"b" * 50 + b"c" * 10 + b"b" * 40
    await b.close(h)
    await b.close(other)


async def test_an_open_whose_stat_overlapped_another_handles_life_takes_its_size(
        azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    b, srv = azfiles_backend, azfiles_store.server
    await b.close(await b.create_file("f", b"a" * 100))
    opened: list = []

    async def open_f() -> None:
        opened.append(await b.open("f", write=True))

    stats = srv.calls["head_file"]
    release = srv.hold_next("head_file")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_f)
        await _ran(srv, "head_file", stats + 1)         # answered: the file is 100 bytes
        other = await b.open("f", write=True)           # another open, another stat
        await b.write(other, 100, b"b" * 100)           # grows it to 200
        await b.close(other)                            # the last handle of it: closed
        release.set()
    (h,) = opened
    await b.write(h, 150, b"c" * 10)                    # inside the file: no resize
    assert srv.file_bytes("vol", f"{azfiles_store.path}/f") == b"a" * 100 + b"b" * 50 + b"c" * 10 + b"b" * 40
    await b.close(h)
