"""A backend opened at a snapshot: every read goes to the snapshot, every write fails EROFS.

The server refuses writes to a snapshot too (Azure: OperationNotSupportedOnShareSnapshot;
a Samba previous version is a read-only tree), but only when a request reaches it. The
volume must hear "read-only" where it asks first: opening a file for writing, which it
answers by opening it read-only instead. So the refusal is here, before any request, and
is a PermissionError carrying EROFS, the error the volume already treats as "this backend
file is read-only".
"""

from __future__ import annotations

import errno

from .base import Backend, BackendStat, BackendStatvfs, Handle, Snapshot, SoftDelete


def _refuse(path: str = "") -> PermissionError:
    return PermissionError(errno.EROFS, "a snapshot is read-only", path or "/")


class ReadOnlyBackend(Backend):
    """Wraps the backend that reads a snapshot (see the module docstring)."""

    def __init__(self, inner: Backend, snapshot: str) -> None:
        self.inner = inner
        self.snapshot = snapshot
        self.capabilities = inner.capabilities
        # The live store's location: a snapshot of a volume is checked against that volume's pin.
        self.location = inner.location

    @property
    def transport(self) -> str:
        return f"{self.inner.transport}, read-only at snapshot {self.snapshot}"

    # -- reads ---------------------------------------------------------------------------------
    async def open(self, path: str, *, write: bool = False, create: bool = False,
                   exclusive: bool = False) -> Handle:
        if write or create or exclusive:
            raise _refuse(path)
        return await self.inner.open(path)

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        return await self.inner.read(handle, offset, size)

    async def read_many(self, handle: Handle, reads: list[tuple[int, int]]) -> list[bytes]:
        return await self.inner.read_many(handle, reads)

    async def read_many_pieces(self, handle: Handle,
                               reads: list[tuple[int, int]]) -> list[list[bytes | memoryview]]:
        return await self.inner.read_many_pieces(handle, reads)

    async def read_head(self, path: str, size: int) -> tuple[bytes, BackendStat]:
        return await self.inner.read_head(path, size)

    async def close(self, handle: Handle) -> None:
        await self.inner.close(handle)

    async def fstat(self, handle: Handle) -> BackendStat:
        return await self.inner.fstat(handle)

    async def stat(self, path: str) -> BackendStat:
        return await self.inner.stat(path)

    async def listdir(self, path: str) -> list[str]:
        return await self.inner.listdir(path)

    async def scandir(self, path: str) -> list[tuple[str, BackendStat]]:
        return await self.inner.scandir(path)

    async def statvfs(self) -> BackendStatvfs:
        return await self.inner.statvfs()

    async def flush(self, handle: Handle) -> None:
        """Nothing was written through a read-only handle: nothing to flush."""

    async def snapshots(self) -> list[Snapshot]:
        return await self.inner.snapshots()

    async def soft_delete(self) -> SoftDelete | None:
        return await self.inner.soft_delete()

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- writes --------------------------------------------------------------------------------
    async def create_file(self, path: str, data: bytes) -> Handle:
        raise _refuse(path)

    async def write(self, handle: Handle, offset: int, data: bytes | memoryview) -> None:
        raise _refuse(handle.path)

    async def write_many(self, handle: Handle, writes: list[tuple[int, bytes]]) -> None:
        raise _refuse(handle.path)

    async def truncate(self, handle: Handle, size: int) -> None:
        raise _refuse(handle.path)

    async def make_root(self) -> None:
        raise _refuse()

    async def mkdir(self, path: str) -> None:
        raise _refuse(path)

    async def rmdir(self, path: str) -> None:
        raise _refuse(path)

    async def unlink(self, path: str) -> None:
        raise _refuse(path)

    async def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        raise _refuse(src)

    async def place_new(self, handle: Handle, src: str, dst: str) -> BackendStat:
        raise _refuse(src)

    async def link(self, src: str, dst: str) -> None:
        raise _refuse(dst)

    async def set_times(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        raise _refuse(path)

    async def fset_times(self, handle: Handle, atime_ns: int | None, mtime_ns: int) -> None:
        raise _refuse(handle.path)

    async def stamp_dir(self, path: str) -> None:
        raise _refuse(path)

    async def rewrite_head(self, path: str, data: bytes, atime_ns: int, mtime_ns: int) -> None:
        raise _refuse(path)

    async def create_snapshot(self, metadata: dict[str, str]) -> Snapshot:
        raise _refuse()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        raise _refuse()
