"""Round trips through the Volume library: every byte written reads back, at every size
around chunk boundaries, for small, default and large chunks, after close and after the
whole volume is reopened from the backend."""

from __future__ import annotations

import os
import random

import pytest

from sealfs.crypto.format.constants import CHUNK_OVERHEAD
from sealfs.crypto.format.header import HEADER_SIZE
from sealfs.crypto.format.layout import slot_offset, stored_size

KIB = 1024
CHUNK_SIZES = [4 * KIB, 64 * KIB, 1024 * KIB]


def sizes_for(cs: int, rng: random.Random) -> list[int]:
    return [0, 1, cs - 1, cs, cs + 1, 10 * cs + 7] + [rng.randrange(0, 3 * cs + 1) for _ in range(3)]


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def read_back(vol, path: str) -> bytes:
    f = await vol.open(path)
    try:
        return await f.read_all()
    finally:
        await f.close()


@pytest.mark.parametrize("cs", CHUNK_SIZES, ids=["4K", "64K", "1M"])
async def test_files_of_every_boundary_size_round_trip_after_close_and_reopen(cs, make_volume, open_volume):
    rng = random.Random(cs)
    store = await make_volume(cs)
    vol = await open_volume(store)
    expected: dict[str, bytes] = {}
    for k, size in enumerate(sizes_for(cs, rng)):
        data = pattern(size, k)
        path = f"f{k}-{size}"
        f = await vol.create(path)
        # write in pieces whose edges straddle chunk boundaries
        pos = 0
        while pos < size:
            n = min(size - pos, rng.choice([1, 7, cs - 3, cs, cs + 5, 2 * cs + 1]))
            assert await f.write(pos, data[pos:pos + n]) == n
            pos += n
        assert (await f.stat()).size == size
        assert await f.read(0, size + 10) == data       # dirty data reads back before flush
        await f.close()
        expected[path] = data
        # the backend file has exactly the computed layout size
        _p, _n, bpath, _l = await vol.paths.entry(path)
        assert (store / bpath).stat().st_size == stored_size(size, cs)
    for path, data in expected.items():
        assert await read_back(vol, path) == data
        assert (await vol.stat(path)).size == len(data)
    await vol.close()

    vol = await open_volume(store)
    try:
        for path, data in expected.items():
            assert (await vol.stat(path)).size == len(data)
            got = await read_back(vol, path)
            assert len(got) == len(data) and got == data
            f = await vol.open(path)
            for _ in range(5):                       # random-access reads
                off = rng.randrange(0, len(data) + 2)
                n = rng.randrange(0, 2 * cs + 3)
                assert await f.read(off, n) == data[off:off + n]
            await f.close()
    finally:
        await vol.close()


@pytest.mark.parametrize("cs", CHUNK_SIZES, ids=["4K", "64K", "1M"])
async def test_overwrites_across_chunk_boundaries_round_trip(cs, make_volume, open_volume):
    store = await make_volume(cs)
    vol = await open_volume(store)
    model = bytearray(pattern(3 * cs + 100, 1))
    await vol.write_file("over", bytes(model))
    f = await vol.open("over", write=True)
    for off, n in [(cs - 5, 10), (2 * cs - 1, cs + 2), (0, 1), (3 * cs + 99, 1), (cs, cs)]:
        data = os.urandom(n)
        await f.write(off, data)
        model[off:off + n] = data
        assert await f.read(0, len(model)) == model
    await f.close()
    assert await read_back(vol, "over") == model
    await vol.close()
    vol = await open_volume(store)
    assert await read_back(vol, "over") == model
    await vol.close()


@pytest.mark.parametrize("cs", CHUNK_SIZES, ids=["4K", "64K", "1M"])
async def test_sparse_writes_past_eof_leave_holes_that_read_as_zeros(cs, make_volume, open_volume):
    store = await make_volume(cs)
    vol = await open_volume(store)
    f = await vol.create("sparse")
    await f.write(0, b"head")
    far = 5 * cs + 3
    await f.write(far, b"tail")
    await f.close()
    model = b"head" + bytes(far - 4) + b"tail"
    assert await read_back(vol, "sparse") == model
    await vol.close()

    vol = await open_volume(store)
    assert (await vol.stat("sparse")).size == far + 4
    assert await read_back(vol, "sparse") == model
    # the skipped chunk slots were never written: they are holes (all zero) on the backend
    _p, _n, bpath, _l = await vol.paths.entry("sparse")
    raw = (store / bpath).read_bytes()
    for i in range(1, 5):
        slot = raw[slot_offset(i, cs):slot_offset(i, cs) + cs + CHUNK_OVERHEAD]
        assert slot == bytes(len(slot)), f"chunk {i} of a sparse file is not a hole"
    # writing into a hole fills just that chunk; the rest stays zeros
    f = await vol.open("sparse", write=True)
    await f.write(2 * cs + 1, b"mid")
    await f.close()
    model = bytearray(model)
    model[2 * cs + 1:2 * cs + 4] = b"mid"
    assert await read_back(vol, "sparse") == model
    await vol.close()
    vol = await open_volume(store)
    assert await read_back(vol, "sparse") == model
    await vol.close()


@pytest.mark.parametrize("cs", CHUNK_SIZES, ids=["4K", "64K", "1M"])
async def test_truncate_grow_and_shrink_round_trip(cs, make_volume, open_volume):
    store = await make_volume(cs)
    vol = await open_volume(store)
    model = bytearray(pattern(2 * cs + 10, 2))
    await vol.write_file("t", bytes(model))
    f = await vol.open("t", write=True)
    for new_size in [cs + 1, 4 * cs + 3, cs, cs - 1, 3 * cs, 0, 7, 2 * cs + 2]:
        await f.truncate(new_size)
        if new_size < len(model):
            del model[new_size:]
        else:
            model.extend(bytes(new_size - len(model)))
        assert (await f.stat()).size == new_size
        assert await f.read(0, new_size + cs) == model
        await f.flush()
        assert await f.read(0, new_size + cs) == model
        _p, _n, bpath, _l = await vol.paths.entry("t")
        assert (store / bpath).stat().st_size == stored_size(new_size, cs)
        # data written after a shrink must not resurrect the cut bytes
        await f.write(len(model), b"Z")
        model.extend(b"Z")
    await f.close()
    assert await read_back(vol, "t") == model
    await vol.close()
    vol = await open_volume(store)
    assert await read_back(vol, "t") == model
    await vol.close()


async def test_shrink_then_grow_without_flush_reads_zeros_not_old_bytes(make_volume, open_volume):
    cs = 4 * KIB
    store = await make_volume(cs)
    vol = await open_volume(store)
    await vol.write_file("s", b"\xff" * (3 * cs))
    f = await vol.open("s", write=True)
    await f.truncate(cs + 10)
    await f.truncate(3 * cs)
    expected = b"\xff" * (cs + 10) + bytes(2 * cs - 10)
    assert await f.read(0, 3 * cs) == expected
    await f.close()
    await vol.close()
    vol = await open_volume(store)
    assert await read_back(vol, "s") == expected
    await vol.close()


async def test_setattr_size_truncates_through_the_path(make_volume, open_volume):
    store = await make_volume(4 * KIB)
    vol = await open_volume(store)
    await vol.write_file("p", b"x" * 10000)
    attr = await vol.setattr("p", size=5000)
    assert attr.size == 5000
    await vol.setattr("p", size=9000)
    assert await read_back(vol, "p") == b"x" * 5000 + bytes(4000)
    await vol.close()
    vol = await open_volume(store)
    assert await read_back(vol, "p") == b"x" * 5000 + bytes(4000)
    await vol.close()


async def test_header_size_is_fixed_and_small():
    assert HEADER_SIZE < 4096


async def test_truncate_to_10_gib_stays_cheap_and_reads_zeros(make_volume, open_volume):
    store = await make_volume(64 * KIB)
    vol = await open_volume(store)
    f = await vol.create("huge")
    await f.write(0, b"start")
    await f.truncate(10 * 1024 ** 3)
    await f.close()
    await vol.close()
    vol = await open_volume(store)
    assert (await vol.stat("huge")).size == 10 * 1024 ** 3
    f = await vol.open("huge")
    assert await f.read(0, 8) == b"start" + bytes(3)
    assert await f.read(5 * 1024 ** 3 + 17, 100_000) == bytes(100_000)
    assert await f.read(10 * 1024 ** 3 - 10, 100) == bytes(10)
    await f.close()
    _p, _n, bpath, _l = await vol.paths.entry("huge")
    assert (store / bpath).stat().st_blocks * 512 < 4 * 1024 * 1024, "the hole was written out"
    await vol.close()


async def test_append_mode_writes_at_the_end_and_truncate_on_open_empties(make_volume, open_volume):
    store = await make_volume(4 * KIB)
    vol = await open_volume(store)
    await vol.write_file("log", b"a" * 5000)
    f = await vol.open("log", write=True, append=True)
    await f.write(0, b"B")
    await f.write(3, b"C" * 5000)
    await f.close()
    assert await vol.read_file("log") == b"a" * 5000 + b"B" + b"C" * 5000
    f = await vol.open("log", write=True, truncate=True)
    assert (await f.stat()).size == 0
    await f.close()
    await vol.close()
    vol = await open_volume(store)
    assert await vol.read_file("log") == b""
    f = await vol.open("log")
    with pytest.raises(OSError):
        await f.write(0, b"read-only handle")
    assert await f.read(10, 10) == b""
    await f.close()
    await vol.close()


async def test_close_to_open_consistency_between_two_volume_instances(make_volume, open_volume):
    store = await make_volume(4 * KIB)
    a = await open_volume(store)
    b = await open_volume(store)
    await a.write_file("shared", b"1" * 9000)
    assert await b.read_file("shared") == b"1" * 9000          # b now caches the plaintext
    f = await a.open("shared", write=True)
    await f.write(4096, b"2" * 10)                            # same size, new bytes
    await f.close()
    assert await b.read_file("shared") == b"1" * 4096 + b"2" * 10 + b"1" * (9000 - 4106)
    await a.close()
    await b.close()
