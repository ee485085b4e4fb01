"""Close-to-open for metadata: another host's chmod, chown or setxattr of a file or a
directory (a rewrite of its sealed header or record, nothing else) shows on this mount
within the kernel's attribute and entry timeouts, on every backend.

The other host is a second mount of the same store, with its own run and state
directories (its own per-volume lock and pins), as a mount on another machine would be.
Each check polls for the new value until a deadline: what the mount shows before it is
not asserted (the kernel may answer from its caches until they time out)."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sealfs.fs.fuse.tuning import ATTR_TIMEOUT, ENTRY_TIMEOUT
from tests.mounting import Mount

#: the kernel's caches time out, then the mount's answer must be the new one; the
#: margin is for a loaded machine
BOUND = ATTR_TIMEOUT + ENTRY_TIMEOUT + 3.0


@pytest.fixture
def other(mounted, tmp_path: Path) -> Iterator[Mount]:
    """A second mount of mounted's store: another host."""
    env = dict(mounted.env)
    env["SEALFS_STATE_DIR"] = str(tmp_path / "other-state")
    env["SEALFS_RUN_DIR"] = str(tmp_path / "other-run")
    mount = Mount(mounted.store, tmp_path / "other-mnt", mounted.keyfile, env=env).start()
    try:
        yield mount
    finally:
        mount.close()


def _eventually(what: str, probe: Callable[[], object], want: object) -> None:
    """probe() returns want before the deadline (it may answer otherwise until then)."""
    deadline = time.monotonic() + BOUND
    while True:
        got = probe()
        if got == want:
            return
        assert time.monotonic() < deadline, f"{what}: still {got!r}, not {want!r}, after {BOUND} s"
        time.sleep(0.1)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _owner(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def _listed_modes(directory: Path) -> dict[str, int]:
    """The modes a listing gives (readdirplus fills the kernel's attributes from it)."""
    with os.scandir(directory) as entries:
        return {e.name: stat.S_IMODE(e.stat(follow_symlinks=False).st_mode) for e in entries}


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        return None


def _warm(*paths: Path) -> None:
    """This mount has resolved, stat'ed, listed and asked for the attributes of each."""
    for path in paths:
        os.stat(path)
        os.listxattr(path)
        assert _xattr(path, "user.k") is None
        if path.is_dir():
            os.listdir(path)


def test_another_hosts_chmod_of_a_file_and_a_directory_shows(mounted, other):
    mnt, theirs = mounted.mountpoint, other.mountpoint
    (mnt / "d" / "sub").mkdir(parents=True)
    (mnt / "d" / "f").write_bytes(b"data")
    os.chmod(mnt / "d" / "f", 0o644)
    os.chmod(mnt / "d" / "sub", 0o755)
    _warm(mnt / "d", mnt / "d" / "f", mnt / "d" / "sub")
    assert _listed_modes(mnt / "d") == {"f": 0o644, "sub": 0o755}

    os.chmod(theirs / "d" / "f", 0o600)
    os.chmod(theirs / "d" / "sub", 0o700)
    _eventually("the file's mode", lambda: _mode(mnt / "d" / "f"), 0o600)
    _eventually("the directory's mode", lambda: _mode(mnt / "d" / "sub"), 0o700)
    _eventually("the listed modes", lambda: _listed_modes(mnt / "d"), {"f": 0o600, "sub": 0o700})
    assert (mnt / "d" / "f").read_bytes() == b"data"


def test_another_hosts_setxattr_of_a_file_and_a_directory_shows(mounted, other):
    mnt, theirs = mounted.mountpoint, other.mountpoint
    (mnt / "d" / "sub").mkdir(parents=True)
    (mnt / "d" / "f").write_bytes(b"data")
    _warm(mnt / "d", mnt / "d" / "f", mnt / "d" / "sub")

    os.setxattr(theirs / "d" / "f", "user.k", b"file")
    os.setxattr(theirs / "d" / "sub", "user.k", b"dir")
    _eventually("the file's attribute", lambda: _xattr(mnt / "d" / "f", "user.k"), b"file")
    _eventually("the directory's attribute", lambda: _xattr(mnt / "d" / "sub", "user.k"), b"dir")
    assert os.listxattr(mnt / "d" / "f") == ["user.k"]
    assert os.listxattr(mnt / "d" / "sub") == ["user.k"]

    os.removexattr(theirs / "d" / "f", "user.k")
    os.removexattr(theirs / "d" / "sub", "user.k")
    _eventually("the file's attribute removed", lambda: os.listxattr(mnt / "d" / "f"), [])
    _eventually("the directory's attribute removed", lambda: os.listxattr(mnt / "d" / "sub"), [])


def test_another_hosts_change_of_the_root_directory_shows(mounted, other):
    mnt, theirs = mounted.mountpoint, other.mountpoint
    os.chmod(mnt, 0o755)
    _warm(mnt)
    os.chmod(theirs, 0o751)
    os.setxattr(theirs, "user.k", b"root")
    _eventually("the root's mode", lambda: _mode(mnt), 0o751)
    _eventually("the root's attribute", lambda: _xattr(mnt, "user.k"), b"root")


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_another_hosts_chown_of_a_file_and_a_directory_shows(mounted, other):
    mnt, theirs = mounted.mountpoint, other.mountpoint
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(b"data")
    _warm(mnt / "d", mnt / "d" / "f")
    os.chown(theirs / "d" / "f", 1234, 5678)
    os.chown(theirs / "d", 4321, 8765)
    _eventually("the file's owner", lambda: _owner(mnt / "d" / "f"), (1234, 5678))
    _eventually("the directory's owner", lambda: _owner(mnt / "d"), (4321, 8765))
