"""Path resolution: plaintext paths to backend paths, directory records and long names.

Format 2 stores every directory's children flat, in its STORAGE d/<locator of its id>
(crypto/format/locator.py). In its parent's storage a directory is a STUB: a backend
directory under its encrypted name (each plaintext component is encrypted under its
parent directory's id, as in format 1) that holds only its sealed record (sealfs.dir:
the dir id and metadata). So a store path is bounded whatever the visible depth, and a
directory rename is one backend rename of its stub: its storage, and every backend path
below it, stays where it is. Directories are resolved once and cached by plaintext path;
a directory's id, so its storage, never changes.

The volume asks this module only for what any layout can answer: a path's entry (parent
directory, backend path, long-name encoding), a directory's record and storage, and the
plaintext name of an entry found in a listing.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from ...backends.base import Backend, BackendStat, join, parent_of
from ...crypto.format.constants import DIR_META_NAME, STORAGE_DIR, TEMP_PREFIX
from ...crypto.format.header import DIR_META_SIZE, Metadata, open_dir_meta, seal_dir_meta
from ...crypto.format.locator import locator, storage_path
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
from .storeio import overwrite_small, remove_quietly, version_stamp, write_new_file

#: The longest long-name sidecar read: a sealed name is far shorter.
SIDECAR_LIMIT = 4096


@dataclass
class DirInfo:
    """A directory: its stub (its entry in the parent's storage, "" for the root, whose
    record is the store root's sealfs.dir), its storage (where its children live), its id
    and its sealed metadata. stub_ino is the stub's backend identity when its record was
    read (None if unknown): a different one at the same path is another directory.
    record_stamp is the version stamp (storeio.version_stamp) of the record meta was read
    from; None when unknown (a record this mount wrote): the next check reads it again."""

    stub: str
    storage: str
    dir_id: bytes
    meta: Metadata
    stub_ino: int | None = None
    record_stamp: tuple | None = None

    @property
    def record(self) -> str:
        """The backend path of its record."""
        return join(self.stub, DIR_META_NAME)


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
    the keys that seal directory records and derive their storages' locators."""

    def __init__(self, backend: Backend, names: NameCipher, dir_secret: SecretBuffer,
                 locator_secret: SecretBuffer) -> None:
        self.backend = backend
        self.names = names
        # In locked memory, zeroed by close().
        self._dir_secret = dir_secret
        self._dir_key = dir_secret.readonly()
        self._locator_secret = locator_secret
        self._locator_key = locator_secret.readonly()
        self._dirs: dict[str, DirInfo] = {}

    def close(self) -> None:
        self._dir_key = b""
        self._locator_key = b""
        self._dir_secret.wipe()
        self._locator_secret.wipe()

    # -- directory records ---------------------------------------------------------------
    async def root(self) -> DirInfo:
        info = self._dirs.get("")
        if info is None:
            info = await self.read_dir_info("")
            self._dirs[""] = info
        return info

    def storage_of(self, dir_id: bytes) -> str:
        """The backend path of a directory's storage: a keyed function of its id only."""
        return storage_path(locator(self._locator_key, dir_id))

    async def read_dir_info(self, stub: str, stub_ino: int | None = None) -> DirInfo:
        """The sealed record of the directory whose stub is at stub, read from the store
        (not cached)."""
        try:
            # read_head: one round trip where the backend can, not open, read, close. Its
            # stat is taken with the bytes or before them, never after (a stamp newer than
            # the bytes would hide the change between).
            raw, fresh = await self.backend.read_head(join(stub, DIR_META_NAME), DIR_META_SIZE + 1)
        except FileNotFoundError:
            if stub and not await self._is_dir(stub):
                # Renamed or removed since it was looked up: a race, not damage.
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", stub) from None
            raise IntegrityError(f"directory {stub or '/'} has no {DIR_META_NAME}") from None
        dir_id, meta = open_dir_meta(self._dir_key, raw)
        return DirInfo(stub, self.storage_of(dir_id), dir_id, meta, stub_ino, version_stamp(fresh))

    async def refreshed(self, parts: list[str], info: DirInfo,
                        record_stat: BackendStat | OSError) -> DirInfo:
        """The directory resolved at parts (info), checked against its record's stat now
        (or the error that stat gave): info itself while the record is the one its
        metadata was read from, else the record read again. Another host's chmod, chown
        or setxattr rewrote it: info takes the new metadata in place, so that everything
        holding it (a parent's setgid bit and default ACL) sees them; another directory
        at the path (renamed over it) replaces it and what was resolved below it."""
        if not isinstance(record_stat, OSError) and info.record_stamp is not None \
                and info.record_stamp == version_stamp(record_stat):
            return info
        fresh = await self.read_dir_info(info.stub, info.stub_ino)
        if fresh.dir_id == info.dir_id:
            info.meta, info.record_stamp = fresh.meta, fresh.record_stamp
            return info
        fresh.stub_ino = None
        if parts:
            self.forget("/".join(parts))
        else:                     # another root: nothing resolved below the old one holds
            self._dirs.clear()
        self.remember(parts, fresh)
        return fresh

    async def current(self, parts: list[str], info: DirInfo) -> DirInfo:
        """refreshed() after a stat of the record: the metadata a rewrite of the record
        (chmod, chown, setxattr, rename) starts from."""
        try:
            record_stat: BackendStat | OSError = await self.backend.stat(info.record)
        except OSError as exc:
            record_stat = exc
        return await self.refreshed(parts, info, record_stat)

    async def _is_dir(self, bpath: str) -> bool:
        try:
            return (await self.backend.stat(bpath)).is_dir
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def create_storage(self, dir_id: bytes) -> str:
        """Make a new directory's (empty) storage; FileExistsError if it exists already
        (another directory's: ids are random, so only a copied record can get here)."""
        storage = self.storage_of(dir_id)
        await make_storage(self.backend, storage)
        return storage

    async def write_new_record(self, stub: str, dir_id: bytes, meta: Metadata) -> None:
        """The record of a directory being created, in its stub (at a temporary name),
        durable before it is renamed into place. Where the change time is only the write
        time (SMB), its times are set through the handle, which gives it a change mark: a
        new file's access time is its change time, which a server moves at its first read
        (relatime), and that would look like a change to the next check of the record."""
        handle = await self.backend.create_file(join(stub, DIR_META_NAME),
                                                seal_dir_meta(self._dir_key, dir_id, meta))
        try:
            if not self.backend.capabilities.real_change_time:
                now = time.time_ns()
                await self.backend.fset_times(handle, now, now)
            await self.backend.flush(handle)
        finally:
            await self.backend.close(handle)

    async def rewrite_record(self, info: DirInfo) -> None:
        """Replace a directory's record with info's, in one write request (the record is
        in the stub, whose times are never shown: writing it moves no time of the
        directory). Its own stat must move, so that other clients see the change (they
        compare its version stamp): where the change time does not (SMB), its times are
        set through the writing handle, which moves the change mark."""
        data = seal_dir_meta(self._dir_key, info.dir_id, info.meta)
        try:
            if self.backend.capabilities.real_change_time:
                await overwrite_small(self.backend, info.record, data)
            else:
                now = time.time_ns()
                await self.backend.rewrite_head(info.record, data, now, now)
        finally:
            # Whatever a check read meanwhile, or whether this landed: read it again next.
            info.record_stamp = None

    async def check_empty(self, storage: str, path: str) -> None:
        """ENOTEMPTY unless the directory whose storage this is holds nothing a user can
        see; what an interrupted create, mkdir or rename left in it is removed."""
        entries = dict(await self.backend.scandir(storage))
        for entry, bstat in entries.items():
            if entry.startswith(TEMP_PREFIX) and bstat.is_dir:
                await self._remove_temp_dir(join(storage, entry), path)
                continue
            if entry.startswith(TEMP_PREFIX) or (is_sidecar(entry)
                                                 and entry_of_sidecar(entry) not in entries):
                # Leftovers of an interrupted create or rename: nothing a user can see.
                await remove_quietly(self.backend, join(storage, entry))
                continue
            raise OSError(errno.ENOTEMPTY, "Directory not empty", path)

    async def _remove_temp_dir(self, tmp: str, path: str) -> None:
        """A leftover stub of an interrupted mkdir, rmdir or rename over a directory: at
        most its sealfs.dir (the storage it names, if any, is an orphan for fsck). Anything
        else in it is not what sealfs leaves there, so not ours to delete: the parent is
        not empty."""
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
        stub = self.child_bpath(parent, parts[-1])
        try:
            bstat = await self.backend.stat(stub)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/" + key) from None
        if not bstat.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", "/" + key)
        info = await self.read_dir_info(stub, bstat.ino or None)
        self.remember(parts, info)
        return info

    async def dir_at(self, parts: list[str], stub: str, bstat: BackendStat) -> DirInfo:
        """The directory whose stub a lookup or listing found at stub (stat bstat): the
        cached one if it is that stub still (known_at; its record is not checked), else its
        record read again (the path may name another directory now: another client
        renamed or replaced it)."""
        info = self.known_at(parts, stub, bstat)
        if info is None:
            info = await self.read_dir_info(stub, bstat.ino or None)
            self.remember(parts, info)
        return info

    def known_at(self, parts: list[str], stub: str, bstat: BackendStat) -> DirInfo | None:
        """The directory cached at parts if its stub is at stub, stat'ed as bstat (no I/O)."""
        info = self._dirs.get("/".join(parts))
        ino = bstat.ino or None
        if info is None or info.stub != stub or (ino and info.stub_ino and ino != info.stub_ino):
            return None
        return info

    def child_bpath(self, parent: DirInfo, name: str) -> str:
        entry, _long = self.names.entry_for(name, parent.dir_id)
        return join(parent.storage, entry)

    async def entry(self, path: str) -> Entry:
        """Where a path's last component lives (EBUSY for the root, which has no parent)."""
        parts = split_path(path)
        if not parts:
            raise OSError(errno.EBUSY, "the volume root", "/")
        parent = await self.directory(parts[:-1])
        entry, long = self.names.entry_for(parts[-1], parent.dir_id)
        bpath = join(parent.storage, entry)
        limit = self.backend.capabilities.max_path_length
        if len(bpath) + len(DIR_META_NAME) + 1 > limit:
            raise OSError(errno.ENAMETOOLONG, "File name too long (backend path limit)", path)
        return Entry(parent, parts[-1], bpath, long)

    def cached(self, parts: list[str]) -> DirInfo | None:
        """The directory at a path if it is resolved already (no I/O)."""
        return self._dirs.get("/".join(parts))

    def remember(self, parts: list[str], info: DirInfo) -> None:
        if len(self._dirs) > 50_000:
            root = self._dirs.get("")
            self._dirs.clear()
            if root is not None:
                self._dirs[""] = root
        self._dirs["/".join(parts)] = info

    def forget(self, path: str) -> None:
        """A directory moved or went: forget it and everything resolved below it."""
        key = "/".join(split_path(path))
        for k in [k for k in self._dirs if k == key or k.startswith(key + "/")]:
            del self._dirs[k]

    def moved(self, src: str, dst: str, stub: str) -> None:
        """A directory was renamed from src to dst, its stub now at stub: what was resolved
        below it is still right (ids and storages do not move), under its new path."""
        old, new = "/".join(split_path(src)), "/".join(split_path(dst))
        self.forget(dst)
        for k in [k for k in self._dirs if k == old or k.startswith(old + "/")]:
            self._dirs[new + k[len(old):]] = self._dirs.pop(k)
        info = self._dirs.get(new)
        if info is not None:
            info.stub, info.stub_ino = stub, None

    # -- names in listings ---------------------------------------------------------------
    async def decode(self, info: DirInfo, entry: str, stats: dict[str, BackendStat]) -> str | None:
        """The plaintext name of an entry listed in a directory; None for sealfs's own
        entries. IntegrityError when it does not authenticate in this directory."""
        if is_long_name_entry(entry):
            side = stats.get(sidecar_of(entry))
            if side is not None and (side.foreign or side.is_dir):
                raise IntegrityError("long-name sidecar is not a regular file")
            try:
                encoded = (await self.read_sidecar(info.storage, entry)).decode("ascii")
            except (FileNotFoundError, UnicodeDecodeError):
                raise IntegrityError("long name has no readable sidecar") from None
            return self.long_name(info, entry, encoded)
        if is_reserved(entry):
            return None
        return self.names.decode(entry, info.dir_id)

    async def read_sidecar(self, storage: str, entry: str) -> bytes:
        """The raw content of a long-name entry's sidecar, in the storage that lists it."""
        return (await self.backend.read_head(join(storage, sidecar_of(entry)), SIDECAR_LIMIT))[0]

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


async def make_storage(backend: Backend, storage: str) -> None:
    """mkdir a storage, and the directories above it if they are missing (one request when
    they are not); the storage itself must not exist (FileExistsError)."""
    try:
        await backend.mkdir(storage)
        return
    except FileNotFoundError:
        pass
    for above in (STORAGE_DIR, parent_of(storage)):
        try:
            await backend.mkdir(above)
        except FileExistsError:
            pass
    await backend.mkdir(storage)
