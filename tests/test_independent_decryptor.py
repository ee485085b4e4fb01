"""Volumes written by sealfs (the Volume library and the CLI), read by the independent
decryptor (tests/independent_decryptor.py, written from docs/FORMAT.md alone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sealfs.crypto.format.header import Kind
from sealfs.crypto.format.layout import slot_offset

sys.path.insert(0, str(Path(__file__).parent))
import independent_decryptor as ind

LONG_FILE = "a-rather-long-file-name-" * 6 + ".txt"                 # 148 bytes: long form
LONG_DIR = "Ünïcödé directory with a long name " * 5                # 185 bytes: long form
MAX_NAME = "m" * 255


def blob(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 13) % 256 for i in range(n))


async def build(vol, cs: int) -> dict[str, bytes]:
    """Populate a volume; returns the expected {path: content} of regular files."""
    expected: dict[str, bytes] = {}

    async def put(path: str, data: bytes, mode: int = 0o644) -> None:
        await vol.write_file(path, data, mode)
        expected[path] = data

    await vol.mkdir("a")
    await vol.mkdir("a/b")
    await vol.mkdir("a/b/c", mode=0o700)
    await vol.mkdir(LONG_DIR)
    await vol.mkdir("日本語")
    await put("empty", b"")
    await put("one", b"x")
    await put("a/exact", blob(cs, 1))
    await put("a/b/multi", blob(3 * cs + 17, 2))
    await put("a/b/c/deep.bin", blob(2 * cs - 1, 3), 0o600)
    await put(LONG_FILE, b"long file name\n")
    await put(f"{LONG_DIR}/inside", blob(cs + 1, 4))
    await put(f"{LONG_DIR}/{LONG_FILE}", b"long in long\n")
    await put("日本語/ファイル 🎉.txt", "héllo wörld\n".encode())
    await put(MAX_NAME, b"255-byte name")
    await put("dot.only.", b".")
    # growth and shrink through the write-back path
    f = await vol.open("a/exact", write=True)
    await f.write(cs + 100, b"tail")            # sparse growth: bytes cs..cs+99 are zeros
    await f.close()
    expected["a/exact"] = blob(cs, 1) + bytes(100) + b"tail"
    f = await vol.open("a/b/multi", write=True)
    await f.truncate(cs + 5)
    await f.write(2, b"ZZ")
    await f.close()
    data = bytearray(blob(3 * cs + 17, 2)[:cs + 5])
    data[2:4] = b"ZZ"
    expected["a/b/multi"] = bytes(data)
    await vol.setattr("a/b/c/deep.bin", size=10 * cs + 3)   # truncate up: holes
    expected["a/b/c/deep.bin"] = blob(2 * cs - 1, 3) + bytes(10 * cs + 3 - (2 * cs - 1))
    await vol.setattr("one", mode=0o640, uid=1234, gid=5678)
    await vol.symlink("link-to-multi", "a/b/multi")
    await vol.symlink("a/b/dangling", "../../nowhere/" + "x" * 300)
    await vol.mknod("fifo", Kind.FIFO, 0o600)
    await vol.link("a/b/multi", "a/hardlink")
    expected["a/hardlink"] = expected["a/b/multi"]
    await vol.rename("one", f"{LONG_DIR}/one-moved")
    expected[f"{LONG_DIR}/one-moved"] = expected.pop("one")
    await vol.rename(LONG_FILE, "short-again")
    expected["short-again"] = expected.pop(LONG_FILE)
    await vol.write_file("a/removed", b"gone")
    await vol.unlink("a/removed")
    # directories: removed, renamed with what is below them (one rename of the stub),
    # renamed over an empty directory
    await vol.mkdir("tmpdir")
    await vol.mkdir("tmpdir/sub")
    await vol.rmdir("tmpdir/sub")
    await vol.rmdir("tmpdir")
    await vol.mkdir("mv")
    await vol.mkdir("mv/inner")
    await put("mv/inner/f", b"moved with its directory\n")
    await vol.rename("mv", f"{LONG_DIR}/mv renamed")
    expected[f"{LONG_DIR}/mv renamed/inner/f"] = expected.pop("mv/inner/f")
    await vol.mkdir("victim")
    await vol.rename(f"{LONG_DIR}/mv renamed/inner", "victim")
    expected["victim/f"] = expected.pop(f"{LONG_DIR}/mv renamed/inner/f")
    return expected


async def sealfs_view(vol) -> dict[str, tuple]:
    out = {}
    for path, attr in await vol.walk():
        out[path] = (int(attr.kind), attr.mode, attr.uid, attr.gid, attr.size, attr.identity,
                     attr.nlink if attr.is_dir else None)
    return out


def independent_view(r: ind.Result) -> dict[str, tuple]:
    kind_num = {v: k for k, v in ind.KINDS.items()}
    return {p: (kind_num[e.kind], e.mode, e.uid, e.gid, e.size if e.kind != "directory" else 4096,
                e.identity, e.nlink) for p, e in r.entries.items()}


def check_flat(store: Path, r: ind.Result) -> None:
    """FORMAT.md 1: every directory has one storage d/<2>/<30>, every entry lives in one,
    the backend depth and path length are bounded whatever the plaintext depth."""
    dirs = [r.root] + [e for e in r.entries.values() if e.kind == "directory"]
    storages = {p.relative_to(store).as_posix() for p in store.glob("d/*/*")}
    assert storages == {e.storage for e in dirs} and r.orphans == []
    for e in r.entries.values():
        assert e.backend_path.rsplit("/", 1)[0] in storages
    paths = [p.relative_to(store).as_posix() for p in store.rglob("*")]
    assert max(p.count("/") for p in paths) <= 4 and max(map(len, paths)) <= 300


@pytest.mark.parametrize("cs", [4096, 65536])
async def test_volume_library_store(cs, make_volume, open_volume, keyfile: Path, isolated_state: Path):
    store = await make_volume(cs)
    vol = await open_volume(store)
    try:
        expected = await build(vol, cs)
        symlinks = {"link-to-multi": "a/b/multi", "a/b/dangling": "../../nowhere/" + "x" * 300}
        view = await sealfs_view(vol)
    finally:
        await vol.close()

    r = ind.decrypt_store(store, keyfile=keyfile.read_bytes())
    assert r.errors == []
    assert r.chunk_size == cs
    assert {p: d for p, d in r.files.items() if r.entries[p].kind == "regular"} == expected
    assert {p: r.entries[p].target for p in r.files if r.entries[p].kind == "symlink"} == symlinks
    assert independent_view(r) == view
    assert r.entries["fifo"].kind == "fifo"
    assert r.entries["a/hardlink"].identity == r.entries["a/b/multi"].identity
    e = r.entries[f"{LONG_DIR}/one-moved"]
    assert (e.mode, e.uid, e.gid) == (0o640, 1234, 5678)
    assert r.entries["a/b/c"].mode == 0o700
    assert r.entries[LONG_DIR].nlink == 3 and r.entries["victim"].nlink == 2
    assert r.root.nlink == 2 + 4                   # a, LONG_DIR, 日本語, victim
    check_flat(store, r)
    assert all(e.size_source == "header" for e in r.entries.values() if e.kind != "directory")
    # long names really are in the long form on disk, with sidecars
    for path in (LONG_DIR, f"{LONG_DIR}/{LONG_FILE}", MAX_NAME):
        entry = r.entries[path].backend_path.rsplit("/", 1)[-1]
        assert ind.LONG_NAME.match(entry), path
        assert (store / (r.entries[path].backend_path + ".name")).is_file()
    # nothing is left behind: no temp names, no orphan sidecars
    leftovers = [p for p in store.rglob("sealfs.*")
                 if p.name not in ("sealfs.json", "sealfs.dir") and not ind.LONG_NAME.match(p.name)
                 and not (p == store / "sealfs.journal" and not any(p.iterdir()))
                 and not (p.name.endswith(".name") and ind.LONG_NAME.match(p.name[:-5]))]
    assert leftovers == []
    sidecars = {p.relative_to(store).as_posix()[:-5] for p in store.rglob("sealfs.ln.*.name")}
    assert sidecars == {e.backend_path for e in r.entries.values()
                        if ind.LONG_NAME.match(e.backend_path.rsplit("/", 1)[-1])}
    # the pin sealfs recorded is the independent fingerprint
    pins = json.loads((isolated_state / "known_volumes.json").read_text())
    assert pins[str(store.resolve())] == {"volume_id": r.volume_id, "fingerprint": r.pin_fingerprint}


async def test_tampering_is_reported_per_file(make_volume, open_volume, keyfile: Path):
    cs = 4096
    store = await make_volume(cs)
    vol = await open_volume(store)
    try:
        await vol.write_file("flip", blob(3 * cs, 1))
        await vol.write_file("zeroed", blob(3 * cs, 2))
        await vol.write_file("cut", blob(3 * cs, 3))
        await vol.write_file("fine", b"fine")
    finally:
        await vol.close()
    r = ind.decrypt_store(store, keyfile=keyfile.read_bytes())
    bp = {p: store / e.backend_path for p, e in r.entries.items()}

    data = bytearray(bp["flip"].read_bytes())
    data[slot_offset(1, cs) + 40] ^= 0x80
    bp["flip"].write_bytes(data)
    data = bytearray(bp["zeroed"].read_bytes())
    data[slot_offset(1, cs):slot_offset(2, cs)] = bytes(cs + 28)
    bp["zeroed"].write_bytes(data)
    with open(bp["cut"], "r+b") as fh:
        fh.truncate(slot_offset(2, cs))            # cut at a chunk boundary

    r = ind.decrypt_store(store, keyfile=keyfile.read_bytes())
    errors = dict(r.errors)
    assert "flip" not in r.entries and "cut" not in r.entries
    assert "chunk 1 does not authenticate" in errors[bp["flip"].relative_to(store).as_posix()]
    assert "final chunk" in errors[bp["cut"].relative_to(store).as_posix()]
    assert r.files["zeroed"] == blob(cs, 2) + bytes(cs) + blob(3 * cs, 2)[2 * cs:]  # a hole
    assert r.files["fine"] == b"fine"


async def test_xattrs_and_acls_written_by_sealfs(make_volume, open_volume, keyfile: Path):
    """What the Volume writes (set, replace, remove, inheritance of a default ACL, hard
    links, rename, the root) reads the same through FORMAT.md 12 alone."""
    from sealfs.fs.core import acl
    user_acl = acl.pack([(acl.USER_OBJ, 6, 0), (acl.USER, 4, 1001), (acl.GROUP_OBJ, 4, 0),
                         (acl.MASK, 4, 0), (acl.OTHER, 0, 0)])
    default = acl.pack([(acl.USER_OBJ, 7, 0), (acl.GROUP_OBJ, 5, 0), (acl.GROUP, 7, 50),
                        (acl.MASK, 7, 0), (acl.OTHER, 0, 0)])
    store = await make_volume(4096)
    vol = await open_volume(store)
    try:
        await vol.write_file("f", b"data")
        await vol.setxattr("f", b"user.a", b"1")
        await vol.setxattr("f", b"user.a", b"replaced")
        await vol.setxattr("f", b"trusted.t", bytes(range(256)))
        await vol.setxattr("f", acl.ACCESS, user_acl)
        await vol.link("f", "f-link")
        await vol.rename("f", "renamed")
        await vol.mkdir("d")
        await vol.setxattr("d", acl.DEFAULT, default)
        await vol.write_file("d/inherits", b"")           # takes d's default ACL
        await vol.mkdir("d/sub")
        await vol.write_file("gone", b"")
        await vol.setxattr("gone", b"user.x", b"1")
        await vol.removexattr("gone", b"user.x")             # the last one: no blob left
        await vol.setxattr("", b"user.root", b"r")
        view = {p: {n: await vol.getxattr(p, n) for n in await vol.listxattr(p)}
                for p in ("renamed", "f-link", "d", "d/inherits", "d/sub", "gone", "")}
    finally:
        await vol.close()
    r = ind.decrypt_store(store, keyfile=keyfile.read_bytes())
    assert r.errors == [] and r.xattr_orphans == []
    got = {p: (r.entries[p] if p else r.root).xattrs for p in view}
    assert got == view
    assert got["renamed"][acl.ACCESS] == acl.pack(acl.parse(user_acl)) and r.entries["renamed"].mode & 0o777 == 0o640
    assert got["d/sub"][acl.DEFAULT] == acl.pack(acl.parse(default)) and acl.ACCESS in got["d/inherits"]
    assert got["gone"] == {}
    blobs = sorted(p.relative_to(store).as_posix() for p in (store / "x").rglob("*")
                   if p.is_file())
    keys = ind.open_config((store / "sealfs.json").read_bytes(), keyfile.read_bytes())
    assert blobs == sorted({keys.xattr_blob(b"f", r.entries["renamed"].identity),
                            keys.xattr_blob(b"d", r.entries["d"].identity),
                            keys.xattr_blob(b"f", r.entries["d/inherits"].identity),
                            keys.xattr_blob(b"d", r.entries["d/sub"].identity),
                            keys.xattr_blob(b"d", r.root.identity)})
    for path in blobs:                                   # nothing in clear
        data = (store / path).read_bytes()
        assert b"user." not in data and b"replaced" not in data


async def test_xattr_blob_damage_is_reported(make_volume, open_volume, keyfile: Path):
    """A blob altered, given to another inode, deleted (its flag still set), or left
    behind by its inode (flag off): each reported where it is, other inodes still read."""
    store = await make_volume(4096)
    vol = await open_volume(store)
    try:
        for name in ("altered", "moved-to", "moved-from", "deleted", "fine", "orphaned"):
            await vol.write_file(name, b"")
            await vol.setxattr(name, b"user.k", name.encode())
        bpath = {n: await vol.xattr_blob_of(n)
                 for n in ("altered", "moved-to", "moved-from", "deleted", "orphaned")}
        orphan = (store / bpath["orphaned"]).read_bytes()
        await vol.removexattr("orphaned", b"user.k")       # flag off, blob gone...
    finally:
        await vol.close()
    (store / bpath["orphaned"]).write_bytes(orphan)       # ...and back: an orphan
    raw = bytearray((store / bpath["altered"]).read_bytes())
    raw[25] ^= 1
    (store / bpath["altered"]).write_bytes(bytes(raw))
    shutil.copy(store / bpath["moved-from"], store / bpath["moved-to"])
    (store / bpath["deleted"]).unlink()

    r = ind.decrypt_store(store, keyfile=keyfile.read_bytes())
    errors = dict(r.errors)
    assert set(r.entries) >= {"fine", "moved-from", "orphaned"}
    assert {"altered", "moved-to", "deleted"}.isdisjoint(r.entries)
    reasons = " | ".join(errors.values())
    assert "does not authenticate" in reasons and "is missing" in reasons
    assert sum("does not authenticate" in why for why in errors.values()) == 2
    assert r.entries["fine"].xattrs == {b"user.k": b"fine"}
    assert r.entries["moved-from"].xattrs == {b"user.k": b"moved-from"}
    assert r.entries["orphaned"].xattrs == {}
    assert r.xattr_orphans == [bpath["orphaned"]]
    assert len(r.errors) == 3


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sealfs.fs.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.slow
def test_cli_store(tmp_path: Path, isolated_state: Path):
    env = dict(os.environ, SEALFS_STATE_DIR=str(isolated_state))
    store, key = tmp_path / "cli-store", tmp_path / "cli.key"
    cli("init", str(store), "--keyfile", str(key), "--chunk-size", "4K", env=env)
    local = tmp_path / "big.bin"
    local.write_bytes(blob(5 * 4096 + 3, 9))
    cli("mkdir", str(store), "dir/sub", "-p", "--keyfile", str(key), env=env)
    cli("put", str(store), str(local), "dir/sub/big.bin", "--keyfile", str(key), env=env)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    cli("put", str(store), str(empty), "Ωmega " + "n" * 140, "--keyfile", str(key), env=env)
    r = ind.decrypt_store(store, keyfile=key.read_bytes())
    assert r.errors == []
    assert r.files == {"dir/sub/big.bin": local.read_bytes(), "Ωmega " + "n" * 140: b""}
    assert set(r.entries) == {"dir", "dir/sub", "dir/sub/big.bin", "Ωmega " + "n" * 140}
    check_flat(store, r)
    listing = cli("ls", str(store), "-R", "--keyfile", str(key), env=env).stdout
    assert "big.bin" in listing


async def test_wrong_key_and_modified_config(make_volume, keyfile: Path):
    store = await make_volume(4096)
    with pytest.raises(ind.KeyError_):
        ind.decrypt_store(store, keyfile=os.urandom(32))
    doc = json.loads((store / "sealfs.json").read_text())
    doc["current_dek"] = 7
    (store / "sealfs.json").write_text(json.dumps(doc))
    with pytest.raises(ind.FormatError):
        ind.decrypt_store(store, keyfile=keyfile.read_bytes())
    doc["version"] = 1
    (store / "sealfs.json").write_text(json.dumps(doc))
    with pytest.raises(ind.FormatError, match="format-1 store"):
        ind.decrypt_store(store, keyfile=keyfile.read_bytes())


# -- crash ordering of the real writer ------------------------------------------------------
class RecordingBackend:
    """Wraps LocalBackend; records every data-changing request on one backend file."""

    def __new__(cls, root):
        from sealfs.backends.local import LocalBackend

        class _Recording(LocalBackend):
            def __init__(self, root) -> None:
                super().__init__(root)
                self.ops: list[tuple] = []
                self.watch: str | None = None

            async def write(self, handle, offset, data):
                if handle.path == self.watch:
                    self.ops.append(("write", offset, bytes(data)))
                await super().write(handle, offset, data)

            async def write_many(self, handle, writes):
                if handle.path == self.watch:
                    self.ops.extend(("write", o, bytes(d)) for o, d in writes)
                await super().write_many(handle, writes)

            async def truncate(self, handle, size):
                if handle.path == self.watch:
                    self.ops.append(("truncate", size))
                await super().truncate(handle, size)

        return _Recording(root)


def apply(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        if op[0] == "truncate":
            del buf[op[1]:]
            buf.extend(bytes(max(0, op[1] - len(buf))))
        else:
            _, offset, piece = op
            if len(buf) < offset + len(piece):
                buf.extend(bytes(offset + len(piece) - len(buf)))
            buf[offset:offset + len(piece)] = piece
    return bytes(buf)


CS = 4096


async def _grow_within(f):
    await f.write(100, blob(100, 7))


async def _append_across(f):
    await f.write(5000, blob(8000, 7))


async def _shrink_across(f):
    await f.truncate(100)


async def _shrink_within(f):
    await f.truncate(4500)


async def _shrink_then_grow(f):
    await f.truncate(100)
    await f.write(8000, blob(1000, 7))


async def _rewrite(f):
    await f.write(10, b"0123456789")


async def _truncate_up(f):
    await f.truncate(20000)


async def _rewrite_final(f):
    await f.write(4100, b"abc")


SCENARIOS = {
    "grow within the final chunk": (100, None, _grow_within),
    "grow from empty": (0, None, _append_across),
    "append across chunks": (5000, None, _append_across),
    "shrink across chunks": (13000, None, _shrink_across),
    "shrink within the final chunk": (5000, None, _shrink_within),
    "shrink then grow in one flush": (13000, 100, _shrink_then_grow),
    "rewrite in place": (9000, None, _rewrite),
    "rewrite inside the final chunk": (5000, None, _rewrite_final),
    "truncate up (sparse)": (100, None, _truncate_up),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_every_crash_point_reads_old_or_new(name, make_volume, keyfile: Path):
    """Replay each prefix of the writer's requests: the independent reader must get the old
    content, the new content, or (shrink then grow) the low-water content; never EIO."""
    from sealfs.crypto.keys.kms import KeySecrets
    from sealfs.fs.core.volume import Volume

    initial_size, low, action = SCENARIOS[name]
    old = blob(initial_size, 1)
    store = await make_volume(CS)
    backend = RecordingBackend(store)
    vol = await Volume.load(backend, KeySecrets(keyfile=keyfile))
    try:
        await vol.write_file("f", old)
        bpath = (await vol.paths.entry("f")).bpath
        before = (store / bpath).read_bytes()
        backend.watch = bpath
        f = await vol.open("f", write=True)
        await action(f)
        await f.close()
        new = await vol.read_file("f")
    finally:
        await vol.close()
    ops = backend.ops
    assert ops, "the action wrote nothing"
    assert apply(before, ops) == (store / bpath).read_bytes()
    allowed = {old, new} | ({old[:low]} if low is not None else set())
    keys = ind.open_config((store / "sealfs.json").read_bytes(), keyfile=keyfile.read_bytes())
    seen = []
    for k in range(len(ops) + 1):
        state = apply(before, ops[:k])
        f = ind.decrypt_file(keys, state)           # FormatError here = unreadable crash state
        assert f.content in allowed, f"{name}: after {k} of {len(ops)} requests: size {f.size}"
        seen.append(f.size)
    assert seen[0] == len(old) and seen[-1] == len(new)


async def test_a_torn_rewrite_reads_through_its_journal(make_volume, open_volume, keyfile: Path):
    """FORMAT.md 9.5 from the spec alone: the torn slot takes the journaled chunk."""
    from tests.tearing import tear_in_place_rewrite

    store = await make_volume(CS)
    old = blob(5 * CS, 11)
    vol = await open_volume(store)
    try:
        await vol.write_file("f", old)
        bpath = (await vol.paths.entry("f")).bpath
    finally:
        await vol.close()
    new_chunk = blob(CS, 12)
    await tear_in_place_rewrite(store, keyfile, store / bpath, 2, new_chunk, CS)
    r = ind.decrypt_store(store, keyfile=keyfile.read_bytes())
    assert r.errors == []
    assert r.files["f"] == old[:2 * CS] + new_chunk + old[3 * CS:]
    (store / "sealfs.journal" / next(p.name for p in (store / "sealfs.journal").iterdir())).unlink()
    r = ind.decrypt_store(store, keyfile=keyfile.read_bytes())
    assert r.errors and "chunk 2 does not authenticate" in r.errors[0][1]


# -- crash ordering of directory operations (FORMAT.md 9.2) ----------------------------------
def snapshot(root: Path) -> dict[str, bytes | None]:
    """The whole store: {backend path: content, or None for a directory}."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = None if p.is_dir() else p.read_bytes()
    return out


def restore(state: dict[str, bytes | None], dest: Path) -> Path:
    dest.mkdir()
    for bpath, content in state.items():
        if content is None:
            (dest / bpath).mkdir(parents=True, exist_ok=True)
        else:
            (dest / bpath).parent.mkdir(parents=True, exist_ok=True)
            (dest / bpath).write_bytes(content)
    return dest


class SnapshotBackend:
    """Wraps LocalBackend; after every request that changes the namespace or a file's bytes,
    records the whole store: each recorded state is where a crash after that request leaves
    the store (requests are not torn: FORMAT.md 9.2)."""

    def __new__(cls, root):
        from sealfs.backends.local import LocalBackend

        def recorded(name):
            async def method(self, *args, **kwargs):
                result = await getattr(LocalBackend, name)(self, *args, **kwargs)
                if self.states is not None and (name != "open" or kwargs.get("create")):
                    state = snapshot(self.store)
                    if state != self.states[-1]:
                        self.states.append(state)
                return result
            return method

        names = ("open", "create_file", "write", "write_many", "truncate", "mkdir", "rmdir",
                 "unlink", "rename", "place_new", "link")
        cls_ = type("_Snapshotting", (LocalBackend,), {n: recorded(n) for n in names})
        backend = cls_(root)
        backend.store, backend.states = Path(root), None
        return backend


LONG_A = "long directory name " * 8                     # 160 bytes: a long-name stub


async def _dir_base(vol) -> None:
    await vol.mkdir("a")
    await vol.write_file("a/f", b"in a\n")
    await vol.mkdir("a/sub")
    await vol.write_file("a/sub/g", b"in a/sub\n")
    await vol.mkdir("b")
    await vol.mkdir("empty")
    await vol.mkdir(LONG_A)
    await vol.write_file("keep", b"keep\n")


DIR_SCENARIOS = {
    "mkdir": lambda vol: vol.mkdir("new"),
    "mkdir, long name": lambda vol: vol.mkdir("n" * 200),
    "mkdir inside a directory": lambda vol: vol.mkdir("a/sub/new"),
    "rmdir": lambda vol: vol.rmdir("empty"),
    "rmdir, long name": lambda vol: vol.rmdir(LONG_A),
    "rename a directory within its parent": lambda vol: vol.rename("a", "a2"),
    "rename a directory into another": lambda vol: vol.rename("a", "b/a"),
    "rename a directory to a long name": lambda vol: vol.rename("a", "b/" + "z" * 150),
    "rename a long-named directory": lambda vol: vol.rename(LONG_A, "short"),
    "rename a directory over an empty one": lambda vol: vol.rename("a", "empty"),
}


def tree_view(r: ind.Result) -> dict[str, tuple]:
    return {p: (e.kind, e.mode, r.files.get(p)) for p, e in r.entries.items()}


@pytest.mark.parametrize("name", list(DIR_SCENARIOS))
async def test_every_crash_point_of_a_directory_operation(name, make_volume, keyfile: Path,
                                                          tmp_path: Path):
    """Replay the store after each request of mkdir, rmdir or rename of a directory: the
    independent reader gets the old tree, then the new one, never an error; what a crash
    leaves besides is at most a temporary stub and one orphan storage, only mid-operation.
    Renaming over an empty directory may also stop with the victim moved aside and the
    source not moved yet (FORMAT.md 9.2): the victim is gone, everything else is old."""
    from sealfs.crypto.keys.kms import KeySecrets
    from sealfs.fs.core.volume import Volume

    store = await make_volume(CS)
    backend = SnapshotBackend(store)
    vol = await Volume.load(backend, KeySecrets(keyfile=keyfile))
    try:
        await _dir_base(vol)
        backend.states = [snapshot(store)]
        await DIR_SCENARIOS[name](vol)
    finally:
        await vol.close()
    states = backend.states
    assert len(states) >= 2, "the operation changed nothing on the backend"
    key = keyfile.read_bytes()
    views, orphans = [], []
    for k, state in enumerate(states):
        r = ind.decrypt_store(restore(state, tmp_path / f"state{k}"), keyfile=key)
        assert r.errors == [], f"{name}: after {k} of {len(states) - 1} requests"
        views.append(tree_view(r))
        orphans.append(len(r.orphans))
        if k in (0, len(states) - 1):
            assert [p for p in state if "/sealfs.tmp." in p] == [], f"{name}: leftovers"
    assert orphans[0] == orphans[-1] == 0 and max(orphans) <= 1, f"{name}: orphans {orphans}"
    old, new = views[0], views[-1]
    assert old != new
    order = [old, new]
    if name == "rename a directory over an empty one":
        order.insert(1, {p: v for p, v in old.items() if p != "empty"})
    ranks = []
    for k, view in enumerate(views):
        assert view in order, f"{name}: after {k} of {len(views) - 1} requests: neither old nor new"
        ranks.append(order.index(view))
    assert ranks == sorted(ranks), f"{name}: the tree went back: {ranks}"
