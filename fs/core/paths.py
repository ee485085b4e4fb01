"""Path resolution: plaintext paths to backend paths, directory records and long names.

In format 1 the store nests as the plaintext tree does: each plaintext component is
encrypted under its parent directory's id, and a directory is a backend directory holding
its sealed record (sealfs.dir). Directories are resolved once and cached by plaintext path.

This is the seam a different store layout replaces (format 2: a flat store addressed by
directory ids). The volume asks it only for what any layout can answer: a path's entry
(parent directory, backend path, long-name encoding), a directory's record by path or by
backend path, and the plaintext name of an entry found in a listing.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import NamedTuple

from ...backends.base import Backend, BackendStat, join, parent_of
from ...crypto.format.constants import DIR_META_NAME, TEMP_PREFIX
from ...crypto.format.header import DIR_META_SIZE, Metadata, open_dir_meta, seal_dir_meta
from ...crypto.format.names import (
    NameCipher,
    entry_of_sidecar,
    is_long_name_entry,
    is_reserved,
    is_sidecar,
    long_name_entry,
    sidecar_of,
)
from ...crypto.secmem import SecretBuffer
from ...errors import IntegrityError
from .storeio import overwrite_small, read_small, remove_quietly, write_new_file

#: The longest long-name sidecar read: a sealed name is far shorter.
SIDECAR_LIMIT = 4096


@dataclass
class DirInfo:
    bpath: str
    dir_id: bytes
    meta: Metadata


class Entry(NamedTuple):
    """Where a path's last component lives: its parent directory, its plaintext name, its
    backend path, and its long-name encoding (None when the name fits in the entry)."""

    parent: DirInfo
    name: str
    bpath: str
    long: str | None


def split_path(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


class PathResolver:
    """Resolves plaintext paths on one volume, caching directories by plaintext path; owns
    the key that seals directory records."""

    def __init__(self, backend: Backend, names: NameCipher, dir_secret: SecretBuffer) -> None:
        self.backend = backend
        self.names = names
        # In locked memory, zeroed by close().
        self._dir_secret = dir_secret
        self._dir_key = dir_secret.readonly()
        self._dirs: dict[str, DirInfo] = {}

    def close(self) -> None:
        self._dir_key = b""
        self._dir_secret.wipe()

    # -- directory records ---------------------------------------------------------------
    async def root(self) -> DirInfo:
        info = self._dirs.get("")
        if info is None:
            info = await self.read_dir_info("")
            self._dirs[""] = info
        return info

    async def read_dir_info(self, bpath: str) -> DirInfo:
        """The sealed record of the directory at bpath, read from the store (not cached)."""
        try:
            raw = await read_small(self.backend, join(bpath, DIR_META_NAME), DIR_META_SIZE + 1)
        except FileNotFoundError:
            if bpath and not await self._is_dir(bpath):
                # Renamed or removed since it was looked up: a race, not damage.
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", bpath) from None
            raise IntegrityError(f"directory {bpath or '/'} has no {DIR_META_NAME}") from None
        dir_id, meta = open_dir_meta(self._dir_key, raw)
        return DirInfo(bpath, dir_id, meta)

    async def _is_dir(self, bpath: str) -> bool:
        try:
            return (await self.backend.stat(bpath)).is_dir
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def write_new_record(self, dir_bpath: str, dir_id: bytes, meta: Metadata) -> None:
        """The record of a directory being created at dir_bpath (a temporary name)."""
        await write_new_file(self.backend, join(dir_bpath, DIR_META_NAME),
                             seal_dir_meta(self._dir_key, dir_id, meta))

    async def rewrite_record(self, info: DirInfo) -> None:
        """Replace a directory's record with info's (the record is a file inside the
        directory: writing it moves no time of the directory)."""
        await overwrite_small(self.backend, join(info.bpath, DIR_META_NAME),
                              seal_dir_meta(self._dir_key, info.dir_id, info.meta))

    async def check_empty(self, bpath: str, path: str) -> None:
        """ENOTEMPTY unless the directory at bpath holds nothing a user can see; what an
        interrupted create, mkdir or rename left in it is removed."""
        entries = dict(await self.backend.scandir(bpath))
        for entry, bstat in entries.items():
            if entry == DIR_META_NAME:
                continue
            if entry.startswith(TEMP_PREFIX) and bstat.is_dir:
                await self._remove_temp_dir(join(bpath, entry), path)
                continue
            if entry.startswith(TEMP_PREFIX) or (is_sidecar(entry)
                                                 and entry_of_sidecar(entry) not in entries):
                # Leftovers of an interrupted create or rename: nothing a user can see.
                await remove_quietly(self.backend, join(bpath, entry))
                continue
            raise OSError(errno.ENOTEMPTY, "Directory not empty", path)

    async def _remove_temp_dir(self, tmp: str, path: str) -> None:
        """A leftover of an interrupted mkdir, rmdir or rename over a directory: at most its
        sealfs.dir. Anything else in it is not what sealfs leaves there, so not ours to
        delete: the parent is not empty."""
        inside = await self.backend.listdir(tmp)
        if any(entry != DIR_META_NAME for entry in inside):
            raise OSError(errno.ENOTEMPTY, "Directory not empty", path)
        if inside:
            await remove_quietly(self.backend, join(tmp, DIR_META_NAME))
        await remove_quietly(self.backend, tmp, is_dir=True)

    # -- resolution ----------------------------------------------------------------------
    async def directory(self, parts: list[str]) -> DirInfo:
        """The directory at a plaintext path (split), from the cache or from its record."""
        key = "/".join(parts)
        info = self._dirs.get(key)
        if info is not None:
            return info
        if not parts:
            return await self.root()
        parent = await self.directory(parts[:-1])
        bpath = self.child_bpath(parent, parts[-1])
        try:
            bstat = await self.backend.stat(bpath)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/" + key) from None
        if not bstat.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", "/" + key)
        info = await self.read_dir_info(bpath)
        if len(self._dirs) > 50_000:
            self._dirs.clear()
        self._dirs[key] = info
        return info

    def child_bpath(self, parent: DirInfo, name: str) -> str:
        entry, _long = self.names.entry_for(name, parent.dir_id)
        return join(parent.bpath, entry)

    async def entry(self, path: str) -> Entry:
        """Where a path's last component lives (EBUSY for the root, which has no parent)."""
        parts = split_path(path)
        if not parts:
            raise OSError(errno.EBUSY, "the volume root", "/")
        parent = await self.directory(parts[:-1])
        entry, long = self.names.entry_for(parts[-1], parent.dir_id)
        bpath = join(parent.bpath, entry)
        limit = self.backend.capabilities.max_path_length
        if len(bpath) > limit:
            raise OSError(errno.ENAMETOOLONG, "File name too long (backend path limit)", path)
        return Entry(parent, parts[-1], bpath, long)

    def cached(self, parts: list[str]) -> DirInfo | None:
        """The directory at a path if it is resolved already (no I/O)."""
        return self._dirs.get("/".join(parts))

    def remember(self, parts: list[str], info: DirInfo) -> None:
        self._dirs["/".join(parts)] = info

    def forget(self, path: str) -> None:
        """A directory moved or went: forget it and everything resolved below it."""
        key = "/".join(split_path(path))
        for k in [k for k in self._dirs if k == key or k.startswith(key + "/")]:
            del self._dirs[k]

    # -- names in listings ---------------------------------------------------------------
    async def decode(self, info: DirInfo, entry: str, stats: dict[str, BackendStat]) -> str | None:
        """The plaintext name of an entry listed in a directory; None for sealfs's own
        entries. IntegrityError when it does not authenticate in this directory."""
        if is_long_name_entry(entry):
            side = stats.get(sidecar_of(entry))
            if side is not None and (side.foreign or side.is_dir):
                raise IntegrityError("long-name sidecar is not a regular file")
            try:
                encoded = (await self.read_sidecar(info.bpath, entry)).decode("ascii")
            except (FileNotFoundError, UnicodeDecodeError):
                raise IntegrityError("long name has no readable sidecar") from None
            return self.long_name(info, entry, encoded)
        if is_reserved(entry):
            return None
        return self.names.decode(entry, info.dir_id)

    async def read_sidecar(self, dir_bpath: str, entry: str) -> bytes:
        """The raw content of a long-name entry's sidecar."""
        return await read_small(self.backend, join(dir_bpath, sidecar_of(entry)), SIDECAR_LIMIT)

    def long_name(self, info: DirInfo, entry: str, encoded: str) -> str:
        """The plaintext name a sidecar holds, checked against the entry it names."""
        # The entry must be the one its name is stored under, or a forged entry
        # (another entry's sidecar copied, a short name in a sidecar) lists it twice.
        if long_name_entry(encoded) != entry:
            raise IntegrityError("long-name sidecar does not match its entry")
        name = self.names.decode(encoded, info.dir_id)
        if self.names.entry_for(name, info.dir_id)[0] != entry:
            raise IntegrityError("long-name sidecar holds a name stored under another entry")
        return name

    async def write_sidecar(self, bpath: str, encoded: str) -> None:
        """Long-name sidecars are deterministic, so rewriting an existing one is harmless."""
        sidecar = sidecar_of(bpath)
        tmp = join(parent_of(bpath), TEMP_PREFIX + os.urandom(8).hex())
        await write_new_file(self.backend, tmp, encoded.encode("ascii"))
        await self.backend.rename(tmp, sidecar, replace=True)
