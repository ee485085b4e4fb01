"""The client's own files: `get`, `sync` and `restore` never write through a planted
symlink, never take a user's name for a temporary of theirs, and an interrupted mkdir's
leftover never blocks rmdir. Commands run as root through the installed `sealfs`."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sealfs.backends.local import LocalBackend
from sealfs.crypto.keys.kms import KeySecrets
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.servers.samba import new_store
from tests.storepaths import record_of, storage_of, storage_path

SEALFS_BIN = str(Path(sys.executable).with_name("sealfs"))

# Names a user may well have: they used to look like sealfs's own temporaries.
SYNCISH = (".sealfs-sync.x.part", ".sealfs-sync.0011223344556677.part", ".f.sealfs-part",
           ".sealfs-part.0011223344556677", "sealfs.tmp.0011223344556677")


def run(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SEALFS_BIN, *map(str, args)], capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def vstore(tmp_path: Path, keyfile: Path) -> Path:
    store = tmp_path / "vstore"
    r = run("init", store, "--keyfile", keyfile)
    assert r.returncode == 0, r.stderr
    return store


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


def victim_file(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's own secret\n")
    victim.chmod(0o600)
    return victim


# -- get ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_get_does_not_follow_a_symlink_planted_at_its_temp_name(tmp_path, keyfile, vstore):
    src = tmp_path / "f"
    src.write_bytes(b"plaintext from the volume\n")
    src.chmod(0o644)
    assert run("put", vstore, src, "/f", "--keyfile", keyfile).returncode == 0
    victim = victim_file(tmp_path)
    dest = tmp_path / "dl"
    dest.mkdir(mode=0o777)
    dest.chmod(0o777)                                  # someone else can write here
    os.symlink(victim, dest / ".f.sealfs-part")        # the old, predictable temp name

    r = run("get", vstore, "/f", dest / "f", "--keyfile", keyfile)
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == b"root's own secret\n"
    assert stat.S_IMODE(victim.lstat().st_mode) == 0o600
    assert (dest / "f").read_bytes() == b"plaintext from the volume\n"
    assert stat.S_IMODE((dest / "f").lstat().st_mode) == 0o644
    assert os.readlink(dest / ".f.sealfs-part") == str(victim)      # not ours: left alone
    assert sorted(os.listdir(dest)) == [".f.sealfs-part", "f"]       # no temp left behind

    # A directory as LOCAL: same rule.
    r = run("get", vstore, "/f", dest, "--keyfile", keyfile)
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == b"root's own secret\n"


@pytest.mark.slow
def test_get_temp_file_is_private_while_it_is_written(tmp_path, keyfile, vstore):
    """A 0600 file's plaintext is never in a file others can open, even for a moment."""
    src = tmp_path / "big"
    src.write_bytes(os.urandom(40 * 1024 * 1024))
    src.chmod(0o600)
    assert run("put", vstore, src, "/big", "--keyfile", keyfile).returncode == 0
    dest = tmp_path / "dl"
    dest.mkdir()
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for name in os.listdir(dest):
                try:
                    seen.append(stat.S_IMODE(os.lstat(dest / name).st_mode))
                except FileNotFoundError:
                    continue
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = run("get", vstore, "/big", dest / "big", "--keyfile", keyfile)
    finally:
        done.set()
        watcher.join()
    assert r.returncode == 0, r.stderr
    assert seen and set(seen) == {0o600}
    assert (dest / "big").read_bytes() == src.read_bytes()


# -- restore ------------------------------------------------------------------------------
@pytest.mark.slow
def test_restore_does_not_write_through_a_directory_swapped_for_a_symlink(tmp_path, keyfile,
                                                                          vstore):
    """Someone who can write in DST swaps DST/b for a symlink while restore runs: root must
    not write, chmod or chown anything outside DST."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "big").write_bytes(os.urandom(20 * 1024 * 1024))
    for i in range(200):                  # restore's order is not fixed: b takes a while
        (src / "b" / f"secret{i:03d}").write_bytes(b"restored plaintext\n")
    (src / "b").chmod(0o755)
    assert run("sync", src, vstore, "--keyfile", keyfile).returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o711)
    dest = tmp_path / "dst"
    dest.mkdir()
    swapped = threading.Event()
    stop = threading.Event()

    def attacker() -> None:           # as soon as restore writes a file, b is ready
        while not stop.is_set() and not swapped.is_set():
            try:
                ready = (dest / "b").is_dir() and bool(os.listdir(dest / "a")
                                                       or os.listdir(dest / "b"))
            except FileNotFoundError:             # a is not there yet
                continue
            if ready:
                os.rename(dest / "b", tmp_path / "b-moved")
                os.symlink(outside, dest / "b")
                swapped.set()
    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        r = run("restore", vstore, dest, "--jobs", "1", "--keyfile", keyfile)
    finally:
        stop.set()
        thread.join()
    assert swapped.is_set()
    assert os.listdir(outside) == []
    assert stat.S_IMODE(outside.stat().st_mode) == 0o711
    assert (dest / "a" / "big").read_bytes() == (src / "a" / "big").read_bytes()
    assert r.returncode != 0 and b"/b/secret" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.slow
def test_restore_creates_files_private_and_without_following_symlinks(tmp_path, keyfile,
                                                                     vstore):
    """A 0600 file's plaintext is never in a file others can open while it is restored;
    the victim behind a symlink in DST stays as it was."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"new content\n")
    (src / "f").chmod(0o644)
    (src / "private").write_bytes(os.urandom(40 * 1024 * 1024))
    (src / "private").chmod(0o600)
    assert run("sync", src, vstore, "--keyfile", keyfile).returncode == 0
    victim = victim_file(tmp_path)
    dest = tmp_path / "dst"
    dest.mkdir()
    os.symlink(victim, dest / "f")                     # replaced, never written through
    seen: set[tuple[int, int]] = set()     # (mode, size) of every other name in DST
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for name in os.listdir(dest):
                if name != "f":
                    try:
                        st = os.lstat(dest / name)
                    except FileNotFoundError:
                        continue
                    seen.add((stat.S_IMODE(st.st_mode), st.st_size))
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = run("restore", vstore, dest, "--jobs", "1", "--keyfile", keyfile)
    finally:
        done.set()
        watcher.join()
    assert r.returncode == 0, r.stderr
    # f's own temporary may take f's 0644 just before its rename; no byte of the 0600
    # file is ever in a name others could open
    assert {mode for mode, size in seen if size > len(b"new content\n")} == {0o600}
    assert (dest / "private").read_bytes() == (src / "private").read_bytes()
    assert victim.read_bytes() == b"root's own secret\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert (dest / "f").read_bytes() == b"new content\n" and not (dest / "f").is_symlink()


# -- names a user may have ----------------------------------------------------------------
def syncish_tree(src: Path) -> None:
    src.mkdir()
    (src / "sub").mkdir()
    for i, name in enumerate(SYNCISH):
        for where in (src, src / "sub"):
            (where / name).write_bytes(f"user data {i} in {where.name}\n".encode())
            os.utime(where / name, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    (src / ".sealfs-sync.d.part").mkdir()                      # a directory of that name
    (src / ".sealfs-sync.d.part" / "inner").write_bytes(b"inside\n")
    os.symlink("sub", src / ".sealfs-sync.l.part")


def sync_summary(r: subprocess.CompletedProcess) -> str:
    return [line for line in r.stdout.decode().splitlines() if line.startswith("sync:")][-1]


@pytest.mark.slow
def test_user_files_with_temporary_looking_names_round_trip(tmp_path, keyfile, vstore):
    src = tmp_path / "src"
    syncish_tree(src)
    n_files = sum(1 for v in snapshot(src).values() if v[0] != "dir")
    first = run("sync", src, vstore, "--keyfile", keyfile)
    assert first.returncode == 0, first.stderr
    assert sync_summary(first).startswith(f"sync: {n_files} copied")
    second = run("sync", src, vstore, "--keyfile", keyfile)
    assert second.returncode == 0, second.stderr
    assert sync_summary(second) == \
        f"sync: 0 copied (0 bytes), 0 deleted, {n_files} unchanged, 0 errors"

    dest = tmp_path / "dst"
    dest.mkdir()
    (dest / ".sealfs-sync.mine.part").write_bytes(b"only in DST\n")   # not in the volume
    (dest / ".sealfs-part.feedfacefeedface").write_bytes(b"also mine\n")
    r = run("restore", vstore, dest, "--keyfile", keyfile)
    assert r.returncode == 0, r.stderr
    assert b"0 errors" in r.stdout
    got = snapshot(dest)
    assert got.pop(".sealfs-sync.mine.part")[3] == b"only in DST\n"
    assert got.pop(".sealfs-part.feedfacefeedface")[3] == b"also mine\n"
    assert got == snapshot(src)

    # A restore into the same DST again: nothing changes, nothing is removed.
    again = run("restore", vstore, dest, "--keyfile", keyfile)
    assert again.returncode == 0 and b"0 copied" in again.stdout, again.stdout
    assert (dest / ".sealfs-sync.mine.part").read_bytes() == b"only in DST\n"


@pytest.mark.slow
def test_killed_sync_leaves_no_visible_name_and_a_rerun_removes_its_temporaries(
        tmp_path, keyfile, vstore):
    """Temporaries live in the store's reserved namespace: a killed sync leaves nothing a
    user can see (or confuse with a file), and the next sync removes what it left."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(2 * 1024 * 1024 + i))
    root = storage_path(vstore, keyfile, "")
    proc = subprocess.Popen([SEALFS_BIN, "sync", str(src), str(vstore), "--keyfile", str(keyfile)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Stopped (SIGSTOP) once files have landed and one is in flight, so that the store
    # holds still while we look: killed only with a temporary there, however the load
    # on the machine shifts the sync's timing (it may be between two files).
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "sync finished before it could be killed"
        assert time.monotonic() < deadline, "never caught the sync with a file in flight"
        names = os.listdir(root)
        if len([n for n in names if not n.startswith("sealfs.")]) >= 3 \
                and any(n.startswith("sealfs.tmp.") for n in names):
            proc.send_signal(signal.SIGSTOP)
            if any(n.startswith("sealfs.tmp.") for n in os.listdir(root)):
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)
    proc.kill()
    proc.wait(10)
    temps = [n for n in os.listdir(root) if n.startswith("sealfs.tmp.")]
    assert temps, "the kill should have caught a file in flight"

    r = run("ls", vstore, "/", "--keyfile", keyfile)
    assert r.returncode == 0
    assert all(name.startswith("f") for name in r.stdout.decode().split()), r.stdout
    r = run("sync", src, vstore, "--keyfile", keyfile)
    assert r.returncode == 0 and sync_summary(r).endswith("0 errors"), r.stderr
    assert not [n for n in os.listdir(root) if n.startswith("sealfs.tmp.")]
    out = tmp_path / "out"
    assert run("restore", vstore, out, "--keyfile", keyfile).returncode == 0
    assert snapshot(out) == snapshot(src)


# -- an interrupted mkdir's leftover ------------------------------------------------------
async def plant_mkdir_leftover(vol: Volume, parent: str, extra: str | None = None) -> str:
    """What a mkdir killed between writing its record and its rename leaves: a stub
    sealfs.tmp.<hex> in the parent's storage holding a valid sealfs.dir (a copy of the
    parent's)."""
    backend = vol.backend
    tmp = f"{await storage_of(vol, parent)}/sealfs.tmp.{os.urandom(8).hex()}"
    await backend.mkdir(tmp)
    h = await backend.open(await record_of(vol, parent))
    record = await backend.read(h, 0, 4096)
    await backend.close(h)
    h = await backend.open(f"{tmp}/sealfs.dir", write=True, create=True, exclusive=True)
    await backend.write(h, 0, record)
    await backend.close(h)
    if extra is not None:
        h = await backend.open(f"{tmp}/{extra}", write=True, create=True, exclusive=True)
        await backend.write(h, 0, b"x")
        await backend.close(h)
    return tmp


@pytest.fixture(params=["local", "smb", "azfiles"])
def any_store(request, tmp_path, keyfile):
    """(backend factory, STORE argument, env, its directory) for a fresh initialized store."""
    if request.param == "local":
        path = tmp_path / "store"
        assert run("init", path, "--keyfile", keyfile).returncode == 0
        return (lambda: LocalBackend(path)), str(path), {}, path
    if request.param == "azfiles":
        return _azfiles_store(request, tmp_path, keyfile)
    samba = request.getfixturevalue("samba")
    smb = new_store(samba)
    env = {"SEALFS_SMB_PASSWORD": samba.password}
    r = run("init", smb.url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stderr
    return smb.backend, smb.url, env, smb.local


def _azfiles_store(request, tmp_path: Path, keyfile: Path):
    """any_store on the Azure Files test server: the CLI gets the account key and the CA."""
    from tests.azfiles.conftest import new_azfiles_store, point_env_at
    from tests.conftest import AZFILES_SHARE
    server = request.getfixturevalue("azfiles_server")
    point_env_at(server, request.getfixturevalue("monkeypatch"))
    store = new_azfiles_store(server, tmp_path)
    env = {"SEALFS_AZURE_ACCOUNT_KEY": server.account_key, "REQUESTS_CA_BUNDLE": str(server.ca_path)}
    r = run("init", store.url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stderr
    return store.backend, store.url, env, server.share_root(AZFILES_SHARE) / store.path


async def open_store(factory, keyfile: Path) -> Volume:
    backend = factory()
    if hasattr(backend, "connect"):
        await backend.connect()
    return await Volume.load(backend, KeySecrets(keyfile=keyfile), pins=PinStore())


@pytest.mark.slow
async def test_rmdir_removes_an_interrupted_mkdirs_leftover(any_store, keyfile):
    factory, url, env, _ = any_store
    vol = await open_store(factory, keyfile)
    try:
        await vol.mkdir("/p")
        await vol.mkdir("/p/q")
        await vol.mkdir("/r")
        await plant_mkdir_leftover(vol, "/p/q")
        await plant_mkdir_leftover(vol, "/r")
        assert [n for n, _ in await vol.listdir("/p/q")] == []
        await vol.rmdir("/r")                             # the library
        assert sorted(n for n, _ in await vol.listdir("/")) == ["p"]
    finally:
        await vol.close()
    r = run("rm", url, "/p", "-r", "--keyfile", keyfile, env=env)    # the CLI
    assert r.returncode == 0, r.stderr
    r = run("ls", url, "/", "--keyfile", keyfile, env=env)
    assert r.returncode == 0 and r.stdout == b""
    r = run("fsck", url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stdout + r.stderr          # nothing left behind


async def test_rmdir_keeps_a_temp_directory_holding_anything_else(any_store, keyfile):
    """Only what sealfs itself makes is removed: a sealfs.tmp.* directory with other
    content makes the parent not empty (nothing inside it is touched)."""
    factory, url, env, _ = any_store
    vol = await open_store(factory, keyfile)
    try:
        await vol.mkdir("/p")
        tmp = await plant_mkdir_leftover(vol, "/p", extra="not-ours")
        with pytest.raises(OSError) as err:
            await vol.rmdir("/p")
        assert err.value.errno == 39                     # ENOTEMPTY
        assert sorted(await vol.backend.listdir(tmp)) == ["not-ours", "sealfs.dir"]
        assert [n for n, _ in await vol.listdir("/")] == ["p"]
    finally:
        await vol.close()


@pytest.mark.slow
def test_sync_replaces_changed_files_through_its_temporaries(any_store, keyfile, tmp_path):
    """On both backends: a changed file is placed over the old one, a long name too, and
    no temporary is left in the store."""
    _factory, url, env, where = any_store
    src = tmp_path / "src"
    src.mkdir()
    long_name = "long" * 50
    def stamp(p: Path, t: int) -> None:       # SMB keeps times to 100 ns
        os.utime(p, ns=(t, t), follow_symlinks=False)
    for name in ("a", long_name, ".sealfs-sync.x.part"):
        (src / name).write_bytes(b"first " + name.encode())
        stamp(src / name, 1_600_000_000_000_000_000)
    os.symlink("a", src / "link")
    stamp(src / "link", 1_600_000_000_000_000_000)
    assert run("sync", src, url, "--keyfile", keyfile, env=env).returncode == 0
    for name in ("a", long_name, ".sealfs-sync.x.part"):
        (src / name).write_bytes(b"second, longer " + name.encode())
        stamp(src / name, 1_700_000_000_000_000_000)
    (src / "link").unlink()
    os.symlink(long_name, src / "link")
    stamp(src / "link", 1_700_000_000_000_000_000)
    r = run("sync", src, url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stderr
    assert sync_summary(r) == \
        f"sync: 4 copied ({sum(p.lstat().st_size for p in src.iterdir() if p.is_file() and not p.is_symlink())} bytes), " \
        "0 deleted, 0 unchanged, 0 errors"
    assert not list(where.rglob("sealfs.tmp.*"))
    out = tmp_path / "out"
    r = run("restore", url, out, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stderr
    assert snapshot(out) == snapshot(src)


@pytest.mark.slow
def test_an_unchanged_tree_is_not_copied_again_whatever_the_time_resolution(
        any_store, keyfile, tmp_path):
    """ext4 keeps nanoseconds, SMB 100 ns steps: the second sync of an unchanged tree
    copies nothing on either backend (exact comparison re-copied almost every file)."""
    _factory, url, env, _where = any_store
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        p = src / "d" / f"f{i}"
        p.write_bytes(b"x" * i)
        t = 1_600_000_000_000_000_000 + i * 1_000_000_007      # not a multiple of 100 ns
        os.utime(p, ns=(t, t))
    os.symlink("f1", src / "link")
    os.utime(src / "link", ns=(1_600_000_000_123_456_789,) * 2, follow_symlinks=False)
    os.utime(src / "d", ns=(1_600_000_000_987_654_321,) * 2)
    assert run("sync", src, url, "--keyfile", keyfile, env=env).returncode == 0
    r = run("sync", src, url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stderr
    assert sync_summary(r) == "sync: 0 copied (0 bytes), 0 deleted, 6 unchanged, 0 errors"
