"""SmbBackend against a real smbd: every Backend method, with local-filesystem errnos."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sealfs.backends.base import Backend, BackendError
from sealfs.backends.local import LocalBackend
from sealfs.backends.smb import SmbBackend, SmbTarget
from tests.servers.samba import SmbStore

MiB = 1024 * 1024


async def test_every_method_round_trips(smb_backend: SmbBackend, smb_store: SmbStore) -> None:
    b = smb_backend
    h = await b.open("f", write=True, create=True, exclusive=True)
    await b.write(h, 0, b"hello world")
    await b.write_many(h, [(11, b"!"), (100, memoryview(b"tail"))])
    assert await b.read(h, 0, 12) == b"hello world!"
    assert await b.read(h, 12, 88) == b"\0" * 88             # the gap reads as zeros
    assert await b.read(h, 100, 50) == b"tail"               # short only at end of file
    assert await b.read(h, 500, 10) == b""
    assert await b.read_many(h, [(0, 5), (6, 5), (102, 10)]) == [b"hello", b"world", b"il"]
    st = await b.fstat(h)
    assert (st.size, st.is_dir, st.nlink) == (104, False, 1) and st.ino
    await b.truncate(h, 5)
    await b.flush(h)
    assert (await b.fstat(h)).size == 5
    await b.close(h)
    await b.close(h)  # closing twice is harmless
    assert (smb_store.local / "f").read_bytes() == b"hello"

    h = await b.open("f")
    assert await b.read(h, 0, 100) == b"hello"
    await b.close(h)

    await b.mkdir("d")
    await b.mkdir("d/e")
    assert sorted(await b.listdir("")) == ["d", "f"]
    entries = dict(await b.scandir(""))
    assert entries["d"].is_dir and not entries["f"].is_dir and entries["f"].size == 5
    assert entries["f"].ino == (await b.stat("f")).ino

    await b.rename("f", "d/g")
    assert sorted(await b.listdir("d")) == ["e", "g"]
    await b.link("d/g", "h")
    assert (await b.stat("h")).nlink == 2
    assert os.stat(smb_store.local / "h").st_ino == os.stat(smb_store.local / "d" / "g").st_ino

    await b.set_times("h", 1_000_000_000_123_456_700, 1_500_000_000_987_654_300)
    st = await b.stat("h")
    assert (st.atime_ns, st.mtime_ns) == (1_000_000_000_123_456_700, 1_500_000_000_987_654_300)
    assert os.stat(smb_store.local / "h").st_mtime_ns == 1_500_000_000_987_654_300

    await b.unlink("h")
    await b.unlink("d/g")
    await b.rmdir("d/e")
    await b.rmdir("d")
    assert await b.listdir("") == []
    assert (await b.stat("")).is_dir

    vfs = await b.statvfs()
    local = os.statvfs(smb_store.local)
    assert vfs.max_name_length == 255
    assert abs(vfs.block_size * vfs.blocks - local.f_frsize * local.f_blocks) <= 0.01 * local.f_frsize * local.f_blocks


async def test_capabilities_declare_smb_semantics(smb_backend: SmbBackend, smb_store: SmbStore) -> None:
    caps = smb_backend.capabilities
    assert caps.case_insensitive and caps.max_name_length == 255
    assert caps.hard_links and not caps.unlink_open_files
    # The share really is case-insensitive: the volume's lowercase base32 names rely on it.
    h = await smb_backend.open("abc", write=True, create=True)
    await smb_backend.write(h, 0, b"x")
    await smb_backend.close(h)
    assert (await smb_backend.stat("ABC")).size == 1


async def test_large_io_is_split_and_pipelined(smb_backend: SmbBackend) -> None:
    data = os.urandom(9 * MiB + 12345)
    h = await smb_backend.open("big", write=True, create=True)
    await smb_backend.write(h, 0, data)
    await smb_backend.write_many(h, [(20 * MiB + i * 64 * 1024, data[:64 * 1024]) for i in range(40)])
    assert await smb_backend.read(h, 0, len(data)) == data
    got = await smb_backend.read_many(h, [(0, 3 * MiB), (3 * MiB, 6 * MiB + 12345), (20 * MiB, 64 * 1024)])
    assert b"".join(got[:2]) == data and got[2] == data[:64 * 1024]
    # A read across end of file returns what is there and no more.
    end = 20 * MiB + 40 * 64 * 1024
    assert len(await smb_backend.read(h, end - 100, 5 * MiB)) == 100
    assert (await smb_backend.fstat(h)).size == end
    await smb_backend.close(h)


# -- the same scenario on LocalBackend and SmbBackend must end the same way ---------------------
Step = Callable[[Backend], Awaitable[Any]]


async def _put(b: Backend, path: str, data: bytes = b"x") -> None:
    h = await b.open(path, write=True, create=True)
    await b.write(h, 0, data)
    await b.close(h)


async def _setup(b: Backend) -> None:
    await _put(b, "file")
    await _put(b, "file2", b"22")
    await b.mkdir("dir")
    await b.mkdir("full")
    await _put(b, "full/inner")
    await b.mkdir("empty")


async def _read_all(b: Backend, path: str) -> bytes:
    h = await b.open(path)
    try:
        return await b.read(h, 0, 1 << 20)
    finally:
        await b.close(h)


SCENARIOS: dict[str, Step] = {
    "open missing": lambda b: b.open("missing"),
    "open in missing dir": lambda b: b.open("nodir/x", write=True, create=True),
    "open under a file": lambda b: b.open("file/x", write=True, create=True),
    "open dir for write": lambda b: b.open("dir", write=True),
    "create exclusive existing": lambda b: b.open("file", write=True, create=True, exclusive=True),
    "stat missing": lambda b: b.stat("missing"),
    "stat under a file": lambda b: b.stat("file/x"),
    "listdir missing": lambda b: b.listdir("missing"),
    "listdir a file": lambda b: b.listdir("file"),
    "mkdir existing dir": lambda b: b.mkdir("dir"),
    "mkdir existing file": lambda b: b.mkdir("file"),
    "mkdir in missing dir": lambda b: b.mkdir("nodir/x"),
    "rmdir missing": lambda b: b.rmdir("missing"),
    "rmdir a file": lambda b: b.rmdir("file"),
    "rmdir non-empty": lambda b: b.rmdir("full"),
    "unlink missing": lambda b: b.unlink("missing"),
    "unlink a dir": lambda b: b.unlink("dir"),
    "rename missing": lambda b: b.rename("missing", "x"),
    "rename noreplace onto file": lambda b: b.rename("file", "file2", replace=False),
    "rename replace onto file": lambda b: b.rename("file", "file2"),
    "rename file onto dir": lambda b: b.rename("file", "dir"),
    "rename dir onto non-empty dir": lambda b: b.rename("dir", "full"),
    "rename dir onto empty dir": lambda b: b.rename("dir", "empty"),
    "rename into missing dir": lambda b: b.rename("file", "nodir/x"),
    "link onto existing": lambda b: b.link("file", "file2"),
    "link missing": lambda b: b.link("missing", "x"),
    "link a dir": lambda b: b.link("dir", "x"),
    "set_times missing": lambda b: b.set_times("missing", 0, 0),
}


def _outcome(exc: BaseException | None) -> tuple[str, int | None]:
    if exc is None:
        return ("ok", None)
    assert isinstance(exc, OSError) and not isinstance(exc, BackendError), repr(exc)
    return (type(exc).__name__, exc.errno)


async def _tree(b: Backend, path: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(await b.listdir(path)):
        child = f"{path}/{name}" if path else name
        st = await b.stat(child)
        out[name] = await _tree(b, child) if st.is_dir else await _read_all(b, child)
    return out


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_errors_and_effects_mirror_local(scenario: str, smb_backend: SmbBackend, tmp_path: Path) -> None:
    local = LocalBackend(tmp_path)
    results = []
    for b in (local, smb_backend):
        await _setup(b)
        try:
            res = await SCENARIOS[scenario](b)
            if hasattr(res, "path"):
                await b.close(res)
            results.append((_outcome(None), await _tree(b)))
        except OSError as exc:
            results.append((_outcome(exc), await _tree(b)))
    assert results[1] == results[0]


async def test_closed_handle_cache_never_blocks_namespace_ops(smb_backend: SmbBackend) -> None:
    """A cached (closed) handle keeps the name busy on SMB; unlink/rename must not notice."""
    b = smb_backend
    for _ in range(3):
        await _put(b, "victim", b"old")
        assert await _read_all(b, "victim") == b"old"
        await b.unlink("victim")
        h = await b.open("victim", write=True, create=True, exclusive=True)  # no delete-pending leftover
        await b.close(h)
        await b.rename("victim", "moved")
        await b.unlink("moved")
    await b.mkdir("d")
    await _put(b, "d/x")
    await b.rename("d", "e")
    assert await b.listdir("e") == ["x"]


def test_store_url_parsing() -> None:
    t = SmbTarget.parse("smb://acct@acct.file.core.windows.net/share/sub/dir")
    assert (t.host, t.port, t.share, t.path, t.user) == ("acct.file.core.windows.net", 445, "share", "sub/dir", "acct")
    assert SmbBackend(t).capabilities.hard_links is False  # Azure Files: no hard links over SMB
    t = SmbTarget.parse("smb://127.0.0.1:4455/s")
    assert (t.port, t.share, t.path, t.user) == (4455, "s", "", None)
    with pytest.raises(ValueError, match="no password"):
        SmbTarget.parse("smb://u:secret@h/s")
    with pytest.raises(ValueError, match="no share"):
        SmbTarget.parse("smb://h/")


async def test_password_is_fetched_lazily_and_never_logged(smb_store: SmbStore,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    calls = []
    password = smb_store.server.password

    def source() -> str:
        calls.append(1)
        return password

    from sealfs.backends.registry import BackendOptions, open_backend
    backend = open_backend(smb_store.url, BackendOptions(smb_password=source))
    assert calls == []
    caplog.set_level(logging.DEBUG)
    await backend.connect()
    await _put(backend, "x")
    await backend.aclose()
    assert calls == [1]
    assert password not in caplog.text
    assert "negotiated" in caplog.text or "cipher AES-256-GCM" in caplog.text
    argv = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert password not in argv


async def test_wrong_password_is_one_clear_error(smb_store: SmbStore) -> None:
    from sealfs.backends.registry import BackendOptions, open_backend
    backend = open_backend(smb_store.url, BackendOptions(smb_password=lambda: "wrong-password"))
    with pytest.raises(BackendError) as info:
        await backend.connect()
    assert info.value.errno == errno.EACCES and "authentication failed" in str(info.value)
    await backend.aclose()


async def test_small_adjacent_pieces_are_merged_without_changing_results(smb_backend: SmbBackend) -> None:
    chunks = [os.urandom(64 * 1024) for _ in range(40)]
    h = await smb_backend.open("chunks", write=True, create=True)
    await smb_backend.write_many(h, [(i * 64 * 1024, memoryview(c)) for i, c in enumerate(chunks)])
    blob = b"".join(chunks)
    reads = [(5 * 64 * 1024, 64 * 1024), (0, 100), (50, 100), (39 * 64 * 1024, 128 * 1024),
             (len(blob) + 10, 5), (3, 0), (64 * 1024 - 1, 2)]
    got = await smb_backend.read_many(h, reads)
    assert got == [blob[o:o + n] for o, n in reads]
    await smb_backend.close(h)


async def test_a_close_racing_with_unlink_does_not_keep_the_name_delete_pending(
        smb_backend: SmbBackend, smb_store: SmbStore) -> None:
    """A handle closed while unlink is under way must be closed for real: parked in the
    idle-handle cache it would keep the deleted name on the share (delete pending)."""
    import trio

    b = smb_backend
    h = await b.open("victim", write=True, create=True)
    await b.write(h, 0, b"x" * 1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.unlink, "victim")
        await trio.sleep(0)                       # unlink is now waiting on the server
        await b.close(h)                          # e.g. a FUSE release arriving meanwhile
    assert not (smb_store.local / "victim").exists(), "the unlinked name is still on the share"
    with pytest.raises(FileNotFoundError):
        await b.stat("victim")


async def test_read_head_gives_the_first_bytes_and_the_true_link_count(smb_backend: SmbBackend,
                                                                       smb_store: SmbStore) -> None:
    b = smb_backend
    await _put(b, "f", b"0123456789")
    await b.link("f", "g")
    data, st = await b.read_head("g", 4)
    assert data == b"0123" and (st.size, st.nlink, st.is_dir) == (10, 2, False)
    assert st.ino == (await b.stat("f")).ino
    assert (await b.read_head("f", 100))[0] == b"0123456789"
    # A directory listing has no link count field: it says so instead of guessing 1.
    assert {name: st.nlink for name, st in await b.scandir("")} == {"f": None, "g": None}
    await _put(b, "empty", b"")
    data, st = await b.read_head("empty", 4)          # END_OF_FILE is no error here
    assert (data, st.size, st.nlink) == (b"", 0, 1)
    with pytest.raises(FileNotFoundError):
        await b.read_head("missing", 4)
    # Nothing stays open on the server: an open name would linger delete-pending.
    for name in ("empty", "g", "f"):
        await b.unlink(name)
    assert await b.listdir("") == []


async def test_make_root_creates_the_store_folder_and_its_parents(smb_store: SmbStore) -> None:
    from tests.servers.samba import SmbStore as Store
    deep = Store.__new__(Store)
    deep.server, deep.url = smb_store.server, f"{smb_store.url}/new/deeper"
    backend = deep.backend()
    await backend.connect()
    try:
        await backend.make_root()
        await backend.make_root()                       # an existing folder is fine
        h = await backend.open("f", write=True, create=True)
        await backend.write(h, 0, b"x")
        await backend.close(h)
    finally:
        await backend.aclose()
    assert (smb_store.local / "new" / "deeper" / "f").read_bytes() == b"x"


def test_init_into_a_new_folder_on_the_share(smb_store: SmbStore, keyfile: Path, tmp_path: Path) -> None:
    from tests.mounting import sealfs
    env = dict(os.environ, SEALFS_SMB_PASSWORD=smb_store.server.password,
               SEALFS_STATE_DIR=str(tmp_path / "state"))
    url = f"{smb_store.url}/vols/one"
    sealfs("init", url, "--keyfile", str(keyfile), env=env)
    (tmp_path / "hello").write_bytes(b"hi")
    sealfs("put", url, str(tmp_path / "hello"), "/hello", "--keyfile", str(keyfile), env=env)
    assert sealfs("cat", url, "/hello", "--keyfile", str(keyfile), env=env).stdout == b"hi"
    assert (smb_store.local / "vols" / "one" / "sealfs.json").exists()


async def _overlapping_reads(b: SmbBackend, h: Any, data: bytes, piece: int = 2 * MiB) -> None:
    """Several read_many calls on one handle at once, as a reader's read-ahead makes them."""
    import trio

    got: dict[int, bytes] = {}

    async def one(offset: int) -> None:
        got[offset] = (await b.read_many(h, [(offset, piece)]))[0]

    async with trio.open_nursery() as nursery:
        for offset in range(0, len(data), piece):
            nursery.start_soon(one, offset)
    assert b"".join(got[o] for o in sorted(got)) == data


async def test_overlapping_reads_of_one_handle_spread_over_channels(smb_backend: SmbBackend,
                                                                    smb_store: SmbStore) -> None:
    b = smb_backend
    assert len(b._channels) == 2
    data = os.urandom(8 * MiB)
    await _put(b, "f", data)
    h = await b.open("f")
    await _overlapping_reads(b, h, data)
    assert [r.channel for r in h.readers] == [c for c in b._channels if c is not h.channel]
    assert not h.readers[0].writable
    # A single reader at a time stays on the handle's own channel.
    assert await b.read(h, 0, 10) == data[:10]
    # The second handle lives and dies with the first: closed (here: parked in the idle
    # cache, then evicted by unlink) it must not keep the name delete-pending.
    await b.close(h)
    await b.unlink("f")
    assert not (smb_store.local / "f").exists()
    h = await b.open("f", write=True, create=True, exclusive=True)
    await b.close(h)


async def test_reads_on_the_second_channel_follow_renames_and_see_new_writes(smb_backend: SmbBackend) -> None:
    b = smb_backend
    old = os.urandom(8 * MiB)
    await _put(b, "a", old)
    h = await b.open("a", write=True)
    await _overlapping_reads(b, h, old)
    assert h.readers
    await b.rename("a", "b")                   # an open file may be renamed on SMB
    assert [r.path for r in h.readers] == ["b"]
    new = os.urandom(8 * MiB)
    await b.write(h, 0, new)                   # acknowledged: every later read sees it
    await _overlapping_reads(b, h, new)
    await b.close(h)
    await _put(b, "c", b"replacement")
    await b.rename("c", "b")                   # the idle handle and its sibling step aside
    assert await _read_all(b, "b") == b"replacement"


async def test_a_second_reader_is_never_opened_on_another_file_by_the_same_name(
        smb_store: SmbStore) -> None:
    """Another client renamed a different file over our open file's name: the sibling
    open by path would read that file. File ids are compared; the handle reads alone."""
    b = smb_store.backend()
    other = smb_store.backend()
    await b.connect()
    await other.connect()
    try:
        mine = os.urandom(4 * MiB)
        await _put(b, "f", mine)
        h = await b.open("f")
        await _put(other, "g", os.urandom(4 * MiB))
        await other.rename("g", "f")           # our handle still reads the old file
        await _overlapping_reads(b, h, mine, piece=MiB)
        assert h.readers == []
        await b.close(h)
    finally:
        await other.aclose()
        await b.aclose()


async def test_place_new_renames_and_returns_the_stat_as_renamed(smb_backend: SmbBackend,
                                                                  smb_store: SmbStore) -> None:
    b = smb_backend
    h = await b.create_file("tmp.new", b"header")
    st = await b.place_new(h, "tmp.new", "final")
    assert not (smb_store.local / "tmp.new").exists()
    assert (st.size, st.nlink, st.is_dir) == (6, 1, False)
    assert st.ino == os.stat(smb_store.local / "final").st_ino
    assert st == await b.fstat(h)                  # what the round trip it saves would say
    await b.write(h, 6, b"+")                      # the handle follows the rename
    await b.close(h)
    assert (smb_store.local / "final").read_bytes() == b"header+"
    h = await b.create_file("tmp.other", b"x")
    with pytest.raises(FileExistsError):          # never over an existing name
        await b.place_new(h, "tmp.other", "final")
    await b.close(h)
    assert (smb_store.local / "final").read_bytes() == b"header+"
    assert (smb_store.local / "tmp.other").read_bytes() == b"x"


async def test_create_file_writes_the_first_bytes_with_the_create(smb_backend: SmbBackend,
                                                                   smb_store: SmbStore) -> None:
    b = smb_backend
    h = await b.create_file("new", b"header+chunk")
    await b.write(h, 12, b"!")                              # open for writing
    assert await b.read(h, 0, 100) == b"header+chunk!"
    await b.close(h)
    assert (smb_store.local / "new").read_bytes() == b"header+chunk!"
    with pytest.raises(FileExistsError):
        await b.create_file("new", b"other")
    assert (smb_store.local / "new").read_bytes() == b"header+chunk!"
    with pytest.raises(FileNotFoundError):
        await b.create_file("nodir/x", b"x")
    big = os.urandom(3 * MiB)                               # more than one WRITE carries
    h = await b.create_file("big", big)
    await b.close(h)
    assert (smb_store.local / "big").read_bytes() == big


async def test_write_many_gathers_pieces_of_every_kind_into_requests(smb_backend: SmbBackend,
                                                                     smb_store: SmbStore) -> None:
    """WRITEs are sealed from the callers' buffers without joining them: adjacent pieces
    of bytes, bytearray and views (of another item size too) share requests, a gap starts
    a new one, and a piece larger than a request is cut; smbd must get every byte."""
    big = os.urandom(MiB + 4097)                              # more than one 1 MiB request
    words = memoryview(bytearray(os.urandom(4096))).cast("I")  # a view of 4-byte items
    writes = [(0, b"head"), (4, bytearray(b"-adjacent-")), (14, memoryview(big)[:5000]),
              (7000, words), (7000 + 4096, big), (3 * MiB, b"after a gap")]
    expect = bytearray(3 * MiB + 11)
    for offset, data in writes:
        raw = bytes(memoryview(data).cast("B"))
        expect[offset:offset + len(raw)] = raw
    h = await smb_backend.open("gathered", write=True, create=True)
    await smb_backend.write_many(h, writes)
    await smb_backend.close(h)
    assert (smb_store.local / "gathered").read_bytes() == bytes(expect)
