"""`sealfs fsck` and the flat store of format 2 (docs/FORMAT.md sections 1 and 9.2), on
local and SMB stores, through the CLI: orphan storages (no directory record names them)
are reported and, when they hold only leftovers, removed by --repair; a copied stub (two
records naming one directory id) is reported; anything planted under d/ is reported and
never listed into, followed or removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sealfs.backends.base import join
from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.constants import DIR_META_NAME
from sealfs.crypto.keys.kms import KeySecrets
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.servers.samba import new_store

SEALFS_BIN = str(Path(sys.executable).with_name("sealfs"))


def run(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SEALFS_BIN, *map(str, args)], capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(params=["local", "smb"])
def any_store(request, tmp_path, keyfile):
    """(backend factory, STORE argument, env) for a fresh initialized store."""
    if request.param == "local":
        path = tmp_path / "store"
        assert run("init", path, "--keyfile", keyfile).returncode == 0
        return (lambda: LocalBackend(path)), str(path), {}
    samba = request.getfixturevalue("samba")
    smb = new_store(samba)
    env = {"SEALFS_SMB_PASSWORD": samba.password}
    r = run("init", smb.url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stderr
    return smb.backend, smb.url, env


async def open_store(factory, keyfile: Path) -> Volume:
    backend = factory()
    if hasattr(backend, "connect"):
        await backend.connect()
    return await Volume.load(backend, KeySecrets(keyfile=keyfile), pins=PinStore())


def fsck(url: str, keyfile: Path, env: dict, *extra: str) -> tuple[int, list[str], list[str], str]:
    r = run("fsck", url, "--keyfile", keyfile, *extra, env=env)
    out = r.stdout.decode()
    lines = out.splitlines()
    return (r.returncode, [x for x in lines if x.startswith("PROBLEM: ")],
            [x for x in lines if x.startswith("REPAIRED: ")], out + r.stderr.decode())


async def put(backend, bpath: str, data: bytes = b"x") -> None:
    h = await backend.open(bpath, write=True, create=True, exclusive=True)
    try:
        await backend.write(h, 0, data)
    finally:
        await backend.close(h)


async def exists(backend, bpath: str) -> bool:
    try:
        await backend.stat(bpath)
        return True
    except FileNotFoundError:
        return False


async def storage_of(vol: Volume, path: str) -> str:
    return (await vol.paths.directory([p for p in path.split("/") if p])).storage


async def test_orphan_storages_are_reported_and_repair_removes_only_leftover_ones(
        any_store, keyfile):
    factory, url, env = any_store
    vol = await open_store(factory, keyfile)
    b = vol.backend
    try:
        await vol.mkdir("/a")
        await vol.mkdir("/a/b")
        await vol.write_file("/a/f", b"kept")
        live = {await storage_of(vol, p) for p in ("/", "/a", "/a/b")}
        # what a mkdir killed after its first step leaves: an empty storage
        empty = await vol.paths.create_storage(os.urandom(16))
        # one holding only leftovers of interrupted operations inside it
        leftovers = await vol.paths.create_storage(os.urandom(16))
        await put(b, join(leftovers, "sealfs.tmp.0011223344556677"))
        await put(b, join(leftovers, "sealfs.tmp.sync.8899aabbccddeeff"))
        await put(b, join(leftovers, "sealfs.del.0123456789abcdef"))
        await put(b, join(leftovers, "sealfs.ln." + "a" * 52 + ".name"), b"orphaned sidecar")
        await b.mkdir(join(leftovers, "sealfs.tmp.feedfacefeedface"))
        await put(b, join(leftovers, "sealfs.tmp.feedfacefeedface", DIR_META_NAME), b"r" * 92)
        # one holding a file: the directory /c, its stub gone (an rmdir killed after its
        # first step, whose storage another client wrote into meanwhile)
        await vol.mkdir("/c")
        await vol.write_file("/c/precious", b"another client's work")
        busy = await storage_of(vol, "/c")
        c_stub = (await vol.paths.entry("/c")).bpath
    finally:
        await vol.close()
    vol = await open_store(factory, keyfile)
    try:
        await vol.backend.unlink(join(c_stub, DIR_META_NAME))
        await vol.backend.rmdir(c_stub)
    finally:
        await vol.close()

    code, found, _, out = fsck(url, keyfile, env)
    assert code == 4, out
    assert len(found) == 3, out
    for storage in (empty, leftovers, busy):
        (line,) = [x for x in found if f"/{storage} (ciphertext path)" in x]
        assert "orphaned directory storage" in line, line
    assert "holding 1 entry a reader would show (kept" in \
        [x for x in found if f"/{busy} " in x][0]
    assert "3 orphaned storages: 3 problems, 0 repaired" in out

    code, found, repaired, out = fsck(url, keyfile, env, "--repair")
    assert code == 4, out                               # the one holding a file remains
    assert len(repaired) == 2 and len(found) == 1, out
    assert all("removed orphaned directory storage" in x for x in repaired), out
    assert f"/{busy} " in found[0]
    vol = await open_store(factory, keyfile)
    try:
        b = vol.backend
        assert not await exists(b, empty) and not await exists(b, leftovers)
        assert await exists(b, busy) and len(await b.listdir(busy)) == 1
        for storage in live:
            assert await exists(b, storage)
        assert await vol.read_file("/a/f") == b"kept"
        assert sorted(n for n, _ in await vol.listdir("/")) == ["a"]
    finally:
        await vol.close()


async def test_no_orphan_is_removed_while_a_directory_record_is_unreadable(any_store, keyfile):
    """An orphan may be the storage of a directory whose record fsck could not read."""
    factory, url, env = any_store
    vol = await open_store(factory, keyfile)
    try:
        await vol.mkdir("/a")
        await vol.mkdir("/a/sub")
        sub = await storage_of(vol, "/a/sub")
        stub = (await vol.paths.entry("/a")).bpath
        h = await vol.backend.open(join(stub, DIR_META_NAME), write=True)
        await vol.backend.write(h, 40, b"\0" * 8)          # /a's record: damaged
        await vol.backend.close(h)
    finally:
        await vol.close()
    code, found, repaired, out = fsck(url, keyfile, env, "--repair")
    assert code == 4 and repaired == [], out
    assert any(x.startswith("PROBLEM: /a: directory record") for x in found), out
    # /a's storage and /a/sub's are not reached: noted (one fault, one PROBLEM), both kept
    assert not any("orphaned directory storage" in x for x in found), out
    assert len([x for x in out.splitlines()
                if x.startswith("NOTE: ") and "not reached from any readable record" in x]) == 2, out
    vol = await open_store(factory, keyfile)
    try:
        assert await exists(vol.backend, sub)
    finally:
        await vol.close()


async def test_a_copied_stub_is_reported(any_store, keyfile):
    """Two records naming one directory id: the copy's directory is the other's storage."""
    factory, url, env = any_store
    vol = await open_store(factory, keyfile)
    try:
        await vol.mkdir("/a")
        await vol.write_file("/a/f", b"in a")
        await vol.mkdir("/b")
        b_storage = await storage_of(vol, "/b")
        a_stub = (await vol.paths.entry("/a")).bpath
        b_stub = (await vol.paths.entry("/b")).bpath
        h = await vol.backend.open(join(a_stub, DIR_META_NAME))
        record = await vol.backend.read(h, 0, 4096)
        await vol.backend.close(h)
        h = await vol.backend.open(join(b_stub, DIR_META_NAME), write=True)
        await vol.backend.write(h, 0, record)                  # /b's record := a copy of /a's
        await vol.backend.close(h)
    finally:
        await vol.close()
    code, found, _, out = fsck(url, keyfile, env)
    assert code == 4, out
    first, second = sorted([a_stub, b_stub])
    second_path = "/a" if second == a_stub else "/b"
    copied = [x for x in found if "copied stub" in x]
    assert len(copied) == 1 and copied[0].startswith(f"PROBLEM: {second_path}: "), out
    orphan = [x for x in found if "orphaned directory storage" in x]
    assert len(orphan) == 1 and f"/{b_storage} " in orphan[0], out   # /b's own storage

    code, found, repaired, out = fsck(url, keyfile, env, "--repair")
    assert code == 4, out                                   # the copy stays reported
    assert [x for x in found if "copied stub" in x] == copied, out
    assert any(f"/{b_storage} " in x for x in repaired), out
    vol = await open_store(factory, keyfile)
    try:
        assert await vol.read_file("/a/f") == b"in a"
    finally:
        await vol.close()


async def test_entries_planted_under_d_are_reported_and_never_followed(any_store, keyfile,
                                                                        tmp_path):
    factory, url, env = any_store
    vol = await open_store(factory, keyfile)
    try:
        await vol.mkdir("/a")
        await vol.write_file("/a/f", b"content")
        fanout = "/".join((await storage_of(vol, "/a")).split("/")[:2])
        b = vol.backend
        await put(b, "d/planted")                             # a file in d/
        await put(b, join(fanout, "planted"))                 # a file in d/xx
        await put(b, join(fanout, "q" * 30))                  # a file shaped like a storage
        await b.mkdir("d/not-a-fanout")                       # directories of other names
        await put(b, "d/not-a-fanout/inside")
        await b.mkdir(join(fanout, "short"))
        expected = {"d/planted": "a file", f"{fanout}/planted": "a file",
                    f"{fanout}/{'q' * 30}": "a file", "d/not-a-fanout": "a directory",
                    f"{fanout}/short": "a directory"}
    finally:
        await vol.close()
    code, found, _, out = fsck(url, keyfile, env)
    assert code == 4, out
    for bpath, what in expected.items():
        assert any(f"/{bpath} (ciphertext path): {what} not written by sealfs" in x
                   for x in found), (bpath, out)
    assert len(found) == len(expected), out
    code, found2, repaired, out = fsck(url, keyfile, env, "--repair")
    assert code == 4 and repaired == [] and found2 == found, out
    vol = await open_store(factory, keyfile)
    try:
        for bpath in expected:
            assert await exists(vol.backend, bpath)
        assert await exists(vol.backend, "d/not-a-fanout/inside")
        assert await vol.read_file("/a/f") == b"content"
    finally:
        await vol.close()


async def test_symlinks_and_fifos_under_d_are_reported_never_followed_or_opened(
        tmp_path, keyfile):
    """Locally (smbd shows no symlink or FIFO to its clients): a symlink where a fan-out
    directory or a storage would be leads to an outside directory holding what looks like
    an orphan storage; fsck never lists it, so --repair never removes it."""
    store = tmp_path / "store"
    assert run("init", store, "--keyfile", keyfile).returncode == 0
    vol = await open_store(lambda: LocalBackend(store), keyfile)
    try:
        await vol.mkdir("/a")
        fanout = "/".join((await storage_of(vol, "/a")).split("/")[:2])
    finally:
        await vol.close()
    outside = tmp_path / "outside"
    (outside / ("o" * 30)).mkdir(parents=True)               # an empty "orphan" out there
    spare = "zz" if fanout != "d/zz" else "yy"
    os.symlink(outside, store / "d" / spare)
    os.symlink(outside / ("o" * 30), store / fanout / ("s" * 30))
    os.mkfifo(store / fanout / ("p" * 30))
    os.mkfifo(store / "d" / "pp")
    code, found, _, out = fsck(str(store), keyfile, {}, "--repair")
    assert code == 4, out
    for name, what in ((f"d/{spare}", "a symbolic link"), (f"{fanout}/{'s' * 30}", "a symbolic link"),
                       (f"{fanout}/{'p' * 30}", "a FIFO"), ("d/pp", "a FIFO")):
        assert any(f"/{name} (ciphertext path): {what} not written by sealfs" in x
                   for x in found), (name, out)
    assert len(found) == 4, out
    assert (outside / ("o" * 30)).is_dir()
    assert (store / "d" / spare).is_symlink() and (store / fanout / ("s" * 30)).is_symlink()


async def test_a_temporary_stub_holding_more_than_a_record_is_kept(any_store, keyfile):
    """A sealfs.tmp.* directory is a leftover only when it holds at most a directory
    record (FORMAT.md 9.2, as rmdir decides): anything else in it is reported, kept."""
    factory, url, env = any_store
    vol = await open_store(factory, keyfile)
    try:
        await vol.mkdir("/a")
        storage = await storage_of(vol, "/a")
        leftover = join(storage, "sealfs.tmp.0011223344556677")
        await vol.backend.mkdir(leftover)
        await put(vol.backend, join(leftover, DIR_META_NAME), b"r" * 92)
        other = join(storage, "sealfs.tmp.8899aabbccddeeff")
        await vol.backend.mkdir(other)
        await put(vol.backend, join(other, DIR_META_NAME), b"r" * 92)
        await put(vol.backend, join(other, "not-ours"), b"someone's")
    finally:
        await vol.close()
    code, found, repaired, out = fsck(url, keyfile, env, "--repair")
    assert code == 4, out
    assert [x for x in repaired if leftover in x] and not [x for x in repaired if other in x], out
    assert len(found) == 1 and f"/{other} (ciphertext path): a temporary directory" in found[0], out
    vol = await open_store(factory, keyfile)
    try:
        assert not await exists(vol.backend, leftover)
        assert sorted(await vol.backend.listdir(other)) == ["not-ours", DIR_META_NAME]
    finally:
        await vol.close()
