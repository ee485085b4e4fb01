"""LocalBackend.write_many: adjacent pieces go down in one pwritev of the callers' buffers."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from sealfs.backends.local import LocalBackend


def test_write_many_gathers_adjacent_pieces_of_every_kind(tmp_path: Path) -> None:
    words = memoryview(bytearray(os.urandom(400))).cast("I")      # 4-byte items
    tiny = [(10_000 + k, bytes([k % 251])) for k in range(3000)]   # more than IOV_MAX pieces
    writes = [(0, b"head"), (4, bytearray(b"-adjacent-")), (14, words), (414, b""),
              (600, os.urandom(300_000)), *tiny, (5, b"X")]        # a later write wins
    expect = bytearray(max(off + len(memoryview(d).cast("B")) for off, d in writes))
    for offset, data in writes:
        raw = bytes(memoryview(data).cast("B"))
        expect[offset:offset + len(raw)] = raw

    async def main() -> None:
        backend = LocalBackend(tmp_path)
        handle = await backend.open("f", write=True, create=True)
        await backend.write_many(handle, writes)
        await backend.close(handle)
    trio.run(main)
    assert (tmp_path / "f").read_bytes() == bytes(expect)
