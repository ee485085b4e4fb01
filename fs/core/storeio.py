"""Small whole objects on the backend: directory records, long-name sidecars, the config.

Each is read, written or removed in one go; shared by the volume, its path resolution and
the offline tools, so that all of them read a record the same way.
"""

from __future__ import annotations

import errno

from ...backends.base import Backend, BackendStat


async def read_small(backend: Backend, bpath: str, limit: int) -> bytes:
    handle = await backend.open(bpath)
    try:
        return await backend.read(handle, 0, limit)
    finally:
        await backend.close(handle)


async def write_new_file(backend: Backend, bpath: str, data: bytes) -> None:
    handle = await backend.open(bpath, write=True, create=True, exclusive=True)
    try:
        await backend.write(handle, 0, data)
        await backend.flush(handle)
    finally:
        await backend.close(handle)


async def overwrite_small(backend: Backend, bpath: str, data: bytes) -> None:
    """One request, so a reader never sees a torn record."""
    handle = await backend.open(bpath, write=True)
    try:
        await backend.write(handle, 0, data)
    finally:
        await backend.close(handle)


async def remove_quietly(backend: Backend, bpath: str, is_dir: bool = False) -> None:
    try:
        if is_dir:
            await backend.rmdir(bpath)
        else:
            await backend.unlink(bpath)
    except FileNotFoundError:
        pass


def version_stamp(bstat: BackendStat) -> tuple:
    """What identifies one version of a backend file (a file's header, a directory's
    record): another client's write, link or unlink changes it, and its metadata-only
    rewrite (chmod, chown, setxattr) too: that moves the change time, or where the
    backend's change time is only the write time, which the rewrite pins back (SMB), the
    change mark."""
    return (bstat.ino, bstat.size, bstat.mtime_ns, bstat.ctime_ns, bstat.change_mark)


async def stat_entry(backend: Backend, bpath: str, path: str) -> BackendStat:
    """The backend's stat of bpath; ENOENT names the plaintext path the caller asked for."""
    try:
        return await backend.stat(bpath)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None
