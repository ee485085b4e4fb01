"""Crash ordering (fs/core/files.py FileState.flush; docs/FORMAT.md section 9):

a size change touches two chunks (the old and the new final one). Grow = new chunks,
then the old final chunk resealed, then the header; shrink = header, then the new final
chunk, then truncate. A crash at any step must leave the file readable at its old or its
new size with the right content, never failing with an IntegrityError.

We record every backend write of a real flush (one step per chunk piece, before the
backend coalesces them), then rebuild the backend file as it would be after a crash at
each step and open it with a fresh volume.

Two tearing models, as Backend.untearable declares them: "page" (local files: a killed
writer's write stops at a page boundary) and "message" (SMB: a write() up to one
request's size lands whole, a larger one in request-sized pieces). The writer makes
different choices under each (it splits the old final chunk's slot, or journals, only
where a write can tear), so every scenario runs under both.

Directories (section 9.2): mkdir, rmdir and rename of a directory are recorded call by
call, and the store after every prefix of the calls must open with the directory under
its old or its new name, show no leftover, and be made clean by fsck --repair.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from dataclasses import dataclass, field

import pytest

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.constants import CHUNK_OVERHEAD, JOURNAL_DIR
from sealfs.crypto.format.header import HEADER_SIZE, read_header_public
from sealfs.crypto.format.layout import final_index, slot_offset, stored_size
from sealfs.crypto.keys.kms import KeySecrets
from sealfs.fs.core.journal import journal_path
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume

CS = 4096


PAGE = 4096
JOURNAL = "journal"
TARGET = "target"


class Recorder(LocalBackend):
    """A local backend that logs every mutation of one backend file and of the write
    journal (fs/core/journal.py), in issue order."""

    def __init__(self, root, target: str) -> None:
        super().__init__(root)
        self.target = target
        self.ops: list[tuple] = []

    def _which(self, path: str) -> str | None:
        if path == self.target:
            return TARGET
        if path.startswith(JOURNAL_DIR + "/"):
            return JOURNAL
        return None

    async def open(self, path, *, write=False, create=False, exclusive=False):
        if create and self._which(path) == JOURNAL:
            self.ops.append(("create", JOURNAL))
        return await super().open(path, write=write, create=create, exclusive=exclusive)

    async def write(self, handle, offset, data):
        which = self._which(handle.path)
        if which:
            self.ops.append(("write", which, offset, bytes(data)))
        await super().write(handle, offset, data)

    async def write_many(self, handle, writes):
        which = self._which(handle.path)
        if which:
            # one step per piece: the backend may coalesce them, a crash may not
            self.ops.append(("group", which, [(off, bytes(d)) for off, d in writes]))
        await super().write_many(handle, writes)

    async def truncate(self, handle, size):
        which = self._which(handle.path)
        if which:
            self.ops.append(("truncate", which, size))
        await super().truncate(handle, size)

    async def unlink(self, path):
        if self._which(path) == JOURNAL:
            self.ops.append(("unlink", JOURNAL))
        await super().unlink(path)


class MessageRecorder(Recorder):
    """The same, for a backend whose write() of up to MESSAGE bytes goes as one request
    and lands whole (SMB); the volume above plans its writes for that."""

    def untearable(self, start: int, end: int) -> bool:
        return 0 < end - start <= MESSAGE


MESSAGE = 3000          # less than a sealed chunk, more than a small file: both cases
RECORDERS = {"page": Recorder, "message": MessageRecorder}

Files = dict[str, bytearray | None]


def apply(files: Files, op) -> None:
    kind, which = op[0], op[1]
    if kind == "create":
        if files.get(which) is None:
            files[which] = bytearray()
        return
    if kind == "unlink":
        files[which] = None
        return
    raw = files[which]
    assert raw is not None, f"{kind} on a missing {which}"
    if kind == "write":
        off, data = op[2], op[3]
        if len(raw) < off:
            raw.extend(bytes(off - len(raw)))
        raw[off:off + len(data)] = data
    elif kind == "truncate":
        del raw[op[2]:]
        raw.extend(bytes(max(0, op[2] - len(raw))))
    else:
        raise AssertionError(kind)


def _put(raw: bytearray, off: int, data: bytes) -> None:
    apply({TARGET: raw}, ("write", TARGET, off, data))


def tears(op, model: str = "page") -> list[tuple]:
    """A write cut short where it can be (Linux stops a large write between pages when
    the writer is killed; SMB sends a write() in MESSAGE-sized requests from its start):
    the prefixes that can land alone. Pipelined chunk pieces (write_many) are coalesced
    into requests at offsets of the backend's choosing: they tear at pages either way."""
    if op[0] != "write":
        return []
    which, off, data = op[1], op[2], op[3]
    if model == "message" and op[-1] != "piece":
        cuts = range(off + MESSAGE, off + len(data), MESSAGE)
    else:
        cuts = range((off // PAGE + 1) * PAGE, off + len(data), PAGE)
    return [("write", which, off, data[:p - off]) for p in cuts]


def _copy(files: Files) -> Files:
    return {k: (bytearray(v) if v is not None else None) for k, v in files.items()}


def _freeze(files: Files) -> dict[str, bytes | None]:
    return {k: (bytes(v) if v is not None else None) for k, v in files.items()}


def crash_states(before: bytes, ops: list[tuple], subsets: bool = True,
                 model: str = "page") -> list[tuple[str, dict]]:
    """Every (backend file, journal) content a crash can leave: after each step, inside
    each write (torn at a page boundary), and for groups of pipelined chunk writes (which
    may land in any order) after any subset of the group."""
    steps: list[list[tuple]] = []
    for op in ops:
        if op[0] == "group":
            steps.append([("write", op[1], off, data, "piece") for off, data in op[2]])
        else:
            steps.append([op])
    states = []
    files: Files = {TARGET: bytearray(before), JOURNAL: None}
    states.append(("before any write", _freeze(files)))
    for n, step in enumerate(steps):
        if len(step) > 1 and subsets and len(step) <= 8:
            for r in range(1, len(step)):
                for combo in itertools.combinations(range(len(step)), r):
                    partial = _copy(files)
                    for k in combo:
                        apply(partial, step[k])
                    states.append((f"step {n}: pieces {combo} of {len(step)}", _freeze(partial)))
        for k, piece in enumerate(step):
            for t, torn in enumerate(tears(piece, model)):
                partial = _copy(files)
                apply(partial, torn)
                states.append((f"step {n} piece {k} torn at cut {t + 1}", _freeze(partial)))
            apply(files, piece)
            states.append((f"step {n} piece {k}", _freeze(files)))
    return states


@dataclass
class Scenario:
    name: str
    old: bytes
    ops: list = field(default_factory=list)      # ("write", off, data) | ("truncate", size)
    # in-place rewrites of several chunks may land chunk by chunk (no fsync was asked for)
    chunkwise: bool = False


def _model(old: bytes, ops) -> bytes:
    m = bytearray(old)
    for op in ops:
        if op[0] == "write":
            _, off, data = op
            if len(m) < off:
                m.extend(bytes(off - len(m)))
            m[off:off + len(data)] = data
        else:
            size = op[1]
            del m[size:]
            m.extend(bytes(size - len(m)))
    return bytes(m)


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# The old final chunk of 3 * CS + 4000 bytes crosses a page boundary of the backend file.
SPANNING = 3 * CS + 4000

SCENARIOS = [
    Scenario("grow within chunk 0", _rand(100, 1), [("write", 100, _rand(100, 2))]),
    Scenario("grow within a later chunk", _rand(2 * CS + 100, 3), [("write", 2 * CS + 100, _rand(50, 4))]),
    Scenario("grow across chunks", _rand(CS + 100, 5), [("write", CS + 100, _rand(3 * CS, 6))]),
    Scenario("grow from a full final chunk", _rand(2 * CS, 7), [("write", 2 * CS, _rand(CS + 1, 8))]),
    Scenario("grow from empty", b"", [("write", 0, _rand(3 * CS + 7, 9))]),
    Scenario("sparse grow by truncate", _rand(100, 10), [("truncate", 10 * CS + 1)]),
    Scenario("sparse write far past EOF", _rand(CS + 5, 11), [("write", 7 * CS + 3, b"tail")]),
    Scenario("shrink within the final chunk", _rand(3 * CS + 200, 12), [("truncate", 3 * CS + 10)]),
    Scenario("shrink across chunks", _rand(4 * CS + 50, 13), [("truncate", CS + 100)]),
    Scenario("shrink to a chunk boundary", _rand(4 * CS, 14), [("truncate", 2 * CS)]),
    Scenario("shrink to a boundary from mid-chunk", _rand(4 * CS + 9, 15), [("truncate", CS)]),
    Scenario("shrink to empty", _rand(3 * CS + 1, 16), [("truncate", 0)]),
    Scenario("shrink then grow in one flush", _rand(4 * CS + 50, 17),
             [("truncate", CS + 3), ("write", 6 * CS, _rand(100, 18))]),
    Scenario("grow from a final chunk that spans a page", _rand(SPANNING, 19),
             [("write", SPANNING, _rand(5000, 20))]),
    Scenario("grow within a final chunk that spans a page", _rand(SPANNING - 100, 21),
             [("write", SPANNING - 100, _rand(60, 22))]),
    Scenario("rewrite a small file (O_TRUNC)", _rand(3000, 23),
             [("truncate", 0), ("write", 0, _rand(3500, 24))]),
    Scenario("overwrite within the first page", _rand(1000, 25), [("write", 10, _rand(20, 26))]),
    Scenario("overwrite a final chunk that spans a page", _rand(SPANNING, 27),
             [("write", 3 * CS + 50, _rand(500, 28))]),
    Scenario("overwrite chunks in place", _rand(5 * CS + 100, 29),
             [("write", CS + 10, _rand(3 * CS, 30))], chunkwise=True),
    Scenario("overwrite in place and grow", _rand(2 * CS + 3000, 31),
             [("write", 100, _rand(CS, 32)), ("write", 2 * CS + 3000, _rand(2 * CS, 33))],
             chunkwise=True),
]


def _chunkwise(got: bytes, old: bytes, new: bytes) -> bool:
    """Each chunk of got is that chunk of old or of new, at one of their sizes."""
    if len(got) not in (len(old), len(new)):
        return False
    for i in range(0, max(len(got), 1), CS):
        piece = got[i:i + CS]
        if piece != old[i:i + CS][:len(piece)] and piece != new[i:i + CS][:len(piece)]:
            return False
    return True


def _install(store, bpath: str, journal: str, state: dict) -> None:
    (store / bpath).write_bytes(state[TARGET])
    jpath = store / journal
    if state[JOURNAL] is None:
        jpath.unlink(missing_ok=True)
    else:
        jpath.parent.mkdir(exist_ok=True)
        jpath.write_bytes(state[JOURNAL])


async def _bpath(vol: Volume, path: str) -> str:
    _p, _n, bpath, _l = await vol.paths.entry(path)
    return bpath


async def _run_scenario(sc: Scenario, make_volume, keyfile, model: str = "page"):
    store = await make_volume(CS)
    secrets = KeySecrets(keyfile=keyfile)
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    await vol.write_file("f", sc.old)
    bpath = await _bpath(vol, "f")
    await vol.close()
    before = (store / bpath).read_bytes()
    assert len(before) == stored_size(len(sc.old), CS)
    journal = journal_path(read_header_public(before)[1])

    rec = RECORDERS[model](store, bpath)
    vol = await Volume.load(rec, secrets, pins=PinStore())
    f = await vol.open("f", write=True)
    for op in sc.ops:
        if op[0] == "write":
            await f.write(op[1], op[2])
        else:
            await f.truncate(op[1])
    await f.close()                             # one write-back of everything
    await vol.close()
    new = _model(sc.old, sc.ops)
    after = (store / bpath).read_bytes()
    assert len(after) == stored_size(len(new), CS)
    assert rec.ops, "the flush wrote nothing"
    assert not (store / journal).exists(), "the journal outlived the last close"

    acceptable = {sc.old: "old", new: "new"}
    for k in range(1, len(sc.ops)):
        acceptable.setdefault(_model(sc.old, sc.ops[:k]), f"after op {k}")
    states = crash_states(before, rec.ops, model=model)
    assert states[-1][1][TARGET] == after, "replaying the recorded writes does not give the final file"
    seen = set()
    for label, state in states:
        _install(store, bpath, journal, state)
        vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
        try:
            size = (await vol.stat("f")).size
            got = await vol.read_file("f")
        except Exception as exc:                # noqa: BLE001 - report which crash state failed
            raise AssertionError(f"{sc.name}: crash at {label}: {type(exc).__name__}: {exc}") from None
        finally:
            await vol.close()
        if got not in acceptable:
            assert sc.chunkwise and _chunkwise(got, sc.old, new), \
                f"{sc.name}: crash at {label}: wrong content (size {len(got)})"
        assert size == len(got), f"{sc.name}: crash at {label}: stat size {size} != {len(got)}"
        seen.add(acceptable.get(got, "chunkwise"))
        assert not (store / journal).exists(), f"{sc.name}: crash at {label}: journal left after recovery"
        # the next writer repairs the file (cuts an uncommitted tail, fixes the header)
        # and keeps the content it resolved
        vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
        try:
            g = await vol.open("f", write=True)
            await g.close()
            assert (store / bpath).stat().st_size == stored_size(len(got), CS), \
                f"{sc.name}: crash at {label}: the next writer left an uncommitted tail"
            assert await vol.read_file("f") == got
        finally:
            await vol.close()
    assert {"old", "new"} <= seen, f"{sc.name}: crash states never showed {({'old', 'new'} - seen)}"
    return rec.ops


@pytest.mark.parametrize("model", sorted(RECORDERS))
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_a_crash_at_any_step_of_a_resize_leaves_the_old_or_the_new_file(sc, model, make_volume, keyfile):
    await _run_scenario(sc, make_volume, keyfile, model)


async def _make_file(make_volume, keyfile, content: bytes):
    store = await make_volume(CS)
    secrets = KeySecrets(keyfile=keyfile)
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    await vol.write_file("f", content)
    bpath = await _bpath(vol, "f")
    state_key = None
    await vol.close()
    return store, secrets, store / bpath, state_key


async def _cipher_for(vol: Volume, path: str):
    """The real chunk cipher of a file, for building crash states by hand."""
    from sealfs.crypto.format.chunks import ChunkCipher
    from sealfs.crypto.format.header import read_header_public
    from sealfs.crypto.format.kdf import file_key
    bpath = await _bpath(vol, path)
    raw = (vol.backend.root / bpath).read_bytes()
    dek_id, file_id = read_header_public(raw)
    return ChunkCipher(file_key(await vol.broker.dek(dek_id), file_id), file_id)


async def test_handmade_grow_states_with_the_real_cipher_resolve_to_old_or_new(make_volume, keyfile):
    """Grow 1.5 chunks -> 4.25 chunks, writing the chunk slots one at a time by hand."""
    old = _rand(CS + CS // 2, 30)
    new = old + _rand(4 * CS + CS // 4 - len(old), 31)
    store, secrets, target, _ = await _make_file(make_volume, keyfile, old)
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    cipher = await _cipher_for(vol, "f")
    base = bytearray(target.read_bytes())
    old_final, new_final = final_index(len(old), CS), final_index(len(new), CS)
    sealed = {i: cipher.seal(i, new[i * CS:(i + 1) * CS], i == new_final)
              for i in range(old_final, new_final + 1)}
    # new chunks (not the old final one), in every order and subset
    later = [i for i in sealed if i != old_final]
    for r in range(len(later) + 1):
        for subset in itertools.combinations(later, r):
            raw = bytearray(base)
            for i in subset:
                _put(raw, slot_offset(i, CS), sealed[i])
            target.write_bytes(raw)
            vol.cache.clear()
            vol.headers.forget_names()
            assert await vol.read_file("f") == old, subset
            assert (await vol.stat("f")).size == len(old)
    # all new chunks + the old final chunk resealed, header still stale: the new file
    raw = bytearray(base)
    for i in later + [old_final]:
        _put(raw, slot_offset(i, CS), sealed[i])
    target.write_bytes(raw)
    vol.cache.clear()
    vol.headers.forget_names()
    assert raw[:HEADER_SIZE] == base[:HEADER_SIZE]
    assert await vol.read_file("f") == new
    assert (await vol.stat("f")).size == len(new)
    await vol.close()


async def test_an_uncommitted_tail_after_a_valid_final_chunk_is_ignored_and_cut_by_the_next_writer(
        make_volume, keyfile):
    content = _rand(2 * CS + 10, 40)
    store, secrets, target, _ = await _make_file(make_volume, keyfile, content)
    committed = target.read_bytes()
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    cipher = await _cipher_for(vol, "f")
    await vol.close()
    # a tail of chunks sealed with the real key (an interrupted grow) plus garbage
    tail = cipher.seal(3, _rand(CS, 41), False) + cipher.seal(4, b"x" * 7, True) + os.urandom(33)
    with open(target, "ab") as fh:
        fh.seek(slot_offset(3, CS))
        fh.write(tail)
    grown = target.read_bytes()
    assert len(grown) > len(committed)

    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    assert (await vol.stat("f")).size == len(content)
    assert await vol.read_file("f") == content
    assert [n for n, _ in await vol.listdir("")] == ["f"]
    await vol.close()
    assert target.read_bytes() == grown, "a reader modified the backend file"

    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    f = await vol.open("f", write=True)
    assert await f.read(0, 10 * CS) == content
    await f.close()
    await vol.close()
    assert target.stat().st_size == stored_size(len(content), CS)
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    assert await vol.read_file("f") == content
    f = await vol.open("f", write=True)
    await f.write(len(content), b"more")
    await f.close()
    assert await vol.read_file("f") == content + b"more"
    await vol.close()


async def test_an_interrupted_shrink_reads_at_the_new_size_and_the_next_writer_cuts_the_tail(
        make_volume, keyfile):
    content = _rand(3 * CS + 100, 50)
    store, secrets, target, _ = await _make_file(make_volume, keyfile, content)
    old_raw = target.read_bytes()
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    f = await vol.open("f", write=True)
    await f.truncate(CS + 1)
    await f.close()
    await vol.close()
    shrunk = target.read_bytes()
    assert len(shrunk) == stored_size(CS + 1, CS)
    # crash state: header (new size) and new final chunk written, truncate not yet done
    interrupted = shrunk + old_raw[len(shrunk):]
    target.write_bytes(interrupted)
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    assert (await vol.stat("f")).size == CS + 1
    assert await vol.read_file("f") == content[:CS + 1]
    await vol.close()
    assert target.read_bytes() == interrupted, "a reader modified the backend file"
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    f = await vol.open("f", write=True)
    await f.close()
    await vol.close()
    # the tail is cut; the chunks are the shrunk file's (the header may be resealed)
    assert target.read_bytes()[HEADER_SIZE:] == shrunk[HEADER_SIZE:]
    # crash state: only the header was written: the old file is still whole
    target.write_bytes(shrunk[:HEADER_SIZE] + old_raw[HEADER_SIZE:])
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    assert await vol.read_file("f") == content
    f = await vol.open("f", write=True)
    await f.close()
    assert await vol.read_file("f") == content
    await vol.close()
    assert target.stat().st_size == stored_size(len(content), CS)


async def test_a_reader_and_a_writer_share_a_file_with_a_pending_repair(make_volume, keyfile):
    content = _rand(CS + 10, 60)
    store, secrets, target, _ = await _make_file(make_volume, keyfile, content)
    with open(target, "ab") as fh:
        fh.write(os.urandom(100))
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    reader = await vol.open("f")
    assert await reader.read(0, 2 * CS) == content
    writer = await vol.open("f", write=True)
    await writer.write(len(content), b"!")
    await writer.close()                   # the writer's first flush cut the tail
    assert target.stat().st_size == stored_size(len(content) + 1, CS)
    assert await reader.read(0, 2 * CS) == content + b"!"
    await reader.close()
    await vol.close()
    vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
    assert await vol.read_file("f") == content + b"!"
    await vol.close()


def test_slot_layout_is_contiguous():
    assert slot_offset(1, CS) - slot_offset(0, CS) == CS + CHUNK_OVERHEAD
    assert slot_offset(0, CS) == HEADER_SIZE


# -- directories: mkdir, rmdir, rename (docs/FORMAT.md section 9.2) ----------------------
#
# A directory operation is a short sequence of namespace calls (mkdir, rename, rmdir,
# unlink) and small writes (its record, a long name's sidecar), each of which lands whole
# or not at all. So the crash states are the store as it is after every prefix of the
# calls: a recording backend snapshots the whole (small) store after each mutating call,
# and every snapshot is opened by a fresh volume and checked, then repaired by fsck.

LONG_A = "long-name-" * 20            # 200 bytes: long-name entries with sidecars
LONG_B = "other-long-" * 20


def _store_files(root) -> dict[str, bytes | None]:
    """Every entry of a store: a directory as None, a file as its bytes."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel, name))] = None
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, name))] = fh.read()
    return out


def _install_store(root, files: dict[str, bytes | None]) -> None:
    shutil.rmtree(root, ignore_errors=True)
    os.mkdir(root)
    for rel in sorted(files, key=lambda p: p.count("/")):
        if files[rel] is None:
            os.mkdir(os.path.join(root, rel))
    for rel, data in files.items():
        if data is not None:
            with open(os.path.join(root, rel), "wb") as fh:
                fh.write(data)


class SnapshotRecorder(LocalBackend):
    """A local backend that keeps the whole store's content after every call that changes
    it, in issue order (times are left out: no reader derives anything from them)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.store_root = root
        self.states: list[tuple[str, dict]] = [("before any call", _store_files(root))]

    def _took(self, what: str) -> None:
        self.states.append((f"after call {len(self.states)}: {what}", _store_files(self.store_root)))

    async def open(self, path, *, write=False, create=False, exclusive=False):
        handle = await super().open(path, write=write, create=create, exclusive=exclusive)
        if create:
            self._took(f"create {path}")
        return handle

    async def write(self, handle, offset, data):
        await super().write(handle, offset, data)
        self._took(f"write {handle.path}")

    async def write_many(self, handle, writes):
        await super().write_many(handle, writes)
        self._took(f"write_many {handle.path}")

    async def truncate(self, handle, size):
        await super().truncate(handle, size)
        self._took(f"truncate {handle.path}")

    async def mkdir(self, path):
        await super().mkdir(path)
        self._took(f"mkdir {path}")

    async def rmdir(self, path):
        await super().rmdir(path)
        self._took(f"rmdir {path}")

    async def unlink(self, path):
        await super().unlink(path)
        self._took(f"unlink {path}")

    async def rename(self, src, dst, *, replace=True):
        await super().rename(src, dst, replace=replace)
        self._took(f"rename {src} -> {dst}")

    async def link(self, src, dst):
        await super().link(src, dst)
        self._took(f"link {src} -> {dst}")


async def _dir_setup(vol: Volume) -> None:
    """/a holds a file and a subdirectory with a file; /b holds empty directories, one
    under a long name."""
    await vol.mkdir("/a")
    await vol.write_file("/a/f", b"in a")
    await vol.mkdir("/a/sub")
    await vol.write_file("/a/sub/g", b"in a/sub")
    await vol.mkdir("/b")
    await vol.mkdir("/b/victim")
    await vol.mkdir(f"/b/{LONG_A}")
    await vol.write_file("/b/h", b"in b")


async def _plant_leftover_in(vol: Volume, path: str) -> None:
    """What an interrupted create left in a directory: rmdir must still succeed."""
    storage = (await vol.paths.directory([p for p in path.split("/") if p])).storage
    h = await vol.backend.open(f"{storage}/sealfs.tmp.0011223344556677", write=True,
                               create=True, exclusive=True)
    await vol.backend.write(h, 0, b"half a file")
    await vol.backend.close(h)


@dataclass
class DirScenario:
    name: str
    op: tuple                                  # ("mkdir", path) | ("rmdir", path) | ("rename", src, dst)
    before: object = None                       # async (vol) -> None, run before recording
    # visible trees a crash may also leave besides the old and the new one, as changes of
    # the old one: paths gone
    also_without: tuple[str, ...] = ()
    # whether some crash state leaves leftovers (a plain rename is one backend call)
    leaves_leftovers: bool = True


DIR_SCENARIOS = [
    DirScenario("mkdir", ("mkdir", "/a/new")),
    DirScenario("mkdir under a long name", ("mkdir", f"/b/{LONG_B}")),
    DirScenario("mkdir in the root", ("mkdir", "/top")),
    DirScenario("rmdir", ("rmdir", "/b/victim")),
    DirScenario("rmdir of a long name", ("rmdir", f"/b/{LONG_A}")),
    DirScenario("rmdir of a directory holding a leftover", ("rmdir", "/b/victim"),
                before=lambda vol: _plant_leftover_in(vol, "/b/victim")),
    DirScenario("rename in its directory", ("rename", "/a", "/a2"), leaves_leftovers=False),
    DirScenario("rename to another directory", ("rename", "/a/sub", "/b/moved"),
                leaves_leftovers=False),
    DirScenario("rename to a long name", ("rename", "/a", f"/b/{LONG_B}")),
    DirScenario("rename from a long name", ("rename", f"/b/{LONG_A}", "/a/short")),
    DirScenario("rename over an empty directory", ("rename", "/a/sub", "/b/victim"),
                also_without=("b/victim",)),
    DirScenario("rename over an empty long-named directory", ("rename", "/a", f"/b/{LONG_A}"),
                also_without=(f"b/{LONG_A}",)),
]


async def _visible(vol: Volume) -> dict[str, tuple]:
    """The tree a reader sees: kind, mode and content of every path; damage fails."""
    listing = await vol.walk("")
    assert not listing.problems, [f"{p.bpath}: {p.reason}" for p in listing.problems]
    tree: dict[str, tuple] = {}
    for path, attr in listing:
        assert path not in tree, f"{path} listed twice"
        tree[path] = ("dir", attr.mode) if attr.is_dir else \
            ("file", attr.mode, await vol.read_file(path))
    return tree


def _storages(root) -> set[str]:
    d = os.path.join(root, "d")
    return {f"{a}/{b}" for a in os.listdir(d) for b in os.listdir(os.path.join(d, a))}


async def _load(root, secrets) -> Volume:
    return await Volume.load(LocalBackend(root), secrets, pins=PinStore())


@pytest.mark.parametrize("sc", DIR_SCENARIOS, ids=[s.name for s in DIR_SCENARIOS])
async def test_a_crash_at_any_step_of_mkdir_rmdir_or_rename_of_a_directory(sc, make_volume,
                                                                           keyfile, tmp_path):
    from sealfs.fs.tools.fsck import fsck_volume
    store = await make_volume(CS)
    secrets = KeySecrets(keyfile=keyfile)
    vol = await _load(store, secrets)
    await _dir_setup(vol)
    if sc.before is not None:
        await sc.before(vol)
    old = await _visible(vol)
    await vol.close()

    rec = SnapshotRecorder(store)
    vol = await Volume.load(rec, secrets, pins=PinStore())
    await getattr(vol, sc.op[0])(*sc.op[1:])
    await vol.close()
    states = rec.states
    vol = await _load(store, secrets)
    new = await _visible(vol)
    await vol.close()
    assert new != old and len(states) > 2, "the operation changed nothing"

    acceptable = {"old": old, "new": new}
    for gone in sc.also_without:
        acceptable[f"old without {gone}"] = {p: v for p, v in old.items() if p != gone}
    seen: set[str] = set()
    repairs: list[str] = []
    crashed = tmp_path / "crashed"
    for label, files in states:
        where = f"{sc.name}: crash {label}"
        _install_store(crashed, files)
        vol = await _load(crashed, secrets)
        try:
            tree = await _visible(vol)
        except Exception as exc:                 # noqa: BLE001 - say which crash state failed
            raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from None
        finally:
            await vol.close()
        matches = [name for name, want in acceptable.items() if tree == want]
        assert matches, f"{where}: the tree is neither the old nor the new one: " \
                        f"{sorted(set(tree) ^ set(old))} / {sorted(set(tree) ^ set(new))}"
        seen.add(matches[0])

        lines: list[str] = []
        vol = await _load(crashed, secrets)
        try:
            first = await fsck_volume(vol, repair=False, out=lines.append)
            assert all(p.endswith("(fsck --repair fixes it)") for p in first.problems), \
                f"{where}: {first.problems}"
            result = await fsck_volume(vol, repair=True, out=lines.append)
            assert result.clean, f"{where}: {result.problems}"
            repairs.extend(result.repaired)
        finally:
            await vol.close()
        vol = await _load(crashed, secrets)
        try:
            again = await fsck_volume(vol, repair=False, out=lines.append)
            assert again.clean and not again.repaired, f"{where}: after --repair: {again.problems}"
            assert await _visible(vol) == tree, f"{where}: fsck --repair changed the tree"
        finally:
            await vol.close()
        left = [p for p in _store_files(crashed) if "sealfs.tmp." in p or "sealfs.del." in p]
        assert not left, f"{where}: left after --repair: {left}"
        dirs = 1 + sum(1 for v in tree.values() if v[0] == "dir")
        assert len(_storages(crashed)) == dirs, \
            f"{where}: {len(_storages(crashed))} storages for {dirs} directories after --repair"

        # unrepaired, the leftovers block nothing: the whole tree can be removed
        _install_store(crashed, files)
        vol = await _load(crashed, secrets)
        try:
            for path in sorted(tree, key=lambda p: -p.count("/")):
                await (vol.rmdir if tree[path][0] == "dir" else vol.unlink)(path)
            assert await vol.listdir("") == [], where
            assert (await fsck_volume(vol, repair=True, out=lines.append)).clean, where
        except OSError as exc:
            raise AssertionError(f"{where}: removing the tree: {exc}") from None
        finally:
            await vol.close()
        assert len(_storages(crashed)) == 1, f"{where}: storages left: {_storages(crashed)}"
    assert {"old", "new"} <= seen, f"{sc.name}: crash states never showed {({'old', 'new'} - seen)}"
    assert bool(repairs) == sc.leaves_leftovers, f"{sc.name}: repairs: {repairs}"
