"""Times, link counts and permissions after every namespace and metadata operation,
through a real mount on every backend, checked against the rules ext4 follows; atime
against a noatime mount's (set at creation and by utimens, moved by nothing else, reads
and listings included).

Each case stats the entries it watches just before its operation and again after it;
every time listed must have moved, every other one must not have. A time that moves
lands at least one timestamp grain later than the stat before (GRAIN is slept between).
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.storepaths import storage_path

# Longer than the kernel's coarse clock tick (a jiffy, <= 10 ms) that stamps local times;
# SMB times have 100 ns steps.
GRAIN = 0.012
NEW = "new"
CLOCK_REALTIME_COARSE = 5    # what the kernel stamps file times with (Linux)


def _write(path: Path, data: bytes, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _ftruncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _with_file(m: Path) -> None:
    (m / "d" / "f").write_bytes(b"0123456789")


def _with_links(m: Path) -> None:
    _with_file(m)
    os.link(m / "d" / "f", m / "e" / "g")


def _with_subdir(m: Path) -> None:
    (m / "d" / "s").mkdir()


def _read_uncached(path: Path) -> None:
    """Read a whole file, past the kernel's page cache (so the read reaches sealfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 65536):
            pass
    finally:
        os.close(fd)


def _list_long(path: Path) -> None:
    """ls -l: the names, and every entry's attributes."""
    with os.scandir(path) as it:
        for entry in it:
            entry.stat(follow_symlinks=False)


@dataclass
class Case:
    """op runs in a mount holding directories d and e (and what setup adds). watch maps an
    entry, by its name before and after the op ("old->new" if it moves), to the times
    that must move ("amc" letters; NEW for an entry the op creates). nlink: link counts
    after the op. Every watched time not listed must stay as it was."""

    name: str
    op: Callable[[Path], None]
    watch: dict[str, str]
    nlink: dict[str, int] = field(default_factory=dict)
    setup: Callable[[Path], None] = lambda m: None
    times: tuple[int, int] | None = None     # (atime, mtime) the op sets on the first entry
    links: bool = False                      # makes hard links: only where the backend has them

    def __str__(self) -> str:
        return self.name


SET_TIMES = (1_500_000_000_123_456_700, 1_600_000_000_987_654_300)

CASES = [
    Case("create", lambda m: (m / "d" / "n").write_bytes(b"x"),
         {"d": "mc", "d/n": NEW, ".": ""}, {"d/n": 1, "d": 2}),
    Case("write", lambda m: _write(m / "d" / "f", b"ab", os.O_WRONLY),
         {"d/f": "mc", "d": ""}, {"d/f": 1}, _with_file),
    Case("append", lambda m: _write(m / "d" / "f", b"ab", os.O_WRONLY | os.O_APPEND),
         {"d/f": "mc", "d": ""}, {"d/f": 1}, _with_file),
    Case("truncate", lambda m: os.truncate(m / "d" / "f", 3),
         {"d/f": "mc", "d": ""}, {"d/f": 1}, _with_file),
    Case("ftruncate", lambda m: _ftruncate(m / "d" / "f", 3),
         {"d/f": "mc", "d": ""}, {"d/f": 1}, _with_file),
    Case("chmod", lambda m: os.chmod(m / "d" / "f", 0o600),
         {"d/f": "c", "d": ""}, {"d/f": 1}, _with_file),
    Case("chown", lambda m: os.chown(m / "d" / "f", 1234, 5678),
         {"d/f": "c", "d": ""}, {"d/f": 1}, _with_file),
    Case("utimens", lambda m: os.utime(m / "d" / "f", ns=SET_TIMES),
         {"d/f": "amc", "d": ""}, {"d/f": 1}, _with_file, times=SET_TIMES),
    Case("link", lambda m: os.link(m / "d" / "f", m / "d" / "g"),
         {"d/f": "c", "d": "mc"}, {"d/f": 2, "d/g": 2}, _with_file, links=True),
    Case("link across directories", lambda m: os.link(m / "d" / "f", m / "e" / "g"),
         {"d/f": "c", "d": "", "e": "mc"}, {"d/f": 2, "e/g": 2}, _with_file, links=True),
    Case("unlink", lambda m: os.unlink(m / "d" / "f"),
         {"e/g": "c", "d": "mc", "e": ""}, {"e/g": 1}, _with_links, links=True),
    Case("unlink the last name", lambda m: os.unlink(m / "d" / "f"),
         {"d": "mc", ".": ""}, {"d": 2}, _with_file),
    Case("rename in a directory", lambda m: os.rename(m / "d" / "f", m / "d" / "h"),
         {"d/f->d/h": "c", "d": "mc", ".": ""}, {"d/h": 1}, _with_file),
    Case("rename across directories", lambda m: os.rename(m / "d" / "f", m / "e" / "f"),
         {"d/f->e/f": "c", "d": "mc", "e": "mc"}, {"e/f": 1, "d": 2, "e": 2}, _with_file),
    Case("rename over an existing file", lambda m: os.rename(m / "d" / "f", m / "e" / "g"),
         {"d/f->e/g": "c", "d": "mc", "e": "mc", "e/k": "c"},
         {"e/g": 1, "e/k": 1},
         lambda m: (_with_file(m), (m / "e" / "g").write_bytes(b"old"),
                    os.link(m / "e" / "g", m / "e" / "k")), links=True),
    Case("mkdir", lambda m: (m / "d" / "s").mkdir(),
         {"d": "mc", "d/s": NEW, ".": ""}, {"d": 3, "d/s": 2}),
    Case("mkdir in a subdirectory", lambda m: (m / "d" / "s" / "t").mkdir(),
         {"d/s": "mc", "d": ""}, {"d": 3, "d/s": 3, "d/s/t": 2}, _with_subdir),
    Case("rmdir", lambda m: (m / "d" / "s").rmdir(),
         {"d": "mc", ".": ""}, {"d": 2}, _with_subdir),
    Case("rename a directory across directories", lambda m: os.rename(m / "d" / "s", m / "e" / "s"),
         {"d/s->e/s": "c", "d": "mc", "e": "mc"}, {"d": 2, "e": 3, "e/s": 2}, _with_subdir),
    Case("symlink", lambda m: os.symlink("f", m / "d" / "l"),
         {"d": "mc", "d/l": NEW}, {"d/l": 1, "d": 2}),
    Case("mkfifo", lambda m: os.mkfifo(m / "d" / "p"),
         {"d": "mc", "d/p": NEW}, {"d/p": 1}),
    Case("mknod", lambda m: os.mknod(m / "d" / "c", 0o600 | stat.S_IFCHR, os.makedev(1, 3)),
         {"d": "mc", "d/c": NEW}, {"d/c": 1}),
    Case("chmod of a fifo", lambda m: os.chmod(m / "d" / "p", 0o600),
         {"d/p": "c", "d": ""}, {"d/p": 1}, lambda m: os.mkfifo(m / "d" / "p")),
    Case("link a symlink", lambda m: os.link(m / "d" / "l", m / "d" / "l2", follow_symlinks=False),
         {"d/l": "c", "d": "mc"}, {"d/l": 2}, lambda m: os.symlink("f", m / "d" / "l"), links=True),
    Case("chmod a directory", lambda m: os.chmod(m / "d", 0o700),
         {"d": "c", ".": ""}, {"d": 2}),
    Case("chown a directory", lambda m: os.chown(m / "d", 1234, 5678),
         {"d": "c", ".": ""}, {"d": 2}),
    Case("utimens a directory", lambda m: os.utime(m / "d", ns=SET_TIMES),
         {"d": "amc", ".": ""}, {"d": 2}, times=SET_TIMES),
    # Reads move no time at all: a sealfs mount is noatime.
    Case("read", lambda m: _read_uncached(m / "d" / "f"),
         {"d/f": "", "d": ""}, {"d/f": 1}, _with_file),
    Case("readdir", lambda m: _list_long(m / "d"),
         {"d": "", "d/f": "", "d/s": "", ".": ""}, {"d": 3},
         lambda m: (_with_file(m), _with_subdir(m))),
    Case("readlink", lambda m: os.readlink(m / "d" / "l"),
         {"d/l": "", "d": ""}, {"d/l": 1}, lambda m: os.symlink("f", m / "d" / "l")),
]

PARAMS = [pytest.param(c, id=str(c), marks=[pytest.mark.hard_links] if c.links else [])
          for c in CASES]

FIELDS = {"a": "st_atime_ns", "m": "st_mtime_ns", "c": "st_ctime_ns"}


def _split(name: str) -> tuple[str, str]:
    before, _, after = name.partition("->")
    return before, after or before


def _run(mounted, case: Case, letters: str) -> list[str]:
    """Run a case; what went wrong with the watched times among letters and link counts."""
    m = mounted.mountpoint
    (m / "d").mkdir()
    (m / "e").mkdir()
    case.setup(m)
    before = {name: os.lstat(m / _split(name)[0]) for name, rule in case.watch.items()
              if rule != NEW}
    time.sleep(GRAIN)
    # (in 100 ns steps: SMB times have no finer ones)
    started = time.clock_gettime_ns(CLOCK_REALTIME_COARSE) // 100 * 100
    case.op(m)
    wrong = []
    fields = {letter: FIELDS[letter] for letter in letters}
    for name, rule in case.watch.items():
        now = os.lstat(m / _split(name)[1])
        if rule == NEW:
            for letter, attr in fields.items():
                if getattr(now, attr) < started:
                    wrong.append(f"{name}: new entry's {letter}time is older than the op")
            continue
        for letter, attr in fields.items():
            old, new = getattr(before[name], attr), getattr(now, attr)
            if case.times is not None and letter in "am" and name == next(iter(case.watch)):
                expected = case.times["am".index(letter)]
                if new != expected:
                    wrong.append(f"{name}: {letter}time {new}, set to {expected}")
                continue
            if letter in rule and new <= old:
                wrong.append(f"{name}: {letter}time did not move")
            elif letter not in rule and new != old:
                wrong.append(f"{name}: {letter}time moved ({old} -> {new})")
    for name, count in case.nlink.items():
        got = os.lstat(m / name).st_nlink
        if got != count:
            wrong.append(f"{name}: nlink {got}, expected {count}")
    return wrong


@pytest.mark.parametrize("case", PARAMS)
def test_times_and_link_counts_move_as_on_ext4_mounted_noatime(mounted, case: Case):
    """mtime and ctime as on ext4, atime as on a noatime mount, one mount per case."""
    wrong = _run(mounted, case, "amc")
    assert not wrong, wrong
    m = mounted.mountpoint
    mounted.remount()
    for name, count in case.nlink.items():
        assert os.lstat(m / name).st_nlink == count, name


def test_the_mount_says_noatime(mounted):
    fields = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    options = [f[3].split(",") for f in fields if f[1] == str(mounted.mountpoint)]
    assert len(options) == 1 and "noatime" in options[0], options


def test_reads_never_move_an_atime_older_than_the_changes(mounted):
    """The case relatime would move, again and again: an atime set back behind the file's
    and directory's mtime and ctime. No read, listing or stat moves it, before or after a
    remount (which drops every cached header and listing); utimens still sets it."""
    m = mounted.mountpoint
    (m / "d").mkdir()
    (m / "d" / "f").write_bytes(b"x" * 70_000)          # two chunks at 64K
    old = (1_000_000_000_000_000_100, 1_000_000_000_000_000_200)
    os.utime(m / "d" / "f", ns=old)
    os.utime(m / "d", ns=old)
    (m / "d" / "f").write_bytes(b"y" * 70_000)          # mtime and ctime move, atime stays

    def atimes() -> tuple[int, int]:
        return os.stat(m / "d" / "f").st_atime_ns, os.stat(m / "d").st_atime_ns

    assert atimes() == (old[0], old[0])
    for _ in range(2):
        for _ in range(2):
            _read_uncached(m / "d" / "f")
            _list_long(m / "d")
            os.listdir(m)
            assert atimes() == (old[0], old[0])
        mounted.remount()
        assert atimes() == (old[0], old[0])
    os.utime(m / "d" / "f", ns=(old[1], old[1]))
    assert atimes() == (old[1], old[0])
    mounted.remount()
    assert atimes() == (old[1], old[0])


@pytest.mark.store_dir
def test_times_stay_after_close_and_remount(mounted):
    """A write's mtime is what stat shows once the file is closed, after a remount and on
    the store: not an older one pinned at close."""
    m = mounted.mountpoint
    p = m / "f"
    p.write_bytes(b"x" * 100)
    first = p.stat()
    time.sleep(GRAIN)
    with open(p, "r+b") as f:
        f.write(b"y")
    closed = p.stat()
    assert closed.st_mtime_ns > first.st_mtime_ns
    assert closed.st_ctime_ns >= closed.st_mtime_ns
    mounted.remount()
    again = p.stat()
    assert again.st_mtime_ns == closed.st_mtime_ns
    assert again.st_ctime_ns >= again.st_mtime_ns
    root = storage_path(mounted.store_dir, mounted.keyfile, "")
    stored = [e for e in os.scandir(root) if not e.name.startswith("sealfs.")]
    assert len(stored) == 1
    assert abs(stored[0].stat().st_mtime_ns - closed.st_mtime_ns) < 1_000_000


def test_a_directory_counts_its_subdirectories_in_listings_and_after_remount(mounted):
    m = mounted.mountpoint
    (m / "a").mkdir()
    for name in ("b", "c", "d"):
        (m / "a" / name).mkdir()
    (m / "a" / "file").write_bytes(b"")
    with os.scandir(m) as it:
        listed = {e.name: e.stat(follow_symlinks=False).st_nlink for e in it}
    assert listed == {"a": 5}
    assert os.stat(m / "a").st_nlink == 5
    os.rename(m / "a" / "b", m / "b")
    assert os.stat(m / "a").st_nlink == 4 and os.stat(m).st_nlink >= 4
    (m / "a" / "c").rmdir()
    assert os.stat(m / "a").st_nlink == 3
    mounted.remount()
    with os.scandir(m) as it:
        listed = {e.name: e.stat(follow_symlinks=False).st_nlink for e in it}
    assert listed == {"a": 3, "b": 2}


def _as_nobody(mountpoint: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/bin/sh", "-c", script], capture_output=True, text=True)


@pytest.fixture
def reachable(mounted):
    """The mount, with every directory above it searchable by others (restored after)."""
    restore = []
    for parent in mounted.mountpoint.parents:
        if parent == Path("/"):
            break
        mode = stat.S_IMODE(parent.stat().st_mode)
        if not mode & 0o001:
            restore.append((parent, mode))
            os.chmod(parent, mode | 0o001)
    os.chmod(mounted.mountpoint, 0o755)
    yield mounted
    for parent, mode in restore:
        os.chmod(parent, mode)


@pytest.mark.hard_links
def test_chmod_through_one_link_holds_for_every_link(reachable):
    """A hard link is one inode: a chmod through one name denies access through all of
    them at once and for good, and stat shows one mode by every name."""
    m = reachable.mountpoint
    (m / "a").write_bytes(b"secret\n")
    os.chmod(m / "a", 0o644)
    os.link(m / "a", m / "b")
    for name in ("a", "b"):                        # both names known to kernel and volume
        assert _as_nobody(m, f"cat '{m / name}'").stdout == "secret\n"
    assert sorted(os.listdir(m)) == ["a", "b"]      # and listed
    os.chmod(m / "a", 0o600)
    deadline = time.monotonic() + 2.5              # past the kernel's attribute timeout
    while time.monotonic() < deadline:
        for name in ("a", "b"):
            assert stat.S_IMODE(os.stat(m / name).st_mode) == 0o600, name
            denied = _as_nobody(m, f"cat '{m / name}'")
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, name
        time.sleep(0.25)


@pytest.mark.hard_links
def test_chmod_and_chown_then_unlink_the_other_names(reachable):
    m = reachable.mountpoint
    (m / "a").write_bytes(b"secret\n")
    os.chmod(m / "a", 0o644)
    os.link(m / "a", m / "b")
    os.link(m / "a", m / "c")
    assert [stat.S_IMODE(os.stat(m / n).st_mode) for n in "abc"] == [0o644] * 3
    assert sorted(os.listdir(m)) == ["a", "b", "c"]
    os.chmod(m / "b", 0o640)
    os.chown(m / "c", 1234, 5678)
    os.unlink(m / "b")
    os.unlink(m / "c")
    st = os.stat(m / "a")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink) == (0o640, 1234, 5678, 1)
    denied = _as_nobody(m, f"cat '{m / 'a'}'")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    reachable.remount()
    st = os.stat(m / "a")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)


def test_rename_whiteout_is_einval(mounted):
    import ctypes
    m = mounted.mountpoint
    (m / "a").write_bytes(b"x")
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_whiteout = -100, 1 << 2
    rc = libc.renameat2(at_fdcwd, os.fsencode(m / "a"), at_fdcwd, os.fsencode(m / "b"),
                        rename_whiteout)
    assert rc == -1 and ctypes.get_errno() == 22          # EINVAL, and nothing moved
    assert sorted(os.listdir(m)) == ["a"]
