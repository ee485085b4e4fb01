"""Tampering with ciphertext is detected by the library: an IntegrityError, never wrong bytes,
on local, smb and azfiles stores (the ciphertext tampered with on disk, under the server).

(tests/test_cli_tamper.py checks the same attacks through `sealfs cat`.)
"""

from __future__ import annotations

import os
import shutil

import pytest

from sealfs.crypto.format.constants import CHUNK_OVERHEAD
from sealfs.crypto.format.header import HEADER_SIZE
from sealfs.crypto.format.layout import slot_offset, stored_size
from sealfs.errors import IntegrityError
from tests.storepaths import record_of, storage_of
from tests.stores import StoreKit

CS = 4096


@pytest.fixture
def make_volume(store_kit: StoreKit, keyfile):
    """make_volume(chunk_size) -> the ciphertext directory of a new volume on store_kit's
    backend (the conftest fixture of this name is local only)."""
    async def make(chunk_size: int = 64 * 1024):
        await store_kit.init(keyfile, chunk_size)
        return store_kit.root
    return make


@pytest.fixture
def open_volume(store_kit: StoreKit, keyfile):
    """open_volume(root) -> the Volume over store_kit's backend (root names its ciphertext)."""
    async def open_(root):
        assert root == store_kit.root
        return await store_kit.load(keyfile)
    return open_


async def bpath_of(vol, path: str) -> str:
    _parent, _name, bpath, _long = await vol.paths.entry(path)
    return bpath


async def read_fresh(vol, path: str) -> bytes:
    """Read through a new open with no cached plaintext (as a fresh process would)."""
    vol.cache.clear()
    vol.headers.forget_names()
    f = await vol.open(path)
    try:
        return await f.read_all()
    finally:
        await f.close()


@pytest.mark.slow
async def test_every_single_flipped_byte_of_a_file_is_detected(make_volume, open_volume, store_kit):
    """Every byte on local; over smb and azfiles (the same crypto behind another transport,
    at a read per byte) every header byte and every 29th byte after it, the last included."""
    store = await make_volume(CS)
    vol = await open_volume(store)
    data = os.urandom(CS + 100)
    await vol.write_file("f", data)
    target = store / await bpath_of(vol, "f")
    original = target.read_bytes()
    assert len(original) == stored_size(len(data), CS)
    positions = range(len(original)) if store_kit.kind == "local" else sorted(
        {*range(HEADER_SIZE), *range(HEADER_SIZE, len(original), 29), len(original) - 1})
    for pos in positions:
        damaged = bytearray(original)
        damaged[pos] ^= 0x01 << (pos % 8)
        target.write_bytes(damaged)
        with pytest.raises(IntegrityError):
            await read_fresh(vol, "f")
    target.write_bytes(original)
    assert await read_fresh(vol, "f") == data
    await vol.close()


async def test_a_flipped_header_byte_fails_stat_and_open(make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.write_file("f", b"x" * 100)
    target = store / await bpath_of(vol, "f")
    raw = bytearray(target.read_bytes())
    raw[HEADER_SIZE - 1] ^= 0x80                  # the header's GCM tag
    target.write_bytes(raw)
    await vol.close()
    vol = await open_volume(store)
    with pytest.raises(IntegrityError):
        await vol.stat("f")
    with pytest.raises(IntegrityError):
        await vol.open("f")
    await vol.close()


async def test_swapped_chunks_fail_to_open(make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    data = os.urandom(4 * CS)
    await vol.write_file("f", data)
    target = store / await bpath_of(vol, "f")
    raw = bytearray(target.read_bytes())
    slot = CS + CHUNK_OVERHEAD
    a, b = slot_offset(1, CS), slot_offset(2, CS)
    raw[a:a + slot], raw[b:b + slot] = raw[b:b + slot], raw[a:a + slot]
    target.write_bytes(raw)
    with pytest.raises(IntegrityError):
        await read_fresh(vol, "f")
    # the chunks before the swap are still served (they authenticate)
    vol.cache.clear()
    f = await vol.open("f")
    assert await f.read(0, CS) == data[:CS]
    with pytest.raises(IntegrityError):
        await f.read(CS, CS)
    await f.close()
    await vol.close()


async def test_a_chunk_copied_from_another_file_at_the_same_index_fails(make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.write_file("victim", os.urandom(3 * CS))
    await vol.write_file("donor", os.urandom(3 * CS))
    victim = store / await bpath_of(vol, "victim")
    original = victim.read_bytes()
    donor = (store / await bpath_of(vol, "donor")).read_bytes()
    at = slot_offset(1, CS)
    raw = bytearray(original)
    raw[at:at + CS + CHUNK_OVERHEAD] = donor[at:at + CS + CHUNK_OVERHEAD]
    victim.write_bytes(raw)
    with pytest.raises(IntegrityError):
        await read_fresh(vol, "victim")
    # a foreign header in front of the file's own chunks is refused as well:
    # chunk keys and AAD are bound to the file id
    raw = bytearray(original)
    raw[:HEADER_SIZE] = donor[:HEADER_SIZE]
    victim.write_bytes(raw)
    with pytest.raises(IntegrityError):
        await read_fresh(vol, "victim")
    victim.write_bytes(original)
    assert len(await read_fresh(vol, "victim")) == 3 * CS
    await vol.close()


@pytest.mark.parametrize("keep_chunks", [1, 2, 3])
async def test_a_file_truncated_at_a_chunk_boundary_fails(keep_chunks, make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.write_file("f", os.urandom(3 * CS + 10))
    target = store / await bpath_of(vol, "f")
    with open(target, "r+b") as fh:
        fh.truncate(stored_size(keep_chunks * CS, CS))
    await vol.close()
    vol = await open_volume(store)
    with pytest.raises(IntegrityError):
        await vol.stat("f")
    with pytest.raises(IntegrityError):
        await read_fresh(vol, "f")
    await vol.close()


async def test_a_file_truncated_to_its_header_or_less_fails(make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.write_file("f", b"abc")
    target = store / await bpath_of(vol, "f")
    for size in (HEADER_SIZE, HEADER_SIZE - 1, 0):
        with open(target, "r+b") as fh:
            fh.truncate(size)
        with pytest.raises(IntegrityError):
            await read_fresh(vol, "f")
    await vol.close()


async def test_a_zeroed_final_chunk_is_not_a_hole(make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.write_file("f", os.urandom(2 * CS))
    target = store / await bpath_of(vol, "f")
    raw = bytearray(target.read_bytes())
    at = slot_offset(1, CS)
    raw[at:] = bytes(len(raw) - at)
    target.write_bytes(raw)
    with pytest.raises(IntegrityError):
        await read_fresh(vol, "f")
    await vol.close()


async def test_a_zeroed_middle_chunk_reads_as_a_hole_as_documented(make_volume, open_volume):
    """The documented price of cheap sparse files (docs/THREAT_MODEL.md row 11)."""
    store = await make_volume(CS)
    vol = await open_volume(store)
    data = os.urandom(3 * CS)
    await vol.write_file("f", data)
    target = store / await bpath_of(vol, "f")
    raw = bytearray(target.read_bytes())
    at = slot_offset(1, CS)
    raw[at:at + CS + CHUNK_OVERHEAD] = bytes(CS + CHUNK_OVERHEAD)
    target.write_bytes(raw)
    assert await read_fresh(vol, "f") == data[:CS] + bytes(CS) + data[2 * CS:]
    await vol.close()


async def test_a_file_moved_into_another_directory_is_not_listed_but_reported(
        make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.mkdir("a")
    await vol.mkdir("b")
    await vol.write_file("a/secret", b"top secret")
    await vol.write_file("b/innocent", b"fine")
    src = store / await bpath_of(vol, "a/secret")
    dst_dir = store / await storage_of(vol, "b")
    await vol.close()
    shutil.move(src, dst_dir / src.name)

    vol = await open_volume(store)
    listing = await vol.listdir("b")
    assert [name for name, _ in listing] == ["innocent"]
    assert [(p.bpath.rsplit("/", 1)[-1], p.name) for p in listing.problems] == [(src.name, None)]
    assert "does not belong in this directory" in listing.problems[0].reason
    assert [name for name, _ in await vol.listdir("a")] == []
    with pytest.raises(FileNotFoundError):
        await vol.open("a/secret")
    with pytest.raises(FileNotFoundError):
        await vol.open("b/secret")
    assert sorted(p for p, _ in await vol.walk()) == ["a", "b", "b/innocent"]
    await vol.close()


async def test_a_directory_moved_elsewhere_is_not_listed_under_a_wrong_name(make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.mkdir("a")
    await vol.mkdir("a/inner")
    await vol.write_file("a/inner/f", b"x")
    await vol.mkdir("b")
    src = store / await bpath_of(vol, "a/inner")
    dst_dir = store / await storage_of(vol, "b")
    await vol.close()
    shutil.move(src, dst_dir / src.name)
    vol = await open_volume(store)
    listing = await vol.listdir("b")
    assert listing == []
    assert [p.bpath.rsplit("/", 1)[-1] for p in listing.problems] == [src.name]
    await vol.close()


async def test_a_swapped_sidecar_of_a_long_name_is_not_accepted(make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.mkdir("a")
    await vol.mkdir("b")
    await vol.write_file("a/" + "l" * 200, b"x")
    await vol.write_file("b/" + "m" * 200, b"y")
    a_dir = store / await storage_of(vol, "a")
    b_dir = store / await storage_of(vol, "b")
    await vol.close()
    a_side = next(p for p in a_dir.iterdir() if p.name.endswith(".name"))
    b_side = next(p for p in b_dir.iterdir() if p.name.endswith(".name"))
    a_side.write_bytes(b_side.read_bytes())
    vol = await open_volume(store)
    listing = await vol.listdir("a")
    assert listing == [] and len(listing.problems) == 1
    assert "sidecar does not match its entry" in listing.problems[0].reason
    assert [n for n, _ in await vol.listdir("b")] == ["m" * 200]
    await vol.close()


async def test_a_damaged_directory_record_fails_cleanly(make_volume, open_volume):
    store = await make_volume(CS)
    vol = await open_volume(store)
    await vol.mkdir("d")
    await vol.write_file("d/f", b"x")
    record = store / await record_of(vol, "d")
    await vol.close()
    raw = bytearray(record.read_bytes())
    raw[-1] ^= 1
    record.write_bytes(raw)
    vol = await open_volume(store)
    with pytest.raises(IntegrityError):
        await vol.listdir("d")
    with pytest.raises(IntegrityError):
        await vol.read_file("d/f")
    await vol.close()
