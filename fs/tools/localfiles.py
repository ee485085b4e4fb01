"""Plaintext written into local directories that others may write to (`get`, `restore`).

Every step goes through a directory descriptor and never follows a symlink: directories
are opened one component at a time with O_NOFOLLOW, a file is created under a fresh random
name with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600 (its plaintext is private while it is
written), given its owner, mode and times through its own descriptor, and renamed over its
name relative to the directory. So a planted or swapped-in symlink cannot make root write,
chmod or chown anything outside the tree, and a temporary never takes over a name a user
already has (O_EXCL: a taken name means another random one). A temporary is removed only
by the run that made it; no name is ever deleted for looking like one of ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_module
from collections.abc import Callable
from typing import BinaryIO

TEMP_PREFIX = ".sealfs-part."
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ATTEMPTS = 16


def temp_name() -> str:
    return f"{TEMP_PREFIX}{os.urandom(8).hex()}"


def open_dir(root_fd: int, rel: str) -> int:
    """A descriptor of the directory rel below root_fd, reached without following any
    symlink (ELOOP or ENOTDIR where one is in the way)."""
    fd = os.dup(root_fd)
    for part in rel.split("/") if rel else ():
        try:
            child = os.open(part, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class NewFile:
    """A private temporary file in a directory, renamed over its name once complete."""

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd
        for _ in range(_ATTEMPTS):
            name = temp_name()
            try:
                fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name", name)
        self.name: str | None = name
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def place(self, name: str, mode: int, atime_ns: int, mtime_ns: int,
              owner: tuple[int, int] | None = None,
              xattrs: Callable[[int], None] | None = None) -> None:
        """Owner, then mode (chown clears setuid/setgid), then xattrs(fd) (chown clears
        security.capability), then times, all on the descriptor; then rename over name."""
        self.file.flush()
        fd = self.file.fileno()
        if owner is not None:
            with contextlib.suppress(OSError):
                os.fchown(fd, *owner)
        os.fchmod(fd, mode & 0o7777)
        if xattrs is not None:
            xattrs(fd)
        os.utime(fd, ns=(atime_ns, mtime_ns))
        self.file.close()
        os.replace(self.name, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.name = None

    def discard(self) -> None:
        """Close and remove the temporary (ours: this object created it)."""
        with contextlib.suppress(OSError):
            self.file.close()
        if self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=self.dir_fd)
            self.name = None


def place_symlink(dir_fd: int, name: str, target: str, atime_ns: int, mtime_ns: int,
                  owner: tuple[int, int] | None = None,
                  xattrs: Callable[[str], None] | None = None) -> None:
    """A symlink made under a random temporary name, given its owner, xattrs(temporary
    name) and times without following it, then renamed over name."""
    for _ in range(_ATTEMPTS):
        tmp = temp_name()
        try:
            os.symlink(target, tmp, dir_fd=dir_fd)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", tmp)
    try:
        if owner is not None:
            with contextlib.suppress(OSError):
                os.chown(tmp, *owner, dir_fd=dir_fd, follow_symlinks=False)
        if xattrs is not None:
            xattrs(tmp)
        os.utime(tmp, ns=(atime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def make_dir(parent_fd: int, name: str, mode: int) -> int:
    """The directory name in parent_fd, created if missing (a non-directory in the way is
    removed, a symlink included, never followed), with mode set: its descriptor."""
    st = lstat_at(parent_fd, name)
    if st is not None and not stat_module.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_source(path: str | os.PathLike[str]) -> BinaryIO:
    """A file to read, opened without following a symlink or blocking on a FIFO that was
    swapped in after it was scanned as a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")
