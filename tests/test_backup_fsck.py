"""`sealfs fsck [--repair]` on local, smb and azfiles stores: every damage kind, reported
by path (the ciphertext damaged on disk, under the server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sealfs.crypto.format.constants import NONCE_SIZE
from sealfs.crypto.format.header import HEADER_PUBLIC_SIZE
from sealfs.crypto.format.layout import slot_offset
from sealfs.fs.core.volume import Volume
from tests.mounting import init_store, sealfs
from tests.storepaths import storage_of
from tests.stores import StoreKit
from tests.tearing import tear_in_place_rewrite

CS = 4096
LONG = "long-" * 40                          # 200 bytes: a long-name entry + sidecar
CONTENT = {
    "/a.txt": b"hello a",
    "/dir/big.bin": os.urandom(5 * CS + 100),  # 6 chunks
    "/dir/sub/c.txt": b"c" * 5000,
    "/dir/other.bin": os.urandom(3 * CS),
    f"/dir/{LONG}": b"long",
    "/ok.txt": b"fine",
}


async def load(store: StoreKit, keyfile: Path) -> Volume:
    return await store.load(keyfile)


@pytest.fixture
async def vol_store(store_kit: StoreKit, keyfile: Path) -> StoreKit:
    store = store_kit
    init_store(store.url, keyfile, chunk_size="4K")
    vol = await load(store, keyfile)
    try:
        await vol.mkdir("/dir")
        await vol.mkdir("/dir/sub")
        await vol.mkdir("/empty")
        for path, data in CONTENT.items():
            await vol.write_file(path, data)
    finally:
        await vol.close()
    return store


async def bpath_of(store: StoreKit, keyfile: Path, path: str) -> Path:
    vol = await load(store, keyfile)
    try:
        _parent, _name, bpath, _long = await vol.paths.entry(path)
        return store.root / bpath
    finally:
        await vol.close()


def fsck(store: StoreKit, keyfile: Path, *extra: str):
    r = sealfs("fsck", store.url, "--keyfile", str(keyfile), *extra, check=False)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def problems(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("PROBLEM: ")]


@pytest.mark.slow
async def test_clean_volume_exits_0(vol_store, keyfile):
    code, out, err = fsck(vol_store, keyfile)
    assert code == 0, out + err
    assert problems(out) == []
    assert "4 directories, 6 files checked: 0 problems" in out


@pytest.mark.slow
async def test_damage_is_reported_by_path_and_never_repaired(vol_store, keyfile):
    big = await bpath_of(vol_store, keyfile, "/dir/big.bin")
    a = await bpath_of(vol_store, keyfile, "/a.txt")
    other = await bpath_of(vol_store, keyfile, "/dir/other.bin")
    c = await bpath_of(vol_store, keyfile, "/dir/sub/c.txt")
    flip(big, slot_offset(2, CS) + NONCE_SIZE + 10)              # a chunk
    flip(a, HEADER_PUBLIC_SIZE + NONCE_SIZE + 3)                  # a header (sealed part)
    with open(other, "r+b") as f:                                 # cut at a chunk boundary
        f.truncate(slot_offset(2, CS))
    moved = vol_store.local_path(keyfile, "", storage_of) / c.name         # /dir/sub/c.txt -> /
    os.rename(c, moved)
    before = {p: p.read_bytes() for p in (big, a, other, moved)}

    code, out, _ = fsck(vol_store, keyfile)
    assert code == 4
    found = problems(out)
    assert any(line.startswith("PROBLEM: /dir/big.bin: chunk 2 failed authentication") for line in found), out
    assert any(line.startswith("PROBLEM: /a.txt: file header") for line in found), out
    assert any(line.startswith("PROBLEM: /dir/other.bin: final chunk failed authentication")
               for line in found), out
    assert any(vol_store.shown(moved) in line and "does not decrypt" in line for line in found), out
    assert len(found) == 4, out

    code, out, _ = fsck(vol_store, keyfile, "--repair")
    assert code == 4
    assert "REPAIRED" not in out
    assert len(problems(out)) == 4
    assert {p: p.read_bytes() for p in before} == before          # nothing touched


@pytest.mark.slow
async def test_safe_problems_are_repaired(vol_store, keyfile):
    a = await bpath_of(vol_store, keyfile, "/a.txt")
    long_entry = await bpath_of(vol_store, keyfile, f"/dir/{LONG}")
    assert long_entry.name.startswith("sealfs.ln.")
    dirb = long_entry.parent
    orphan = dirb / "sealfs.ln.aaaabbbbccccdddd.name"
    orphan.write_text("x" * 300)
    root = vol_store.local_path(keyfile, "", storage_of)
    (root / "sealfs.tmp.0123456789abcdef").mkdir()
    (root / "sealfs.tmp.0123456789abcdef" / "sealfs.dir").write_bytes(b"junk")
    (dirb / "sealfs.tmp.feedface").write_bytes(b"partial")
    (dirb / "sealfs.del.cafe").write_bytes(b"hidden victim")
    with open(a, "ab") as f:
        f.write(os.urandom(777))                                  # an uncommitted tail

    code, out, _ = fsck(vol_store, keyfile)
    assert code == 4
    found = problems(out)
    assert len(found) == 5, out
    assert any(vol_store.shown(orphan) in line and "orphaned long-name sidecar" in line for line in found)
    assert any("sealfs.tmp.0123456789abcdef" in line and "leftover" in line for line in found)
    assert any("sealfs.tmp.feedface" in line for line in found)
    assert any("sealfs.del.cafe" in line for line in found)
    assert any(line.startswith("PROBLEM: /a.txt: uncommitted tail of 777 bytes") for line in found)

    code, out, _ = fsck(vol_store, keyfile, "--repair")
    assert code == 0, out
    assert len([line for line in out.splitlines() if line.startswith("REPAIRED: ")]) == 5
    assert not orphan.exists() and not (root / "sealfs.tmp.0123456789abcdef").exists()
    assert sorted(p.name for p in dirb.iterdir() if p.name.startswith("sealfs.")) == \
        sorted([long_entry.name, long_entry.name + ".name"])

    code, out, _ = fsck(vol_store, keyfile)
    assert code == 0 and problems(out) == []
    vol = await load(vol_store, keyfile)
    try:
        for path, data in CONTENT.items():
            assert await vol.read_file(path) == data
    finally:
        await vol.close()


@pytest.mark.slow
async def test_repair_fixes_safe_ones_but_exit_4_remains(vol_store, keyfile):
    big = await bpath_of(vol_store, keyfile, "/dir/big.bin")
    flip(big, slot_offset(0, CS) + NONCE_SIZE)
    ok = await bpath_of(vol_store, keyfile, "/ok.txt")
    size = ok.stat().st_size
    with open(ok, "ab") as f:
        f.write(b"garbage")
    code, out, _ = fsck(vol_store, keyfile, "--repair")
    assert code == 4
    assert any(line.startswith("REPAIRED: /ok.txt: cut uncommitted tail") for line in out.splitlines())
    assert ok.stat().st_size == size
    assert problems(out) == [line for line in problems(out) if line.startswith("PROBLEM: /dir/big.bin: chunk 0")]
    assert len(problems(out)) == 1


@pytest.mark.slow
async def test_damaged_directory_record_and_long_name_sidecar(vol_store, keyfile):
    sub = await bpath_of(vol_store, keyfile, "/dir/sub")
    flip(sub / "sealfs.dir", 40)
    long_entry = await bpath_of(vol_store, keyfile, f"/dir/{LONG}")
    sidecar = long_entry.with_name(long_entry.name + ".name")
    text = sidecar.read_text()
    sidecar.write_text(text[:-1] + ("a" if text[-1] != "a" else "b"))
    code, out, _ = fsck(vol_store, keyfile)
    assert code == 4
    found = problems(out)
    assert any(line.startswith("PROBLEM: /dir/sub: directory record") for line in found), out
    assert any(long_entry.name in line and "does not match" in line for line in found), out


@pytest.mark.slow
async def test_a_torn_rewrite_is_restored_from_its_journal_by_fsck_repair(vol_store, keyfile):
    new_chunk = os.urandom(CS)
    journal, _ = await tear_in_place_rewrite(
        vol_store.root, keyfile, await bpath_of(vol_store, keyfile, "/dir/big.bin"), 2, new_chunk, CS,
        backend=await vol_store.backend())
    code, out, _ = fsck(vol_store, keyfile)
    assert code == 4
    found = problems(out)
    assert any(line.startswith("PROBLEM: /dir/big.bin: 1 chunk(s) torn by an interrupted write")
               for line in found), out
    assert any("chunk 2 failed authentication" in line for line in found), out
    assert journal.exists(), "fsck without --repair changed something"

    code, out, _ = fsck(vol_store, keyfile, "--repair")
    assert code == 0, out
    assert "REPAIRED: /dir/big.bin: restored 1 torn chunk(s) from the write journal" in out
    assert not journal.exists()
    code, out, _ = fsck(vol_store, keyfile)
    assert code == 0 and problems(out) == [], out
    vol = await load(vol_store, keyfile)
    try:
        expected = CONTENT["/dir/big.bin"]
        assert await vol.read_file("/dir/big.bin") == expected[:2 * CS] + new_chunk + expected[3 * CS:]
    finally:
        await vol.close()


@pytest.mark.slow
async def test_a_torn_rewrite_is_restored_when_the_volume_next_reads_it(vol_store, keyfile):
    new_chunk = os.urandom(CS)
    journal, _ = await tear_in_place_rewrite(
        vol_store.root, keyfile, await bpath_of(vol_store, keyfile, "/dir/big.bin"), 1, new_chunk, CS,
        backend=await vol_store.backend())
    vol = await load(vol_store, keyfile)
    try:
        expected = CONTENT["/dir/big.bin"]
        assert await vol.read_file("/dir/big.bin") == expected[:CS] + new_chunk + expected[2 * CS:]
    finally:
        await vol.close()
    assert not journal.exists()
    code, out, _ = fsck(vol_store, keyfile)
    assert code == 0 and problems(out) == [], out


@pytest.mark.slow
async def test_orphaned_and_spent_journals_are_removed_by_repair(vol_store, keyfile):
    target = await bpath_of(vol_store, keyfile, "/dir/big.bin")
    untouched = target.read_bytes()
    journal, _ = await tear_in_place_rewrite(
        vol_store.root, keyfile, await bpath_of(vol_store, keyfile, "/dir/big.bin"), 3, b"x" * CS, CS,
        backend=await vol_store.backend())
    target.write_bytes(untouched)               # the crash came before the rewrite began
    orphan = journal.parent / ("ab" * 16)
    orphan.write_bytes(journal.read_bytes())
    code, out, _ = fsck(vol_store, keyfile)
    assert code == 4
    assert "PROBLEM: /dir/big.bin: leftover write journal of an interrupted write" in out
    assert any("write journal of a file that no longer exists" in line for line in problems(out)), out
    code, out, _ = fsck(vol_store, keyfile, "--repair")
    assert code == 0, out
    assert "REPAIRED: /dir/big.bin: removed spent write journal" in out
    assert "removed orphaned write journal" in out
    assert not orphan.exists() and not journal.exists()
    assert target.read_bytes() == untouched
