"""The local directory backend: the embedded default.

Small metadata syscalls run inline (they are microseconds); reads and writes of
chunk data run in worker threads so sealing and disk I/O overlap across cores.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import trio

from .base import Backend, BackendStat, BackendStatvfs, Capabilities, Handle

# Data I/O below this size stays on the event loop: a thread hop (~50-100 us with the
# wake-up of the trio loop) costs more than a pread/pwrite of 128 KiB from the page cache
# (~20 us). It covers one sealed 64 KiB chunk (64 KiB + 28), which a random 4 KiB read of
# an uncached chunk needs at the default chunk size.
_INLINE_IO = 128 * 1024
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))   # -1 would mean "no limit known"
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 16


class LocalHandle(Handle):
    __slots__ = ("path", "fd", "writable")

    def __init__(self, path: str, fd: int, writable: bool) -> None:
        self.path = path
        self.fd = fd
        self.writable = writable


class LocalBackend(Backend):
    capabilities = Capabilities(case_insensitive=False, max_name_length=255, hard_links=True,
                                unlink_open_files=True)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve() if Path(root).exists() else Path(os.path.abspath(root))
        self.location = str(self.root)
        self._prefix = self.location.rstrip("/") + "/"
        self._limiter = trio.CapacityLimiter(8)

    def _p(self, path: str) -> str:
        # Concatenation, not os.path.join (several us per call, on every metadata request).
        return self._prefix + path if path else self.location

    async def open(self, path: str, *, write: bool = False, create: bool = False,
                   exclusive: bool = False) -> LocalHandle:
        flags = os.O_RDWR if write else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
        if exclusive:
            flags |= os.O_EXCL
        fd = os.open(self._p(path), flags | os.O_CLOEXEC, 0o600)
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
        fd = os.open(self._p(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, size, 0), BackendStat.from_os(os.fstat(fd))
        finally:
            os.close(fd)

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
        return BackendStat.from_os(os.lstat(self._p(path)))

    async def listdir(self, path: str) -> list[str]:
        return os.listdir(self._p(path))

    async def scandir(self, path: str) -> list[tuple[str, BackendStat]]:
        out = []
        with os.scandir(self._p(path)) as it:
            for entry in it:
                try:
                    out.append((entry.name, BackendStat.from_os(entry.stat(follow_symlinks=False))))
                except FileNotFoundError:
                    continue
        return out

    async def make_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def mkdir(self, path: str) -> None:
        os.mkdir(self._p(path), 0o700)

    async def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    async def unlink(self, path: str) -> None:
        os.unlink(self._p(path))

    async def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        if replace:
            os.rename(self._p(src), self._p(dst))
            return
        _rename_noreplace(self._p(src), self._p(dst))

    async def link(self, src: str, dst: str) -> None:
        os.link(self._p(src), self._p(dst))

    async def set_times(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        os.utime(self._p(path), ns=(atime_ns, mtime_ns), follow_symlinks=False)

    async def fset_times(self, handle: Handle, atime_ns: int | None, mtime_ns: int) -> None:
        assert isinstance(handle, LocalHandle)
        if atime_ns is None:
            atime_ns = os.fstat(handle.fd).st_atime_ns
        os.utime(handle.fd, ns=(atime_ns, mtime_ns))

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


_libc = None


def _rename_noreplace(src: str, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE); falls back to link+unlink where the kernel lacks it."""
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    rename_noreplace = 1
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        res = fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace)
        if res == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst)
    os.unlink(src)
