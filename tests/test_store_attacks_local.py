"""The store is untrusted input: attacks planted in a local store, then the normal commands
run as root. Nothing outside the store may change, nothing may hang, and the planted
entry is reported.

Each attack runs twice where it goes through the CLI: with openat2 (this kernel), and on
a "kernel without openat2" (tests/no_openat2.py, a seccomp filter), where the local
backend walks each path one O_NOFOLLOW component at a time.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tests.mounting as mounting
from sealfs.crypto.format.constants import JOURNAL_DIR
from sealfs.crypto.format.header import HEADER_SIZE, read_header_public
from tests.mounting import Mount, init_store
from tests.storepaths import storage_path

LAUNCHER = str(Path(__file__).with_name("no_openat2.py"))
CLI = [sys.executable, "-m", "sealfs.fs.cli"]
TIMEOUT = 60
PRECIOUS = b"root's precious file, must never change\n" * 100


@pytest.fixture(params=["openat2", "walk"])
def cli_prefix(request, monkeypatch) -> list[str]:
    """The sealfs command line, with or without openat2 (the mounts started here too)."""
    if request.param == "openat2":
        return CLI
    prefix = [sys.executable, LAUNCHER, *CLI]
    monkeypatch.setattr(mounting, "SEALFS", prefix)
    return prefix


def run(prefix: list[str], *args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """A sealfs command; one that hangs fails the test (TimeoutExpired)."""
    return subprocess.run([*prefix, *map(str, args)], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def output(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr).decode("utf-8", "replace")


def victim(tmp_path: Path, name: str = "victim", mode: int = 0o640) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    path = outside / name
    path.write_bytes(PRECIOUS)
    path.chmod(mode)
    return path


def assert_untouched(path: Path, mode: int = 0o640) -> None:
    assert path.read_bytes() == PRECIOUS, f"{path} outside the store was written"
    assert path.stat().st_mode & 0o7777 == mode, f"{path} outside the store was chmodded"


def snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def entries(store: Path, keyfile: Path, *, dirs: bool) -> list[Path]:
    """The encrypted entries of the root directory (in its storage; not sealfs.*
    bookkeeping): files, or directories' stubs."""
    return sorted(p for p in storage_path(store, keyfile, "").iterdir()
                  if not p.name.startswith("sealfs.") and p.is_dir() == dirs)


def file_id(path: Path) -> bytes:
    with open(path, "rb") as f:
        return read_header_public(f.read(HEADER_SIZE))[1]


def new_store(prefix: list[str], tmp_path: Path, keyfile: Path, files: dict[str, bytes]) -> Path:
    store = tmp_path / "store"
    result = run(prefix, "init", store, "--keyfile", keyfile, "--chunk-size", "4K")
    assert result.returncode == 0, output(result)
    for name, data in files.items():
        local = tmp_path / "local.tmp"
        local.write_bytes(data)
        if "/" in name.strip("/"):
            result = run(prefix, "mkdir", "-p", store, name.rsplit("/", 1)[0], "--keyfile", keyfile)
            assert result.returncode == 0, output(result)
        result = run(prefix, "put", store, local, name, "--keyfile", keyfile)
        assert result.returncode == 0, output(result)
    return store


# -- the write journal -----------------------------------------------------------------

def test_journal_symlink_does_not_truncate_its_target(cli_prefix, tmp_path, keyfile):
    """sealfs.journal/<file id> made a symlink: the next in-place rewrite used to open it
    O_CREAT and truncate the link's target. Now the flush fails with EIO, target intact."""
    store = tmp_path / "store"
    init_store(store, keyfile)
    target = victim(tmp_path)
    with Mount(store, tmp_path / "mnt", keyfile) as m:
        (m.mountpoint / "f").write_bytes(os.urandom(3 * 65536))
        (ciphertext,) = entries(store, keyfile, dirs=False)
        (store / JOURNAL_DIR).mkdir(exist_ok=True)
        os.symlink(target, store / JOURNAL_DIR / file_id(ciphertext).hex())
        errors = []
        fd = os.open(m.mountpoint / "f", os.O_RDWR)
        try:
            os.pwrite(fd, b"x" * 20000, 70000)        # rewrites a chunk where it lies
            os.fsync(fd)
        except OSError as exc:
            errors.append(exc.errno)
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                errors.append(exc.errno)
        assert errno.EIO in errors
        assert_untouched(target)
    assert "symbolic link" in m.log_text()


def test_journal_dir_symlink_fsck_repair_deletes_nothing_outside(cli_prefix, tmp_path, keyfile):
    """sealfs.journal made a symlink to a directory: `fsck --repair` used to delete every
    hex-named file there as an "orphaned write journal"."""
    store = new_store(cli_prefix, tmp_path, keyfile, {"/a": b"a" * 5000})
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("00", "deadbeef", "0123456789abcdef0123456789abcdef", "notes"):
        (outside / name).write_bytes(PRECIOUS)
    before = snapshot(outside)
    shutil.rmtree(store / JOURNAL_DIR, ignore_errors=True)
    os.symlink(outside, store / JOURNAL_DIR)

    checked = run(cli_prefix, "fsck", store, "--keyfile", keyfile)
    assert checked.returncode == 4, output(checked)
    assert f"PROBLEM: {store}/{JOURNAL_DIR} (ciphertext path): " in output(checked)
    assert snapshot(outside) == before

    repaired = run(cli_prefix, "fsck", "--repair", store, "--keyfile", keyfile)
    text = output(repaired)
    assert repaired.returncode == 4, text              # tampering stays a problem
    assert f"PROBLEM: {store}/{JOURNAL_DIR} (ciphertext path): " in text
    assert f"REPAIRED: {store}/{JOURNAL_DIR} (ciphertext path): removed the planted entry" in text
    assert snapshot(outside) == before
    assert not os.path.lexists(store / JOURNAL_DIR)    # the link itself went
    again = run(cli_prefix, "fsck", store, "--keyfile", keyfile)
    assert again.returncode == 0, output(again)


@pytest.mark.parametrize("plant", ["fifo", "symlink"])
def test_journal_entry_planted_fsck_reports_it(cli_prefix, tmp_path, keyfile, plant):
    """A FIFO under a live file's journal name used to hang fsck (a blocking open); a
    symlink there was read through. Both are reported, and --repair removes only the entry."""
    store = new_store(cli_prefix, tmp_path, keyfile, {"/a": b"a" * 9000})
    (ciphertext,) = entries(store, keyfile, dirs=False)
    target = victim(tmp_path)
    (store / JOURNAL_DIR).mkdir(exist_ok=True)
    journal = store / JOURNAL_DIR / file_id(ciphertext).hex()
    if plant == "fifo":
        os.mkfifo(journal)
    else:
        os.symlink(target, journal)

    repaired = run(cli_prefix, "fsck", "--repair", store, "--keyfile", keyfile)
    text = output(repaired)
    where = f"{store}/{JOURNAL_DIR}/{journal.name} (ciphertext path)"
    assert repaired.returncode == 4, text
    assert f"PROBLEM: {where}: " in text
    assert f"REPAIRED: {where}: removed the planted entry" in text
    assert not os.path.lexists(journal)
    assert_untouched(target)
    cat = run(cli_prefix, "cat", store, "/a", "--keyfile", keyfile)
    assert cat.returncode == 0 and cat.stdout == b"a" * 9000, output(cat)


# -- directory records -----------------------------------------------------------------

def test_chmod_of_directory_with_symlinked_record(cli_prefix, tmp_path, keyfile):
    """A directory's sealfs.dir swapped for a symlink: chmod used to overwrite the first
    bytes of the link's target with the new sealed record."""
    store = tmp_path / "store"
    init_store(store, keyfile)
    target = victim(tmp_path)
    with Mount(store, tmp_path / "mnt", keyfile) as m:
        (m.mountpoint / "d").mkdir()
        (cdir,) = entries(store, keyfile, dirs=True)
        record = cdir / "sealfs.dir"
        record.unlink()
        os.symlink(target, record)
        with pytest.raises(OSError) as caught:
            os.chmod(m.mountpoint / "d", 0o700)
        assert caught.value.errno == errno.EIO
        assert_untouched(target)
        assert os.path.islink(record)
    assert "symbolic link" in m.log_text()


# -- listing -----------------------------------------------------------------------------

def test_ls_with_fifo_planted_under_a_file_name_does_not_hang(cli_prefix, tmp_path, keyfile):
    """A FIFO under a file's encrypted name: `sealfs ls` used to block forever opening it."""
    store = new_store(cli_prefix, tmp_path, keyfile, {"/a": b"a" * 100, "/b": b"b" * 100})
    planted = entries(store, keyfile, dirs=False)[0]
    planted.unlink()
    os.mkfifo(planted)
    result = run(cli_prefix, "ls", store, "/", "--keyfile", keyfile, timeout=30)
    text = output(result)
    assert result.returncode != 0, text
    assert planted.name in text and "FIFO" in text, text


def test_ls_with_symlink_to_directory_planted_under_a_file_name(cli_prefix, tmp_path, keyfile):
    """A symlink to a directory under a file's name used to be followed (the listing
    died with "Is a directory"); it is reported as what it is."""
    store = new_store(cli_prefix, tmp_path, keyfile, {"/a": b"a" * 100, "/b": b"b" * 100})
    planted = entries(store, keyfile, dirs=False)[0]
    planted.unlink()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, planted)
    result = run(cli_prefix, "ls", "-l", store, "/", "--keyfile", keyfile, timeout=30)
    text = output(result)
    assert result.returncode != 0, text
    assert planted.name in text and "symbolic link" in text, text


def test_mount_with_fifo_planted_stays_responsive(cli_prefix, tmp_path, keyfile):
    """The same FIFO used to freeze the whole mount (a blocking open on the event loop)."""
    store = tmp_path / "store"
    init_store(store, keyfile)
    with Mount(store, tmp_path / "mnt", keyfile) as m:
        (m.mountpoint / "a").write_bytes(b"a" * 100)
        (m.mountpoint / "b").write_bytes(b"b" * 100)
        planted = entries(store, keyfile, dirs=False)[0]
        planted.unlink()
        os.mkfifo(planted)
        on_mount(m, "ls", "-l", m.mountpoint)
        failed = [n for n in ("a", "b") if on_mount(m, "cat", m.mountpoint / n).returncode]
        assert len(failed) == 1                       # the other file still reads
        assert os.statvfs(m.mountpoint)


def on_mount(m: Mount, *argv, timeout: float = 30) -> subprocess.CompletedProcess:
    """A command on the mount; a frozen mount is killed (its waiters cannot be) and fails
    the test instead of hanging it."""
    proc = subprocess.Popen([*map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        m.kill()
        proc.kill()
        proc.communicate()
        pytest.fail(f"{argv[0]} on the mount hung for {timeout} s: the mount froze")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# -- paths leading out of the store ------------------------------------------------------

def test_directory_swapped_for_symlink_under_a_live_mount(cli_prefix, tmp_path, keyfile):
    """A directory's storage the mount knows, replaced by a symlink to a copy of it
    elsewhere: creating, writing and removing in it (the mount does not stat every
    component again) used to happen there, outside the store."""
    store = tmp_path / "store"
    init_store(store, keyfile)
    with Mount(store, tmp_path / "mnt", keyfile) as m:
        e = m.mountpoint / "d" / "e"
        e.mkdir(parents=True)
        (e / "x").write_bytes(b"x" * 100)
        cdir = storage_path(store, keyfile, "d/e")
        outside = tmp_path / "outside"
        outside.mkdir()
        shutil.copytree(cdir, outside / "d")
        shutil.rmtree(cdir)
        os.symlink(outside / "d", cdir)
        before = snapshot(outside)
        for attempt in (lambda: (e / "y").write_bytes(b"y" * 100),
                        lambda: (e / "x").write_bytes(b"z" * 100),
                        lambda: (e / "sub").mkdir(),
                        lambda: (e / "x").unlink()):
            with pytest.raises(OSError):
                attempt()
        assert snapshot(outside) == before
        assert os.path.islink(cdir)


def test_fallback_walk_is_what_runs_without_openat2():
    """The "walk" runs above are real: under the launcher the backend sees no openat2."""
    code = ("import os; from sealfs.backends.local import LocalBackend as L; b = L('/tmp'); "
            "b._root(); print(b._openat2)")
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    walked = subprocess.run([sys.executable, LAUNCHER, sys.executable, "-c", code],
                            capture_output=True, timeout=30)
    assert plain.stdout.strip() == b"True" and walked.stdout.strip() == b"False", \
        (plain.stderr, walked.stderr)
