"""What each metadata operation costs in backend calls, on local and SMB: the budget the
speed of creates and of cold stats and listings rests on (docs/PERFORMANCE.md). A change
that adds a call to one of them fails here; one that saves a call lowers the budget."""

from __future__ import annotations

import collections
import inspect
import os
from pathlib import Path

import pytest

from sealfs.backends.base import ForeignEntryError
from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.header import HEADER_SIZE
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.servers.samba import new_store

#: the calls of one create of a 4 KiB file, as the kernel drives it: lookup of the new
#: name (read_head, which finds nothing), create (create_file, place_new), write and close (locally write_many,
#: write, fstat, close; on SMB write, fstat, close and the two time pins of a writer):
#: what format 1 made
CREATE_BUDGET = {"local": 7, "smb": 8}
#: format 1's calls for cold lookups of d, d/e, d/e/f: a stat each, two directory records
#: (open, read, close) and a header (on SMB also the two directories' listings that count
#: their subdirectories)
COLD_DIRS_BUDGET = {"local": 10, "smb": 12}


class Counting:
    """A backend that counts the calls made to it (by name), and passes them on."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr

        async def counted(*args, **kwargs):
            self.calls[name] += 1
            return await attr(*args, **kwargs)
        return counted

    def total(self) -> int:
        return sum(self.calls.values())


@pytest.fixture(params=["local", "smb"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def make_backend(request, kind: str, tmp_path: Path):
    """A fresh backend on the same (empty) store each call."""
    if kind == "local":
        store = tmp_path / "store"
        store.mkdir()
        return lambda: LocalBackend(store)
    samba = request.getfixturevalue("samba")
    store = new_store(samba)
    return store.backend


async def _volume(make_backend, keyfile: Path, *, init: bool = False) -> tuple[Volume, Counting]:
    secrets = KeySecrets(keyfile=keyfile)
    if init:
        await Volume.init(make_backend(), provider_for_init(None, secrets), pins=PinStore())
    backend = Counting(make_backend())
    return await Volume.load(backend, secrets, pins=PinStore()), backend


async def _create(volume: Volume, path: str, data: bytes) -> None:
    """What a FUSE create of a new file costs: lookup, create, write, close."""
    assert await volume.lookup(path) is None
    f = await volume.create(path)
    await f.stat()
    await f.write(0, data)
    await f.flush()
    await f.close()


async def test_create_costs_no_more_calls_than_format_1(make_backend, kind: str,
                                                        keyfile: Path) -> None:
    volume, backend = await _volume(make_backend, keyfile, init=True)
    try:
        await volume.mkdir("d")
        await _create(volume, "d/warm", b"x")         # the directory resolved and cached
        backend.calls.clear()
        for i in range(5):
            await _create(volume, f"d/f{i}", os.urandom(4096))
        assert backend.total() / 5 <= CREATE_BUDGET[kind], backend.calls
    finally:
        await volume.close()


async def _tree(make_backend, keyfile: Path, files: int, dirs: int) -> None:
    volume, _backend = await _volume(make_backend, keyfile, init=True)
    try:
        await volume.mkdir("d")
        for i in range(files):
            await volume.write_file(f"d/f{i:03d}", b"data")
        for i in range(dirs):
            await volume.mkdir(f"d/sub{i}")
    finally:
        await volume.close()


async def test_cold_stat_is_one_header_read(make_backend, keyfile: Path) -> None:
    """A name looked up cold is read with its stat in one call; once known, a lookup
    revalidates it with one stat and reads its header again only if it changed."""
    await _tree(make_backend, keyfile, 3, 1)
    volume, backend = await _volume(make_backend, keyfile)      # cold: a fresh mount
    try:
        assert (await volume.lookup("d")).is_dir
        backend.calls.clear()
        assert (await volume.lookup("d/f000")).size == 4
        assert backend.calls == {"read_head": 1}
        backend.calls.clear()
        for i in (1, 2):      # a run of cold lookups in d: one listing and one batch
            assert (await volume.lookup(f"d/f{i:03d}")).size == 4
        assert backend.calls == {"scandir": 1, "read_heads": 1}
        await volume.mkdir("d/sub1")     # a local change: the listing answers no more
        backend.calls.clear()
        for i in range(3):
            assert (await volume.lookup(f"d/f{i:03d}")).size == 4
        assert backend.calls == {"stat": 3}
        backend.calls.clear()
        assert await volume.lookup("d/absent") is None
        assert backend.calls == {"read_head": 1}
        assert (await volume.lookup("d/sub0")).is_dir        # a stub: stat'ed after all
    finally:
        await volume.close()


async def test_directory_lookups_cost_no_more_round_trips_than_format_1(
        make_backend, kind: str, keyfile: Path) -> None:
    """A directory is two backend objects in format 2 (its stub and its storage): a warm
    lookup stats both in one go (the stub says the name is still this directory, the
    storage gives its times), one round trip as format 1's one stat."""
    volume, _backend = await _volume(make_backend, keyfile, init=True)
    try:
        await volume.mkdir("d")
        await volume.mkdir("d/e")
        await volume.write_file("d/e/f", b"x")
    finally:
        await volume.close()
    volume, backend = await _volume(make_backend, keyfile)
    try:
        backend.calls.clear()
        for path in ("d", "d/e", "d/e/f"):
            await volume.lookup(path)
        assert backend.total() <= COLD_DIRS_BUDGET[kind], backend.calls
        backend.calls.clear()
        for path in ("d", "d/e", "d/e/f"):
            await volume.lookup(path)
        assert backend.calls == {"stat_many": 2, "stat": 1}
    finally:
        await volume.close()


async def test_cold_listing_reads_headers_in_one_batch(make_backend, keyfile: Path) -> None:
    """A listing's backend calls do not grow with its files: one listing of the storage and
    one batch of headers (and per subdirectory, its record and its storage's stat)."""
    files, dirs = 12, 2
    await _tree(make_backend, keyfile, files, dirs)
    volume, backend = await _volume(make_backend, keyfile)
    try:
        assert (await volume.lookup("d")).is_dir
        backend.calls.clear()
        listing = await volume.listdir("d")
        assert len(listing) == files + dirs and not listing.problems
        assert {name: attr.size for name, attr in listing if not attr.is_dir} == {
            f"f{i:03d}": 4 for i in range(files)}
        per_dir = {"read_head": 1, "stat": 1}           # its sealfs.dir; its storage
        expected = {"scandir": 1, "read_heads": 1}
        for call, n in per_dir.items():
            expected[call] = expected.get(call, 0) + n * dirs
        assert backend.calls == expected
        backend.calls.clear()
        await volume.listdir("d")                          # warm: nothing read again
        # per subdirectory one call still: its record and its storage stat'ed together
        # (was a stat of the storage alone, which could not see another client's chmod)
        assert backend.calls == {"scandir": 1, "stat_many": dirs}
        backend.calls.clear()
        for i in range(files):                             # nor by the lookups that follow
            await volume.lookup(f"d/f{i:03d}")
        assert backend.calls == {"stat": files}
    finally:
        await volume.close()


async def test_read_heads_reports_each_entry(make_backend, kind: str, tmp_path: Path) -> None:
    """A batch read gives every name its own answer, in order: content and stat, or the
    error a read_head of it alone gives (a planted symlink is never followed)."""
    backend = make_backend()
    try:
        await backend.mkdir("dir")
        await backend.mkdir("dir/sub")
        for name in ("a", "b"):
            handle = await backend.create_file(f"dir/{name}", name.encode() * 100)
            await backend.close(handle)
        names = ["a", "missing", "sub", "b"]
        if kind == "local":
            (tmp_path / "outside").write_bytes(b"secret")
            (tmp_path / "store" / "dir" / "link").symlink_to(tmp_path / "outside")
            names.append("link")
        heads = await backend.read_heads("dir", names, HEADER_SIZE)
        assert len(heads) == len(names)
        for i, name in ((0, "a"), (3, "b")):
            data, st = heads[i]
            assert data == name.encode() * min(100, HEADER_SIZE) and st.size == 100
            assert not st.is_dir
        assert isinstance(heads[1], FileNotFoundError)
        assert isinstance(heads[2], IsADirectoryError)
        if kind == "local":
            assert isinstance(heads[4], ForeignEntryError)
    finally:
        await backend.aclose()


async def test_cold_lookups_in_one_directory_read_it_once(make_backend, keyfile: Path) -> None:
    """A run of cold lookups of names never listed (stat of each name in a manifest) is
    answered from one listing of their directory and one batch of its headers, once the
    lookups already paid are an eighth of its files (coldscan.BATCH_RATIO); a local
    change in between is seen by the next lookup."""
    files = 40
    await _tree(make_backend, keyfile, files, 0)
    volume, backend = await _volume(make_backend, keyfile)
    try:
        assert (await volume.lookup("d")).is_dir
        backend.calls.clear()
        for i in range(files):
            assert (await volume.lookup(f"d/f{i:03d}")).size == 4
        # 4 names read one by one (the 2nd lists d); at the 5th, an eighth of the files,
        # the rest in one batch
        assert backend.calls == {"read_head": 4, "scandir": 1, "read_heads": 1}
        backend.calls.clear()
        for i in range(files):
            assert (await volume.lookup(f"d/f{i:03d}")).size == 4
        assert backend.total() == 0, backend.calls
        assert await volume.lookup("d/absent") is None      # never answered from a listing
    finally:
        await volume.close()


async def _chmod(volume: Volume) -> None:
    await volume.setattr("d/f001", mode=0o600)


async def _rewrite(volume: Volume) -> None:
    await volume.write_file("d/f001", b"longer data")


async def _write_open(volume: Volume) -> None:
    f = await volume.open("d/f001", write=True)
    await f.write(0, b"123456")
    await f.close()


async def _unlink(volume: Volume) -> None:
    await volume.unlink("d/f001")


async def _rename_over(volume: Volume) -> None:
    await volume.rename("d/f002", "d/f001")


CHANGES = {"chmod": (_chmod, (0o600, 4)), "rewrite": (_rewrite, (0o644, 11)),
           "write": (_write_open, (0o644, 6)), "unlink": (_unlink, None),
           "rename": (_rename_over, (0o640, 4))}


@pytest.mark.parametrize("change", CHANGES)
async def test_local_change_ends_a_listings_answers(make_backend, keyfile: Path,
                                                   change: str) -> None:
    """A lookup right after a local change in a directory whose listing answers lookups
    sees the change (the listing is dropped), not the listed stat."""
    volume, _backend = await _volume(make_backend, keyfile, init=True)
    try:
        await volume.mkdir("d")
        for i in range(4):
            await volume.write_file(f"d/f{i:03d}", b"data", mode=0o640 if i == 2 else 0o644)
    finally:
        await volume.close()
    volume, backend = await _volume(make_backend, keyfile)
    try:
        for i in range(4):
            await volume.lookup(f"d/f{i:03d}")
        backend.calls.clear()
        assert (await volume.lookup("d/f001")).size == 4
        assert backend.total() == 0                # answered from the listing
        act, expected = CHANGES[change]
        await act(volume)
        attr = await volume.lookup("d/f001")
        assert (attr if attr is None else (attr.mode, attr.size)) == expected
    finally:
        await volume.close()


async def test_another_clients_metadata_change_costs_one_read(make_backend, keyfile: Path) -> None:
    """Another client's chmod of a file and of a directory (a rewrite of its header or its
    record, nothing else) shows at the next lookup and stat, for one read of what changed:
    the change moved the version stamp of the file or record (on SMB, whose change time is
    the write time, its change mark); what did not change is not read again."""
    volume, _backend = await _volume(make_backend, keyfile, init=True)
    try:
        await volume.mkdir("d")
        await volume.mkdir("d/sub")
        await volume.write_file("d/f", b"data")
    finally:
        await volume.close()
    volume, backend = await _volume(make_backend, keyfile)
    other, _other_backend = await _volume(make_backend, keyfile)
    try:
        for path in ("d", "d/sub", "d/f"):
            await volume.lookup(path)
        for path in ("", "d", "d/sub", "d/f"):
            await volume.stat(path)
        backend.calls.clear()
        for path in ("d", "d/sub", "d/f"):                 # warm: nothing read
            await volume.lookup(path)
        for path in ("", "d", "d/sub", "d/f"):
            await volume.stat(path)
        assert "read_head" not in backend.calls, backend.calls
        await other.setattr("d/f", mode=0o600)
        await other.setattr("d/sub", mode=0o700)
        await other.setattr("", mode=0o751)                # the root too
        backend.calls.clear()
        assert (await volume.lookup("d/f")).mode == 0o600
        assert (await volume.lookup("d/sub")).mode == 0o700
        assert (await volume.stat("")).mode == 0o751
        assert backend.calls == {"stat": 1, "stat_many": 2, "read_head": 3}
        backend.calls.clear()
        for path in ("d/f", "d/sub", ""):
            await volume.stat(path)
        assert "read_head" not in backend.calls, backend.calls
    finally:
        await other.close()
        await volume.close()
