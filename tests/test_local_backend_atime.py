"""A sealfs mount is noatime: the local backend opens files and listed directories with
O_NOATIME, so sealfs's own reads leave the store's access times as they are, even where
relatime would move them (an atime behind the mtime); without O_NOATIME rights (a store
owned by someone else, no CAP_FOWNER) it reads without it and says so once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from sealfs.backends.local import LocalBackend

OLD = 1_000_000_000_000_000_000


async def _make(backend: LocalBackend) -> None:
    await backend.mkdir("d")
    for path in ("f", "d/f"):
        handle = await backend.open(path, write=True, create=True)
        await backend.write(handle, 0, b"hello" + bytes(200_000))
        await backend.close(handle)


async def _read_everything(backend: LocalBackend) -> None:
    for path in ("f", "d/f"):
        assert (await backend.read_head(path, 5))[0] == b"hello"
        for write in (False, True):
            handle = await backend.open(path, write=write)
            assert await backend.read(handle, 0, 5) == b"hello"
            assert len(await backend.read(handle, 0, 200_005)) == 200_005   # in a thread
            await backend.close(handle)
    for path in ("", "d"):
        await backend.listdir(path)
        await backend.scandir(path)


def test_reads_and_listings_leave_the_store_atime(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    backend = LocalBackend(store)
    trio.run(_make, backend)
    entries = [store, store / "d", store / "f", store / "d" / "f"]
    for p in entries:
        os.utime(p, ns=(OLD, p.stat().st_mtime_ns))
    trio.run(_read_everything, backend)
    assert [p.stat().st_atime_ns for p in entries] == [OLD] * len(entries)


READER = """
import logging, sys, trio
from sealfs.backends.local import LocalBackend
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
async def main():
    backend = LocalBackend(sys.argv[1])
    for _ in range(3):
        assert (await backend.read_head("d/f", 5))[0] == b"hello"
        handle = await backend.open("f")
        assert await backend.read(handle, 0, 5) == b"hello"
        await backend.close(handle)
        assert sorted(await backend.listdir("d")) == ["f"]
trio.run(main)
print("ok")
"""


def test_without_o_noatime_rights_reads_still_work_and_it_is_said_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    trio.run(_make, LocalBackend(store))
    for dirpath, dirnames, filenames in os.walk(store):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(name, 65534, 65534)
    # root without CAP_FOWNER: reads anything (CAP_DAC_OVERRIDE), owns nothing.
    proc = subprocess.run(["setpriv", "--bounding-set=-fowner", "--inh-caps=-fowner",
                           sys.executable, "-c", READER, str(store)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
    assert proc.stderr.count("O_NOATIME refused") == 1, proc.stderr
