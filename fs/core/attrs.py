"""What stat(2) and a listing show for a path: attributes, and entries that failed to show.

Shared by the volume, the FUSE frontend and the tools: plain values, no I/O.
"""

from __future__ import annotations

import stat as stat_module
from collections.abc import Iterable
from dataclasses import dataclass

from ...backends.base import BackendStat
from ...crypto.format.header import Kind

_KIND_TO_IFMT = {
    Kind.REGULAR: stat_module.S_IFREG, Kind.SYMLINK: stat_module.S_IFLNK,
    Kind.FIFO: stat_module.S_IFIFO, Kind.CHAR: stat_module.S_IFCHR,
    Kind.BLOCK: stat_module.S_IFBLK, Kind.SOCKET: stat_module.S_IFSOCK,
    Kind.DIRECTORY: stat_module.S_IFDIR,
}
IFMT_TO_KIND = {v: k for k, v in _KIND_TO_IFMT.items()}


@dataclass(frozen=True)
class Attr:
    """What stat(2) shows for a path: sealed metadata + backend size, times, links."""

    kind: Kind
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    identity: bytes           # file id (shared by hard links) or directory id
    #: False for a listed directory whose subdirectories were not counted (SMB): its
    #: nlink is a guess, not to be cached by the kernel
    nlink_known: bool = True
    #: whether the inode has extended attributes (its sealed flag): tools skip reading
    #: the blob of every entry that has none
    xattrs: bool = False

    @property
    def is_dir(self) -> bool:
        return self.kind == Kind.DIRECTORY

    @property
    def st_mode(self) -> int:
        return _KIND_TO_IFMT[self.kind] | (self.mode & 0o7777)

    @property
    def unreadable(self) -> bool:
        """A placeholder for a name whose header or sealfs.dir failed authentication."""
        return self.identity.startswith(_UNREADABLE)


_UNREADABLE = b"unreadable\0"


@dataclass(frozen=True)
class ListingProblem:
    """A store entry that failed authentication, or that sealfs never writes (planted).

    The store is untrusted input: such an entry is never shown under a name it cannot
    prove, and never silently dropped either. Tools count it as an integrity error;
    the mount logs it (and lists the name, when that decrypted, as unreadable)."""

    bpath: str                  # the entry's ciphertext path in the store
    reason: str
    parent: str                 # the plaintext directory it was listed in ("" = root)
    bstat: BackendStat
    name: str | None = None     # its plaintext name, when the name itself authenticated

    @property
    def path(self) -> str | None:
        if self.name is None:
            return None
        return f"{self.parent}/{self.name}" if self.parent else self.name

    def placeholder(self) -> Attr:
        """What a listing shows for a name that decrypted over an object that did not:
        a name whose every stat and open fail with EIO (its real type and mode are
        sealed in the damaged object)."""
        b = self.bstat
        kind = Kind.DIRECTORY if b.is_dir else Kind.REGULAR
        return Attr(kind, 0, 0, 0, 0, 2 if b.is_dir else 1, b.atime_ns, b.mtime_ns,
                    b.ctime_ns, 0, _UNREADABLE + self.bpath.encode())


class Listing(list):
    """listdir's (name, Attr) pairs of the entries that authenticated; .problems holds
    the ones that did not, for the caller to report and count."""

    def __init__(self, entries=(), problems: Iterable[ListingProblem] = ()) -> None:
        super().__init__(entries)
        self.problems: list[ListingProblem] = list(problems)

