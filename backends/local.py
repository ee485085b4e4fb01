"""The local directory backend: the embedded default.

Small metadata syscalls run inline (they are microseconds); reads and writes of
chunk data run in worker threads so sealing and disk I/O overlap across cores.

The store is untrusted (docs/THREAT_MODEL.md): every path is resolved beneath one
directory fd of the store root without following symlinks (backends/confine.py), every
file open is O_NOFOLLOW|O_NONBLOCK and refused unless it is a regular file, and
namespace calls are *at() calls on the confined parent. A symlink, FIFO, socket or
device in the store raises ForeignEntryError; scandir lists them with
BackendStat.foreign saying what they are.

Files and listed directories are opened O_NOATIME: a sealfs mount is noatime (a file's
atime is set at creation and by utimens, nothing else moves it), and sealfs's own reads of
headers, chunks and listings would otherwise move the store's atime under relatime.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_module
from pathlib import Path

import trio

from .base import (
    Backend,
    BackendStat,
    BackendStatvfs,
    Capabilities,
    ForeignEntryError,
    Handle,
    describe_foreign,
)
from .confine import (
    DIR_PATH,
    DIR_READ,
    FILE_BASE,
    O_NOATIME,
    O_PATH,
    check_component,
    classify,
    openat2,
    openat2_works,
    rename_noreplace,
)

log = logging.getLogger(__name__)

# Data I/O below this size stays on the event loop: a thread hop (with the wake-up of the
# trio loop) costs several times a pread/pwrite of 128 KiB from the page cache. It covers
# one sealed 64 KiB chunk (64 KiB + 28), which a random 4 KiB read of an uncached chunk
# needs at the default chunk size.
_INLINE_IO = 128 * 1024
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))   # -1 would mean "no limit known"
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 16

# What opening a planted entry fails with: a symlink (ELOOP), a non-directory on the way
# (ENOTDIR), a socket or driverless device (ENXIO, ENODEV). A directory opened as a file
# stays EISDIR, as on SMB: the kernel refuses it and nothing is followed.
_MAYBE_FOREIGN = frozenset({errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.ENODEV})


class LocalHandle(Handle):
    __slots__ = ("path", "fd", "writable")

    def __init__(self, path: str, fd: int, writable: bool) -> None:
        self.path = path
        self.fd = fd
        self.writable = writable

    def __del__(self) -> None:
        # A handle dropped unclosed (an interrupted operation, a library user) must not
        # hold its descriptor for the life of the process.
        _close_quietly(self.fd)


class LocalBackend(Backend):
    capabilities = Capabilities(case_insensitive=False, max_name_length=255, hard_links=True,
                                unlink_open_files=True)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve() if Path(root).exists() else Path(os.path.abspath(root))
        self.location = str(self.root)
        self._limiter = trio.CapacityLimiter(8)
        self._rootfd = -1
        self._openat2 = False
        # O_NOATIME needs the caller to own the file (or CAP_FOWNER): dropped for good at
        # the first EPERM, a store owned by someone else.
        self._noatime = O_NOATIME

    # -- confinement -------------------------------------------------------------------
    def _root(self) -> int:
        """The store root as an O_PATH fd, opened once: every path resolves beneath it.
        The root itself is the user's choice and may be reached through symlinks."""
        if self._rootfd < 0:
            fd = os.open(self.location, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self._openat2 = openat2_works(fd)
            self._rootfd = fd
        return self._rootfd

    def _resolve(self, path: str, flags: int, mode: int = 0) -> int:
        """Open path beneath the root with flags, no component a symlink."""
        root = self._root()
        if not self._openat2 or "/" not in path:      # one component: openat is as safe, and cheaper
            return self._walk(root, path, flags, mode)
        try:
            return openat2(root, path, flags, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ForeignEntryError(path, "a symbolic link") from None
            if exc.errno == errno.EXDEV:
                raise ForeignEntryError(path, "a path out of the store") from None
            if exc.errno in _MAYBE_FOREIGN:
                return self._walk(root, path, flags, mode)     # says which entry it is
            raise

    def _walk(self, root: int, path: str, flags: int, mode: int = 0) -> int:
        """The fallback without openat2: one O_NOFOLLOW openat per component."""
        parts = path.split("/")
        last = len(parts) - 1
        fd = root
        try:
            for i, comp in enumerate(parts):
                check_component(comp, path)
                try:
                    nfd = os.open(comp, flags if i == last else DIR_PATH, mode, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in _MAYBE_FOREIGN:
                        raise
                    what = classify(fd, comp)
                    if what is not None:
                        raise ForeignEntryError(path, what) from None
                    raise
                if fd != root:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd != root:
                os.close(fd)
            raise
        return fd

    def _parent(self, path: str) -> tuple[int, str]:
        """The confined parent directory fd of path (the root's own fd: never close it)
        and the last component, for *at() calls."""
        head, _, name = path.rpartition("/")
        check_component(name, path)
        if not head:
            return self._root(), name
        return self._resolve(head, DIR_PATH), name

    def _open_noatime(self, path: str, flags: int, mode: int = 0, *, at_root: bool = False) -> int:
        """Open with O_NOATIME while this process may (see __init__); at_root opens the
        store root itself (path ".")."""
        def open_(extra: int) -> int:
            if at_root:
                return os.open(".", flags | extra, mode, dir_fd=self._root())
            return self._resolve(path, flags | extra, mode)
        if not self._noatime:
            return open_(0)
        try:
            return open_(self._noatime)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
            fd = open_(0)                      # raises if EPERM had another cause
            self._noatime = 0
            log.warning("%s: not the owner of the store's files, so sealfs's own reads of "
                        "them move their access times (O_NOATIME refused)", self.location)
            return fd

    def _done(self, fd: int) -> None:
        if fd != self._rootfd:
            os.close(fd)

    def _open_file(self, path: str, flags: int, mode: int = 0) -> tuple[int, os.stat_result]:
        """A regular file of the store, opened without blocking or following; anything
        else there was planted and is refused before a byte is read or written."""
        fd = self._open_noatime(path, flags | FILE_BASE, mode)
        try:
            st = os.fstat(fd)
            if stat_module.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat_module.S_ISREG(st.st_mode):
                raise ForeignEntryError(path, describe_foreign(st.st_mode) or "a special file")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    # -- files -------------------------------------------------------------------------
    async def open(self, path: str, *, write: bool = False, create: bool = False,
                   exclusive: bool = False) -> LocalHandle:
        flags = os.O_RDWR if write else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
        if exclusive:
            flags |= os.O_EXCL
        fd, _st = self._open_file(path, flags, 0o600)
        return LocalHandle(path, fd, write)

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        assert isinstance(handle, LocalHandle)
        if size <= _INLINE_IO:
            return os.pread(handle.fd, size, offset)
        return await trio.to_thread.run_sync(_pread_full, handle.fd, size, offset, limiter=self._limiter)

    async def read_many(self, handle: Handle, reads: list[tuple[int, int]]) -> list[bytes]:
        assert isinstance(handle, LocalHandle)
        total = sum(size for _, size in reads)
        if total <= _INLINE_IO:
            return [os.pread(handle.fd, size, offset) for offset, size in reads]
        fd = handle.fd
        return await trio.to_thread.run_sync(
            lambda: [_pread_full(fd, size, offset) for offset, size in reads], limiter=self._limiter)

    async def write(self, handle: Handle, offset: int, data: bytes | memoryview) -> None:
        assert isinstance(handle, LocalHandle)
        if len(data) <= _INLINE_IO:
            _pwrite_full(handle.fd, data, offset)
        else:
            await trio.to_thread.run_sync(_pwrite_full, handle.fd, data, offset, limiter=self._limiter)

    async def write_many(self, handle: Handle, writes: list[tuple[int, bytes]]) -> None:
        assert isinstance(handle, LocalHandle)
        runs = _coalesce(writes)
        total = sum(len(d) for _, d in writes)
        fd = handle.fd

        def run() -> None:
            for offset, pieces in runs:
                _pwritev_full(fd, pieces, offset)
        if total <= _INLINE_IO:
            run()
        else:
            await trio.to_thread.run_sync(run, limiter=self._limiter)

    async def read_head(self, path: str, size: int) -> tuple[bytes, BackendStat]:
        # One go, no handle object: a cold stat of every file in a directory reads each
        # file's header, so this runs once per file.
        fd, st = self._open_file(path, os.O_RDONLY)
        try:
            return os.pread(fd, size, 0), BackendStat.from_os(st)
        finally:
            os.close(fd)

    async def read_heads(self, directory: str, names: list[str],
                         size: int) -> list[tuple[bytes, BackendStat] | OSError]:
        # Each name opened relative to the directory, opened once: no walk from the
        # store root per file (what read_head costs a cold listing).
        results: list[tuple[bytes, BackendStat] | OSError] = []
        dfd = self._resolve(directory, DIR_PATH) if directory else self._root()
        try:
            for name in names:
                try:
                    fd, st = self._open_in(dfd, name)
                except OSError as exc:
                    results.append(exc)
                    continue
                try:
                    results.append((os.pread(fd, size, 0), BackendStat.from_os(st)))
                except OSError as exc:
                    results.append(exc)
                finally:
                    os.close(fd)
        finally:
            self._done(dfd)
        return results

    def _open_at(self, dfd: int, name: str, flags: int) -> int:
        """openat of one name in the directory open at dfd; what fails as a planted entry
        would is opened again by _walk, which says which entry it is."""
        try:
            return os.open(name, flags, dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in _MAYBE_FOREIGN:
                raise
            return self._walk(dfd, name, flags)

    def _open_in(self, dfd: int, name: str) -> tuple[int, os.stat_result]:
        """_open_file for read of one entry of the directory open at dfd."""
        flags = os.O_RDONLY | FILE_BASE
        check_component(name, name)
        try:
            fd = self._open_at(dfd, name, flags | self._noatime)
        except PermissionError as exc:
            if not self._noatime or exc.errno != errno.EPERM:
                raise
            fd = self._open_at(dfd, name, flags)
            self._noatime = 0               # as _open_noatime: not the owner of the store
        try:
            st = os.fstat(fd)
            if stat_module.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
            if not stat_module.S_ISREG(st.st_mode):
                raise ForeignEntryError(name, describe_foreign(st.st_mode) or "a special file")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    async def truncate(self, handle: Handle, size: int) -> None:
        assert isinstance(handle, LocalHandle)
        os.ftruncate(handle.fd, size)

    async def flush(self, handle: Handle) -> None:
        assert isinstance(handle, LocalHandle)
        await trio.to_thread.run_sync(os.fsync, handle.fd, limiter=self._limiter)

    async def close(self, handle: Handle) -> None:
        assert isinstance(handle, LocalHandle)
        if handle.fd >= 0:
            os.close(handle.fd)
            handle.fd = -1

    async def fstat(self, handle: Handle) -> BackendStat:
        assert isinstance(handle, LocalHandle)
        return BackendStat.from_os(os.fstat(handle.fd))

    async def stat(self, path: str) -> BackendStat:
        if not path:
            return BackendStat.from_os(os.fstat(self._root()))
        fd, name = self._parent(path)
        try:
            return BackendStat.from_os(os.stat(name, dir_fd=fd, follow_symlinks=False))
        finally:
            self._done(fd)

    async def stat_many(self, paths: list[str]) -> list[BackendStat | OSError]:
        # System calls: nothing to overlap, so one after the other on the loop.
        results: list[BackendStat | OSError] = []
        for path in paths:
            try:
                results.append(await self.stat(path))
            except OSError as exc:
                results.append(exc)
        return results

    def _opendir(self, path: str) -> int:
        return self._open_noatime(path, DIR_READ, at_root=not path)

    async def listdir(self, path: str) -> list[str]:
        fd = self._opendir(path)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    async def scandir(self, path: str) -> list[tuple[str, BackendStat]]:
        out = []
        fd = self._opendir(path)
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        out.append((entry.name, BackendStat.from_os(entry.stat(follow_symlinks=False))))
                    except FileNotFoundError:
                        continue
        finally:
            os.close(fd)
        return out

    async def make_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def mkdir(self, path: str) -> None:
        fd, name = self._parent(path)
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        finally:
            self._done(fd)

    async def rmdir(self, path: str) -> None:
        fd, name = self._parent(path)
        try:
            os.rmdir(name, dir_fd=fd)
        finally:
            self._done(fd)

    async def unlink(self, path: str) -> None:
        # unlinkat removes a symlink itself, never its target.
        fd, name = self._parent(path)
        try:
            os.unlink(name, dir_fd=fd)
        finally:
            self._done(fd)

    async def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        sfd, sname = self._parent(src)
        try:
            dfd, dname = self._parent(dst)
            try:
                if replace:
                    os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
                else:
                    rename_noreplace(sfd, sname, dfd, dname)
            finally:
                self._done(dfd)
        finally:
            self._done(sfd)

    async def link(self, src: str, dst: str) -> None:
        sfd, sname = self._parent(src)
        try:
            dfd, dname = self._parent(dst)
            try:
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                self._done(dfd)
        finally:
            self._done(sfd)

    async def set_times(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        fd, name = self._parent(path) if path else (self._root(), ".")
        try:
            os.utime(name, ns=(atime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
        finally:
            self._done(fd)

    async def fset_times(self, handle: Handle, atime_ns: int | None, mtime_ns: int) -> None:
        assert isinstance(handle, LocalHandle)
        if atime_ns is None:
            atime_ns = os.fstat(handle.fd).st_atime_ns
        os.utime(handle.fd, ns=(atime_ns, mtime_ns))

    async def aclose(self) -> None:
        if self._rootfd >= 0:
            os.close(self._rootfd)
            self._rootfd = -1

    def __del__(self) -> None:
        # A backend dropped without aclose() must not keep the store root open: a long
        # process that opens many volumes would run out of descriptors.
        _close_quietly(getattr(self, "_rootfd", -1))

    async def statvfs(self) -> BackendStatvfs:
        st = os.statvfs(self.root)
        return BackendStatvfs(st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail,
                              st.f_files, st.f_ffree, st.f_namemax)


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _pwrite_full(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _coalesce(writes: list[tuple[int, bytes]]) -> list[tuple[int, list[bytes]]]:
    """Group pieces that continue each other, keeping the caller's order (it may matter
    for crash safety), so a run of chunks becomes one pwritev of the callers' buffers."""
    out: list[tuple[int, list[bytes]]] = []
    end = -1
    for offset, data in writes:
        if not len(data):
            continue
        if out and offset == end:
            out[-1][1].append(data)
        else:
            out.append((offset, [data]))
        end = offset + len(data)
    return out


def _pwritev_full(fd: int, pieces: list[bytes], offset: int) -> None:
    views = [memoryview(p).cast("B") for p in pieces]
    while views:
        written = os.pwritev(fd, views[:_IOV_MAX], offset)
        offset += written
        while written:
            if written >= len(views[0]):
                written -= len(views.pop(0))
            else:
                views[0] = views[0][written:]
                written = 0


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
