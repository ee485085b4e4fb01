"""The one small storage interface every backend implements.

Backends move opaque bytes: everything they see is already sealed, and names are
already encrypted. Paths are relative POSIX strings inside the store ("" is the
store root, components joined by "/"). Errors are OSError with the errno a local
filesystem would give (FileNotFoundError, FileExistsError, ...); transport failures
are BackendError (EIO). Nothing above this layer branches on the backend type: what
differs is declared in Capabilities.
"""

from __future__ import annotations

import abc
import errno
import stat as stat_module
import time
from dataclasses import dataclass, field

import trio


class BackendError(OSError):
    """The backend could not complete a request (connection lost, server error)."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(err, message)

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class ForeignEntryError(BackendError):
    """The store holds an entry sealfs never writes (a symlink, FIFO, socket or device, or
    a directory where a file belongs): someone planted it. It is never opened, followed
    or removed through; the volume reports it by its backend path."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path}: {what} in the store (not written by sealfs)", errno.EIO)
        self.path = path
        self.what = what


class TransportSecurityError(BackendError):
    """The server would not give the transport protection sealfs requires (e.g. SMB encryption)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EPROTO)


@dataclass(frozen=True)
class Capabilities:
    """What the volume may rely on; declared by the backend, never guessed above it."""

    case_insensitive: bool = False
    max_name_length: int = 255
    max_path_length: int = 4096
    hard_links: bool = True
    # SMB keeps an unlinked open file's name (delete pending) and refuses to rename over
    # an open target; such backends need the volume to hide victims NFS-style.
    unlink_open_files: bool = True
    # SMB stamps its own write time when a handle that wrote is closed, unless times were
    # set through that handle; the volume pins the times users saw before closing.
    stamps_write_time_on_close: bool = False
    # The change time reported is a real POSIX ctime (moved by chmod, link, rename...).
    # Samba reports the last write time there: the volume keeps ctime sealed instead.
    real_change_time: bool = True
    # A directory's stat has a POSIX link count (2 + subdirectories). SMB has none: the
    # volume counts the subdirectories itself.
    dir_link_counts: bool = True
    # The finest step of the times the backend keeps: SMB and Azure Files keep 100 ns
    # (FILETIME), so a time set there comes back cut to that step.
    time_resolution_ns: int = 1
    # Adding, removing or renaming an entry moves its directory's mtime and ctime, as on
    # POSIX. Azure Files over REST moves neither: the volume stamps the directory itself
    # (Backend.stamp_dir) after each change of its entries.
    dir_times_follow_entries: bool = True


@dataclass(frozen=True)
class BackendStat:
    size: int
    is_dir: bool
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    # None: this answer cannot tell (an SMB directory listing has no link count field).
    nlink: int | None = 1
    ino: int = 0
    # What the entry is when it is neither a regular file nor a directory ("a FIFO", "a
    # symbolic link", ...), else "": nothing sealfs writes, so in a store it was planted.
    # Listed so it can be reported, never opened.
    foreign: str = ""
    # An opaque value that moves whenever the backend changes the file where ctime cannot
    # tell (0: the backend keeps none). SMB: the server's LastAccessTime, which every
    # SET_INFO of times sealfs sends sets anew, since Samba's change time is only the
    # write time, which a metadata rewrite pins back (backends/smb/messages.py).
    change_mark: int = 0

    @classmethod
    def from_os(cls, st) -> BackendStat:
        return cls(
            size=st.st_size,
            is_dir=stat_module.S_ISDIR(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            atime_ns=st.st_atime_ns,
            ctime_ns=st.st_ctime_ns,
            nlink=st.st_nlink,
            ino=st.st_ino,
            foreign=describe_foreign(st.st_mode) or "",
        )


def describe_foreign(mode: int) -> str | None:
    """What an entry of this st_mode is, if it is something sealfs never writes."""
    if stat_module.S_ISREG(mode) or stat_module.S_ISDIR(mode):
        return None
    if stat_module.S_ISLNK(mode):
        return "a symbolic link"
    if stat_module.S_ISFIFO(mode):
        return "a FIFO"
    if stat_module.S_ISSOCK(mode):
        return "a socket"
    if stat_module.S_ISCHR(mode) or stat_module.S_ISBLK(mode):
        return "a device node"
    return "a special file"


@dataclass(frozen=True)
class BackendStatvfs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_available: int
    files: int
    files_free: int
    max_name_length: int


@dataclass(frozen=True)
class Snapshot:
    """A point-in-time, read-only copy of the store that the server keeps (an Azure share
    snapshot, or a previous version an SMB server offers). The id is what --snapshot takes."""

    id: str
    time_ns: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SoftDelete:
    """Whether the server keeps deleted data for a while: on, off, or None with why not known."""

    enabled: bool | None
    days: int | None = None
    why: str = ""

    def describe(self) -> str:
        if self.enabled is None:
            return f"unknown ({self.why})" if self.why else "unknown"
        if not self.enabled:
            return "off"
        return f"on ({self.days} days)" if self.days else "on"


def snapshots_unsupported(location: str, what: str) -> OSError:
    return OSError(errno.EOPNOTSUPP, f"{location}: {what}")


class Handle(abc.ABC):
    """An open backend file. Backends subclass it to carry their own state."""

    path: str


PAGE_SIZE = 4096
#: read_heads' requests in flight at once: enough to hide a network round trip
_HEADS_IN_FLIGHT = 16


class Backend(abc.ABC):
    """Async, handle-based storage. Blocking client libraries run in worker threads."""

    capabilities: Capabilities = Capabilities()

    #: A short human-readable location, e.g. "/srv/vol" or "smb://host/share/path".
    location: str = ""

    # -- files -------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self, path: str, *, write: bool = False, create: bool = False,
                   exclusive: bool = False) -> Handle:
        """Open a file. create+exclusive fails with FileExistsError if it exists."""

    async def create_file(self, path: str, data: bytes) -> Handle:
        """Create path exclusively (FileExistsError if it exists) with data as its content
        and return it open for writing. On failure no handle stays open; the file may
        exist, and the caller removes it. Backends may do it in one round trip."""
        handle = await self.open(path, write=True, create=True, exclusive=True)
        try:
            await self.write(handle, 0, data)
        except BaseException:
            await self.close(handle)
            raise
        return handle

    @abc.abstractmethod
    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        """Read up to size bytes; fewer only at end of file."""

    @abc.abstractmethod
    async def write(self, handle: Handle, offset: int, data: bytes | memoryview) -> None:
        """Write all of data at offset (the file grows with zeros if offset is past EOF)."""

    def untearable(self, start: int, end: int) -> bool:
        """Whether one write() of bytes [start, end) lands all or nothing if the mount
        dies in the middle of it. Linux copies a write into the page cache a page at a
        time and stops between pages when the writer is killed: within one page it
        cannot tear. Backends that send a write as one message say more."""
        return end > start and start // PAGE_SIZE == (end - 1) // PAGE_SIZE

    async def write_many(self, handle: Handle, writes: list[tuple[int, bytes]]) -> None:
        """Write several (offset, data) pieces; backends may pipeline them."""
        for offset, data in writes:
            await self.write(handle, offset, data)

    async def read_many(self, handle: Handle, reads: list[tuple[int, int]]) -> list[bytes]:
        """Read several (offset, size) pieces; backends may pipeline them."""
        return [await self.read(handle, offset, size) for offset, size in reads]

    async def read_many_pieces(self, handle: Handle,
                               reads: list[tuple[int, int]]) -> list[list[bytes | memoryview]]:
        """read_many with each result as consecutive pieces, for a caller that cuts them
        up anyway: a backend may hand over its receive buffers instead of joining them."""
        return [[data] for data in await self.read_many(handle, reads)]

    async def read_head(self, path: str, size: int) -> tuple[bytes, BackendStat]:
        """The first size bytes of a file and its full stat (link count included), together:
        one round trip where the backend can (a file header while listing a directory)."""
        handle = await self.open(path)
        try:
            return await self.read(handle, 0, size), await self.fstat(handle)
        finally:
            await self.close(handle)

    async def read_heads(self, directory: str, names: list[str],
                         size: int) -> list[tuple[bytes, BackendStat] | OSError]:
        """read_head of several files of one directory, in the order of names; a file that
        cannot be read gives its error in its place. For a listing, which needs the
        header of every file: backends overlap the round trips (this default keeps a few
        read_heads in flight) or save the path walk of each."""
        results: list[tuple[bytes, BackendStat] | OSError] = [OSError()] * len(names)
        todo = iter(enumerate(names))

        async def worker() -> None:
            for i, name in todo:
                try:
                    results[i] = await self.read_head(join(directory, name), size)
                except OSError as exc:
                    results[i] = exc

        async with trio.open_nursery() as nursery:
            for _ in range(min(_HEADS_IN_FLIGHT, len(names))):
                nursery.start_soon(worker)
        return results

    @abc.abstractmethod
    async def truncate(self, handle: Handle, size: int) -> None: ...

    @abc.abstractmethod
    async def flush(self, handle: Handle) -> None:
        """Make written data durable on the server (fsync / SMB FLUSH)."""

    @abc.abstractmethod
    async def close(self, handle: Handle) -> None: ...

    @abc.abstractmethod
    async def fstat(self, handle: Handle) -> BackendStat: ...

    # -- namespace ---------------------------------------------------------------------
    @abc.abstractmethod
    async def stat(self, path: str) -> BackendStat: ...

    async def stat_many(self, paths: list[str]) -> list[BackendStat | OSError]:
        """stat of several paths, in order, each its stat or its error: together, so that
        a lookup needing two (a directory's stub and its storage) waits for one round
        trip where the backend has them (this default sends them at once)."""
        results: list[BackendStat | OSError] = [OSError()] * len(paths)

        async def one(i: int, path: str) -> None:
            try:
                results[i] = await self.stat(path)
            except OSError as exc:
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i, path in enumerate(paths):
                nursery.start_soon(one, i, path)
        return results

    @abc.abstractmethod
    async def listdir(self, path: str) -> list[str]: ...

    async def scandir(self, path: str) -> list[tuple[str, BackendStat]]:
        """List a directory with each entry's stat (backends that get both at once override;
        their nlink may be None where the listing has no link count)."""
        names = await self.listdir(path)
        out = []
        for name in names:
            try:
                out.append((name, await self.stat(join(path, name))))
            except FileNotFoundError:
                continue
        return out

    @abc.abstractmethod
    async def make_root(self) -> None:
        """Create the store's own directory and its missing parents (`init` into a new
        folder); an existing one is fine."""

    @abc.abstractmethod
    async def mkdir(self, path: str) -> None: ...

    @abc.abstractmethod
    async def rmdir(self, path: str) -> None: ...

    @abc.abstractmethod
    async def unlink(self, path: str) -> None: ...

    @abc.abstractmethod
    async def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        """Rename; with replace=False fail with FileExistsError if dst exists (atomically)."""

    async def place_new(self, handle: Handle, src: str, dst: str) -> BackendStat:
        """Rename a file just created at src (handle still open on it) to dst, failing
        with FileExistsError if dst exists, and return its stat as renamed: a new file
        appears under its name and is stat'ed for the caller. Backends may do both in
        one round trip."""
        await self.rename(src, dst, replace=False)
        return await self.fstat(handle)

    @abc.abstractmethod
    async def link(self, src: str, dst: str) -> None: ...

    @abc.abstractmethod
    async def set_times(self, path: str, atime_ns: int, mtime_ns: int) -> None: ...

    async def stamp_dir(self, path: str) -> None:
        """Move a directory's mtime and ctime to now and leave its atime: what a change of
        its entries does on POSIX, for backends that do not do it themselves
        (Capabilities.dir_times_follow_entries False). Backends may do it in one request."""
        current = await self.stat(path)
        await self.set_times(path, current.atime_ns, time.time_ns())

    async def fset_times(self, handle: Handle, atime_ns: int | None, mtime_ns: int) -> None:
        """Set times through an open handle (on SMB they then survive later writes on it).
        atime_ns None leaves the access time as it is."""
        if atime_ns is None:
            atime_ns = (await self.fstat(handle)).atime_ns
        await self.set_times(handle.path, atime_ns, mtime_ns)

    async def rewrite_head(self, path: str, data: bytes, atime_ns: int, mtime_ns: int) -> None:
        """Overwrite the first bytes of an existing file in one write request and leave its
        times as given (a header rewritten for its metadata only). Backends may do it in
        one round trip."""
        handle = await self.open(path, write=True)
        try:
            await self.write(handle, 0, data)
            await self.fset_times(handle, atime_ns, mtime_ns)
        finally:
            await self.close(handle)

    @abc.abstractmethod
    async def statvfs(self) -> BackendStatvfs: ...

    # -- snapshots ---------------------------------------------------------------------
    #: The snapshot this backend reads (it then refuses writes), None for the live store.
    snapshot: str | None = None
    #: Whether create_snapshot works here (only where the server makes snapshots on request).
    makes_snapshots: bool = False

    async def snapshots(self) -> list[Snapshot]:
        """The snapshots the server keeps of this store, oldest first."""
        raise snapshots_unsupported(self.location, "this store has no snapshots")

    async def create_snapshot(self, metadata: dict[str, str]) -> Snapshot:
        raise snapshots_unsupported(self.location, "this store cannot make snapshots")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        raise snapshots_unsupported(self.location, "this store cannot delete snapshots")

    async def soft_delete(self) -> SoftDelete | None:
        """Whether deleted data is kept for a while (Azure share soft delete); None where
        the notion does not apply."""
        return None

    @property
    def transport(self) -> str:
        """How bytes travel to the store, for `sealfs info` (e.g. the negotiated SMB cipher)."""
        return "local filesystem"

    async def aclose(self) -> None:
        """Release connections and cached handles."""


def join(*parts: str) -> str:
    """Join backend path components; "" is the root."""
    return "/".join(p for p in parts if p)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def basename(path: str) -> str:
    return path.rpartition("/")[2]
