"""POSIX semantics through a real mount, checked against what ext4 does."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.storepaths import storage_path

CHUNK = 64 * 1024


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_open_flags_creat_excl_trunc_append(mounted):
    p = mounted.mountpoint / "f"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"hello world")
    os.close(fd)
    assert errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"!!")
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"??")            # O_APPEND ignores the offset
    os.close(fd)
    assert p.read_bytes() == b"hello world!!??"
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert p.read_bytes() == b""
    assert stat.S_IMODE(p.stat().st_mode) == 0o640


def test_reads_and_writes_at_any_offset_across_chunks(mounted):
    p = mounted.mountpoint / "f"
    model = bytearray(os.urandom(3 * CHUNK + 11))
    p.write_bytes(model)
    with open(p, "r+b") as f:
        for offset, length in [(CHUNK - 5, 10), (0, 1), (2 * CHUNK, CHUNK + 3), (len(model) - 1, 40)]:
            data = os.urandom(length)
            f.seek(offset)
            f.write(data)
            end = offset + length
            if end > len(model):
                model.extend(bytes(end - len(model)))
            model[offset:end] = data
        f.flush()
        f.seek(CHUNK - 7)
        assert f.read(20) == bytes(model[CHUNK - 7:CHUNK + 13])
    assert p.read_bytes() == bytes(model)
    mounted.remount()
    assert p.read_bytes() == bytes(model)


def test_writes_past_eof_and_truncate_leave_holes_that_read_as_zeros(mounted):
    p = mounted.mountpoint / "sparse"
    with open(p, "wb") as f:
        f.write(b"start")
        f.seek(5 * CHUNK + 100)
        f.write(b"end")
    data = p.read_bytes()
    assert len(data) == 5 * CHUNK + 103
    assert data[:5] == b"start" and data[-3:] == b"end"
    assert data[5:-3] == bytes(len(data) - 8)
    os.truncate(p, 10 * CHUNK)
    assert p.stat().st_size == 10 * CHUNK
    assert p.read_bytes()[5 * CHUNK + 103:] == bytes(5 * CHUNK - 103)
    os.truncate(p, 3)
    os.truncate(p, 2 * CHUNK)
    assert p.read_bytes() == b"sta" + bytes(2 * CHUNK - 3)
    mounted.remount()
    assert p.read_bytes() == b"sta" + bytes(2 * CHUNK - 3)


def test_ftruncate_on_an_open_handle(mounted):
    p = mounted.mountpoint / "f"
    with open(p, "w+b") as f:
        f.write(b"x" * (CHUNK + 10))
        f.flush()
        os.ftruncate(f.fileno(), 7)
        assert os.fstat(f.fileno()).st_size == 7
        f.seek(0)
        assert f.read() == b"x" * 7
    assert p.read_bytes() == b"x" * 7


def test_unlinked_open_file_stays_readable_and_writable_until_closed(mounted):
    p = mounted.mountpoint / "victim"
    p.write_bytes(b"still here")
    fd = os.open(p, os.O_RDWR)
    os.unlink(p)
    assert not p.exists()
    assert os.pread(fd, 100, 0) == b"still here"
    os.pwrite(fd, b"STILL", 0)
    assert os.pread(fd, 100, 0) == b"STILL here"
    assert os.fstat(fd).st_size == 10
    os.close(fd)
    assert os.listdir(mounted.mountpoint) == []


def test_rename_replaces_existing_file_atomically(mounted):
    m = mounted.mountpoint
    (m / "a").write_bytes(b"new")
    (m / "b").write_bytes(b"old")
    os.rename(m / "a", m / "b")
    assert (m / "b").read_bytes() == b"new"
    assert sorted(os.listdir(m)) == ["b"]


def test_rename_over_an_open_file_keeps_the_open_handle_working(mounted):
    m = mounted.mountpoint
    (m / "a").write_bytes(b"new")
    (m / "b").write_bytes(b"old")
    with open(m / "b", "rb") as f:
        os.rename(m / "a", m / "b")
        assert f.read() == b"old"
    assert (m / "b").read_bytes() == b"new"


@pytest.mark.store_dir
def test_a_file_being_read_ahead_can_be_renamed_over_unlinked_and_rewritten(mounted):
    """Sequential reads load the next chunks in the background, in batches (on SMB over
    both connections, each with a handle of its own): none of that may keep a name busy,
    hide a rename or serve bytes older than a completed write."""
    m = mounted.mountpoint
    mib = 1024 * 1024
    old = os.urandom(24 * mib)
    (m / "b").write_bytes(old)
    (m / "a").write_bytes(b"new")
    with open(m / "b", "rb", buffering=0) as f:
        assert f.read(4 * mib) == old[:4 * mib]        # the read-ahead is under way now
        os.rename(m / "a", m / "b")
        assert f.read() == old[4 * mib:]
    assert (m / "b").read_bytes() == b"new"
    (m / "c").write_bytes(old)
    with open(m / "c", "rb", buffering=0) as f:
        assert f.read(4 * mib) == old[:4 * mib]
        os.unlink(m / "c")
        assert f.read() == old[4 * mib:]
    assert sorted(os.listdir(m)) == ["b"]
    fresh = os.urandom(2 * mib)
    with open(m / "b", "r+b", buffering=0) as f:
        f.write(old)
        os.fsync(f.fileno())
        f.seek(0)
        assert f.read(4 * mib) == old[:4 * mib]
        os.pwrite(f.fileno(), fresh, 9 * mib)
        os.fsync(f.fileno())
        assert f.read() == old[4 * mib:9 * mib] + fresh + old[11 * mib:]
    assert (m / "b").read_bytes() == old[:9 * mib] + fresh + old[11 * mib:]
    os.unlink(m / "b")
    root = storage_path(mounted.store_dir, mounted.keyfile, "")
    assert not [p for p in root.iterdir() if not p.name.startswith("sealfs.")]


def test_rename_over_empty_directory_and_not_over_a_full_one(mounted):
    m = mounted.mountpoint
    (m / "src").mkdir()
    (m / "src" / "inside").write_bytes(b"1")
    (m / "empty").mkdir()
    (m / "full").mkdir()
    (m / "full" / "x").write_bytes(b"2")
    os.rename(m / "src", m / "empty")
    assert (m / "empty" / "inside").read_bytes() == b"1"
    assert errno_of(os.rename, m / "empty", m / "full") == errno.ENOTEMPTY
    assert errno_of(os.rename, m / "full" / "x", m / "empty") == errno.EISDIR
    assert errno_of(os.rename, m / "empty", m / "full" / "x") == errno.ENOTDIR
    assert errno_of(os.rename, m / "empty", m / "empty" / "sub") == errno.EINVAL


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_rename_noreplace(mounted):
    m = mounted.mountpoint
    (m / "a").write_bytes(b"a")
    (m / "b").write_bytes(b"b")
    assert errno_of(_renameat2, m / "a", m / "b", 1) == errno.EEXIST
    assert (m / "b").read_bytes() == b"b"
    _renameat2(m / "a", m / "c", 1)
    assert (m / "c").read_bytes() == b"a"


@pytest.mark.hard_links
def test_hard_links_share_content_and_count(mounted):
    m = mounted.mountpoint
    (m / "d").mkdir()
    (m / "a").write_bytes(b"one")
    os.link(m / "a", m / "d" / "b")
    assert (m / "a").stat().st_nlink == 2
    assert (m / "a").stat().st_ino == (m / "d" / "b").stat().st_ino
    with open(m / "d" / "b", "ab") as f:
        f.write(b"+two")
    assert (m / "a").read_bytes() == b"one+two"
    os.unlink(m / "a")
    assert (m / "d" / "b").stat().st_nlink == 1
    assert (m / "d" / "b").read_bytes() == b"one+two"
    assert errno_of(os.link, m / "d", m / "dl") == errno.EPERM


@pytest.mark.hard_links
def test_unlinking_names_of_an_open_file_drops_its_link_count_at_once(mounted):
    """SMB keeps an open file's unlinked name under a hidden name until the last close;
    the count must not include it (nor may the open file vanish from its other name)."""
    m = mounted.mountpoint
    (m / "a").write_bytes(b"one")
    os.link(m / "a", m / "b")
    fd = os.open(m / "a", os.O_RDWR)
    try:
        os.unlink(m / "b")
        assert not (m / "b").exists()
        assert os.stat(m / "a").st_nlink == 1
        assert os.fstat(fd).st_nlink == 1
        assert (m / "a").read_bytes() == b"one"
        os.unlink(m / "a")
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 10, 0) == b"one"
    finally:
        os.close(fd)
    assert os.listdir(m) == []


@pytest.mark.hard_links
def test_link_counts_are_right_at_once_by_name_and_in_listings(mounted):
    """A directory listing (READDIRPLUS) hands the kernel attributes it caches for a second;
    over SMB the listing itself has no link count, yet stat must never show a stale one."""
    m = mounted.mountpoint
    (m / "d").mkdir()
    (m / "a").write_bytes(b"one")
    os.link(m / "a", m / "b")
    os.link(m / "a", m / "d" / "c")

    def listed(directory):
        with os.scandir(directory) as it:
            return {e.name: e.stat(follow_symlinks=False).st_nlink for e in it if e.is_file()}

    assert [os.stat(m / n).st_nlink for n in ("a", "b", "d/c")] == [3, 3, 3]
    assert listed(m) == {"a": 3, "b": 3} and listed(m / "d") == {"c": 3}
    assert [os.stat(m / n).st_nlink for n in ("a", "b", "d/c")] == [3, 3, 3]
    os.unlink(m / "b")
    assert listed(m) == {"a": 2} and listed(m / "d") == {"c": 2}
    assert os.stat(m / "d" / "c").st_nlink == 2
    (m / "solo").write_bytes(b"x")
    assert listed(m)["solo"] == 1


def test_symlinks(mounted):
    m = mounted.mountpoint
    (m / "target").write_bytes(b"T")
    os.symlink("target", m / "rel")
    os.symlink("/etc/hostname", m / "abs")
    os.symlink("dangling/" + "x" * 200, m / "dangling")
    assert os.readlink(m / "rel") == "target"
    assert (m / "rel").read_bytes() == b"T"
    assert os.readlink(m / "abs") == "/etc/hostname"
    assert stat.S_ISLNK(os.lstat(m / "dangling").st_mode)
    assert os.readlink(m / "dangling") == "dangling/" + "x" * 200
    mounted.remount()
    assert os.readlink(m / "rel") == "target"


def test_mkfifo_and_mknod_as_root(mounted):
    m = mounted.mountpoint
    os.mkfifo(m / "fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(m / "fifo").st_mode)
    os.mknod(m / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(m / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    mounted.remount()
    assert stat.S_ISFIFO(os.lstat(m / "fifo").st_mode)
    assert stat.S_ISCHR(os.lstat(m / "null").st_mode)


def test_chmod_chown_utimens(mounted):
    m = mounted.mountpoint
    p = m / "f"
    p.write_bytes(b"x")
    (m / "d").mkdir()
    os.chmod(p, 0o4751)
    os.chown(p, 1234, 5678)       # chown clears setuid, as on ext4
    assert stat.S_IMODE(p.stat().st_mode) == 0o751
    os.chmod(p, 0o4751)
    os.chmod(m / "d", 0o700)
    os.chown(m / "d", 42, 43)
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    st = p.stat()
    assert stat.S_IMODE(st.st_mode) == 0o4751 and (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns == 2_000_000_000 and st.st_atime_ns == 1_000_000_000
    # UTIME_OMIT keeps mtime, UTIME_NOW sets atime to now
    before = time.time()
    os.utime(p)
    assert p.stat().st_mtime >= before - 2
    mounted.remount()
    st = p.stat()
    assert stat.S_IMODE(st.st_mode) == 0o4751 and (st.st_uid, st.st_gid) == (1234, 5678)
    dst = (m / "d").stat()
    assert stat.S_IMODE(dst.st_mode) == 0o700 and (dst.st_uid, dst.st_gid) == (42, 43)


def test_utime_omit_and_now(mounted):
    p = mounted.mountpoint / "f"
    p.write_bytes(b"x")
    os.utime(p, ns=(5_000_000_000, 6_000_000_000))
    libc = ctypes.CDLL(None, use_errno=True)

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
    UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
    times = (Timespec * 2)(Timespec(0, UTIME_NOW), Timespec(0, UTIME_OMIT))
    assert libc.utimensat(-100, os.fsencode(p), times, 0) == 0
    st = p.stat()
    assert st.st_mtime_ns == 6_000_000_000
    assert abs(st.st_atime - time.time()) < 5


def test_utimens_survives_later_write_back(mounted):
    p = mounted.mountpoint / "f"
    with open(p, "wb") as f:
        f.write(b"data" * 1000)
        f.flush()                  # in sealfs's write-back buffer, not yet on the backend
        os.utime(f.fileno(), ns=(7_000_000_000, 8_000_000_000))
    assert p.stat().st_mtime_ns == 8_000_000_000
    mounted.remount()
    assert p.stat().st_mtime_ns == 8_000_000_000


def test_chmod_does_not_change_mtime(mounted):
    p = mounted.mountpoint / "f"
    p.write_bytes(b"x")
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    os.chmod(p, 0o600)
    mounted.remount()
    assert p.stat().st_mtime_ns == 1_000_000_000


def test_statfs(mounted):
    st = os.statvfs(mounted.mountpoint)
    assert st.f_namemax == 255
    assert st.f_blocks > 0 and st.f_bavail <= st.f_blocks


@pytest.mark.store_dir
def test_fsync_and_fdatasync(mounted):
    p = mounted.mountpoint / "f"
    fd = os.open(p, os.O_CREAT | os.O_RDWR)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.write(fd, b"!")
    os.fdatasync(fd)
    # durable on the backend now: the store's file has grown to header + chunk
    files = [f for f in mounted.store_dir.rglob("*") if f.is_file() and f.name not in ("sealfs.json", "sealfs.dir")]
    assert len(files) == 1 and files[0].stat().st_size > 8
    os.close(fd)


def test_flock_and_fcntl_locks(mounted):
    p = mounted.mountpoint / "lock"
    p.write_bytes(b"x")
    script = ("import fcntl,sys\nf=open(sys.argv[1],'r+')\n"
              "try:\n fcntl.{kind}(f, fcntl.LOCK_EX|fcntl.LOCK_NB{extra})\n print('got')\n"
              "except OSError:\n print('busy')\n")
    with open(p, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        out = subprocess.run(["python3", "-c", script.format(kind="flock", extra=""), str(p)],
                             capture_output=True, text=True).stdout.strip()
        assert out == "busy"
    with open(p, "r+") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        out = subprocess.run(["python3", "-c", script.format(kind="lockf", extra=""), str(p)],
                             capture_output=True, text=True).stdout.strip()
        assert out == "busy"


def test_mmap_reads_and_writes(mounted):
    p = mounted.mountpoint / "m"
    p.write_bytes(bytes(3 * CHUNK))
    with open(p, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
        mm[CHUNK - 2:CHUNK + 2] = b"MMAP"
        mm.flush()
        mm.close()
    assert p.read_bytes()[CHUNK - 2:CHUNK + 2] == b"MMAP"
    mounted.remount()
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        assert mm[CHUNK - 2:CHUNK + 2] == b"MMAP"
        mm.close()


@pytest.mark.heavy
def test_readdir_stays_correct_while_the_directory_changes(mounted):
    d = mounted.mountpoint / "d"
    d.mkdir()
    names = {f"file{i:04d}" for i in range(300)}
    for name in names:
        (d / name).write_bytes(b"")
    seen = []
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 10:
                for j in range(50):
                    (d / f"new{j}").write_bytes(b"")
                (d / "file0000").unlink(missing_ok=True)
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    assert set(seen) - {f"new{j}" for j in range(50)} >= names - {"file0000"}
    assert set(os.listdir(d)) == (names - {"file0000"}) | {f"new{j}" for j in range(50)}


def test_errno_like_ext4(mounted):
    m = mounted.mountpoint
    (m / "f").write_bytes(b"")
    (m / "d").mkdir()
    (m / "d" / "x").write_bytes(b"")
    assert errno_of(os.stat, m / "missing") == errno.ENOENT
    assert errno_of(os.mkdir, m / "d") == errno.EEXIST
    assert errno_of(os.rmdir, m / "d") == errno.ENOTEMPTY
    assert errno_of(os.open, m / "d", os.O_WRONLY) == errno.EISDIR
    assert errno_of(os.unlink, m / "d") == errno.EISDIR
    assert errno_of(os.rmdir, m / "f") == errno.ENOTDIR
    assert errno_of(os.stat, m / "f" / "x") == errno.ENOTDIR
    assert errno_of(os.open, m / ("n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    fd = os.open(m / ("n" * 255), os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    assert ("n" * 255) in os.listdir(m)
    assert errno_of(os.link, m / "f", "/tmp/sealfs-xdev-link") == errno.EXDEV


def test_eacces_with_default_permissions_for_other_users(mounted):
    m = mounted.mountpoint
    (m / "private").write_bytes(b"secret")
    os.chmod(m / "private", 0o600)
    (m / "public").write_bytes(b"hello")
    os.chmod(m / "public", 0o644)
    os.chmod(m, 0o755)
    restore = []
    for parent in m.parents:           # let "nobody" reach the mount point itself
        if parent == Path("/"):
            break
        mode = stat.S_IMODE(parent.stat().st_mode)
        if not mode & 0o001:
            restore.append((parent, mode))
            os.chmod(parent, mode | 0o001)

    def as_nobody(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "/bin/sh", "-c", script], capture_output=True, text=True)
    denied = as_nobody(f"cat '{m / 'private'}'")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    allowed = as_nobody(f"cat '{m / 'public'}'")
    assert allowed.returncode == 0 and allowed.stdout == "hello"
    write = as_nobody(f"echo x > '{m / 'new'}'")
    assert write.returncode != 0 and "Permission denied" in write.stderr
    assert not (m / "new").exists()
    for parent, mode in restore:
        os.chmod(parent, mode)


def test_setgid_directory_passes_its_group_on(mounted):
    d = mounted.mountpoint / "shared"
    d.mkdir()
    os.chown(d, 0, 4321)
    os.chmod(d, 0o2775)
    (d / "f").write_bytes(b"")
    (d / "sub").mkdir()
    assert (d / "f").stat().st_gid == 4321
    assert (d / "sub").stat().st_gid == 4321
    assert (d / "sub").stat().st_mode & stat.S_ISGID
