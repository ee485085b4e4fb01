"""Directories of a volume: mkdir, rmdir, listings, attributes, and the directory side of
rename and setattr. A part of Volume (a mixin), which stays the one entry point.

In format 2 a directory is two backend objects (fs/core/paths.py): its stub in its
parent's storage, which holds its record, and its storage, which holds its children. Its
mode and owner come from the record; its times and link count from the storage, which is
what entries are added to and removed from (the stub's own times are never shown). Each
operation orders its backend steps so that a crash between any two leaves the old state
or the new one, plus at most a temporary stub or an orphan storage (fsck finds both);
never a visible directory without its storage.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_module
import time
from contextlib import nullcontext

import trio

from ...backends.base import Backend, BackendStat, ForeignEntryError, join
from ...crypto.format.constants import DIR_META_NAME, META_FLAG_XATTRS, TEMP_PREFIX
from ...crypto.format.header import Kind, Metadata, new_dir_id
from ...crypto.format.names import is_long_name_entry, is_reserved, sidecar_of
from ...crypto.format.xattrs import KIND_DIR
from ...errors import IntegrityError
from .attrs import Attr, Listing, ListingProblem
from .coldscan import BATCH_RATIO
from .headers import HeaderCache
from .paths import DirInfo, PathResolver, split_path
from .storeio import remove_quietly, stat_entry

log = logging.getLogger("sealfs.volume")


class DirectoryOps:
    """Volume's directory operations (Volume provides backend, paths, headers, _attr)."""

    backend: Backend
    paths: PathResolver
    headers: HeaderCache

    # -- attributes ----------------------------------------------------------------------
    async def _storage_stat(self, info: DirInfo, path: str) -> BackendStat:
        """The backend stat of a directory's storage: its times and link count. A stub
        whose storage is missing is damage, unless the stub went too (removed meanwhile)."""
        try:
            return await self.backend.stat(info.storage)
        except FileNotFoundError:
            if not info.stub:
                raise IntegrityError(f"the root's storage {info.storage} is missing") from None
            await stat_entry(self.backend, info.stub, path)
            raise IntegrityError(f"{info.stub}: its storage {info.storage} is missing") from None

    async def _dir_attr(self, info: DirInfo, bstat: BackendStat, count: bool = True) -> Attr:
        """A directory's attributes from its record and its storage's stat bstat (its link
        count: HeaderCache.dir_nlink)."""
        nlink, known = await self.headers.dir_nlink(info.storage, bstat, count)
        meta = info.meta
        return Attr(Kind.DIRECTORY, meta.mode, meta.uid, meta.gid, 4096, nlink,
                    bstat.atime_ns, bstat.mtime_ns, max(bstat.ctime_ns, meta.ctime_ns), 0,
                    info.dir_id, known, xattrs=meta.has_xattrs)

    async def _dir_attr_at(self, parts: list[str], stub: str, stub_stat: BackendStat,
                           path: str, count: bool = True) -> Attr:
        """The attributes of the directory whose stub a lookup or a listing found: one
        resolved before is checked against its record (_checked_dir_attr), one that is
        not has its record read."""
        info = self.paths.known_at(parts, stub, stub_stat)
        if info is not None:
            return await self._checked_dir_attr(parts, info, path, count)
        info = await self.paths.dir_at(parts, stub, stub_stat)
        return await self._dir_attr(info, await self._storage_stat(info, path), count)

    async def _checked_dir_attr(self, parts: list[str], info: DirInfo, path: str,
                                count: bool = True) -> Attr:
        """The attributes of a directory resolved before: its record (did another client
        rewrite it? chmod, chown, setxattr) and its storage (times and links) stat'ed
        together, one round trip where the backend has it; the record read again only
        if it changed."""
        record_stat, storage_stat = await self.backend.stat_many([info.record, info.storage])
        if isinstance(storage_stat, OSError):
            storage_stat = await self._storage_stat(info, path)      # says what is wrong
        info = await self.paths.refreshed(parts, info, record_stat)
        return await self._dir_attr(info, storage_stat, count)

    async def _revalidated_dir_attr(self, parts: list[str], info: DirInfo, stub: str,
                                    path: str) -> Attr | None:
        """A lookup of a directory resolved before (info, its stub expected at stub): its
        record and its storage stat'ed together, one round trip as format 1's one stat.
        The record says whether the name is still this directory (another client may
        have renamed another one over it: the record is then another file) and whether
        its metadata changed; the storage gives its times and links. None when the record
        cannot be stat'ed (the name went, or is something else now): the caller looks it
        up anew."""
        if info.stub != stub:
            return None
        record_stat, storage_stat = await self.backend.stat_many([info.record, info.storage])
        if isinstance(record_stat, OSError) or isinstance(storage_stat, OSError):
            return None
        info = await self.paths.refreshed(parts, info, record_stat)
        return await self._dir_attr(info, storage_stat)

    async def _cached_dir_attr(self, parts: list[str], path: str) -> Attr | None:
        """stat() of a directory resolved before (the parent of every new file: the kernel
        asks for its attributes after each create): its record and its storage, whose
        paths never change, stat'ed together (_checked_dir_attr). None when it is not
        resolved, or went (another client removed it)."""
        info = await self.paths.root() if not parts else self.paths.cached(parts)
        if info is None:
            return None
        record_stat, storage_stat = await self.backend.stat_many([info.record, info.storage])
        if isinstance(storage_stat, FileNotFoundError) or (
                parts and isinstance(record_stat, OSError)):
            if not parts:
                raise IntegrityError(f"the root's storage {info.storage} is missing")
            self.paths.forget(path)         # the caller looks the name up anew
            return None
        if isinstance(storage_stat, OSError):
            raise storage_stat
        info = await self.paths.refreshed(parts, info, record_stat)
        return await self._dir_attr(info, storage_stat)

    async def _current_dir(self, parts: list[str], stub: str, stub_stat: BackendStat) -> DirInfo:
        """The directory whose stub is at stub (stat stub_stat) with its record as it is
        now: what a rewrite of the record (chmod, chown, setxattr) starts from, and what
        its attributes are answered from."""
        info = self.paths.known_at(parts, stub, stub_stat)
        if info is None:
            return await self.paths.dir_at(parts, stub, stub_stat)      # read just now
        return await self.paths.current(parts, info)

    async def _touch_dir(self, info: DirInfo, **changes) -> None:
        """Rewrite a directory's record with changes and now as its change time (the
        record is in the stub, whose times are never shown)."""
        info.meta = info.meta.with_(ctime_ns=time.time_ns(), **changes)
        await self.paths.rewrite_record(info)

    async def _set_dir_attrs(self, path: str, info: DirInfo, *, mode: int | None,
                             uid: int | None, gid: int | None, size: int | None,
                             atime_ns: int | None, mtime_ns: int | None) -> Attr:
        """setattr of a directory: mode and owner in its record, times on its storage."""
        if size is not None:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        set_times = atime_ns is not None or mtime_ns is not None
        if mode is not None or uid is not None or gid is not None \
                or set_times and not self.backend.capabilities.real_change_time:
            new_mode = info.meta.mode if mode is None else mode & 0o7777
            async with self._xattr_lock if mode is not None else nullcontext():
                if mode is not None:          # blob first: the access ACL, then the mode
                    await self._acl_follow_mode(KIND_DIR, info.dir_id, info.meta, new_mode)
                await self._touch_dir(info, mode=new_mode,
                                      uid=info.meta.uid if uid is None else uid,
                                      gid=info.meta.gid if gid is None else gid)
        if set_times:
            cur = await self._storage_stat(info, path)
            await self.backend.set_times(info.storage,
                                         cur.atime_ns if atime_ns is None else atime_ns,
                                         cur.mtime_ns if mtime_ns is None else mtime_ns)
        return await self._dir_attr(info, await self._storage_stat(info, path))

    # -- listings ------------------------------------------------------------------------
    async def listdir(self, path: str) -> Listing:
        """Entries with attributes. An entry whose name, header or sealfs.dir fails to
        authenticate, or that sealfs never writes (a symlink, FIFO, device or socket), is
        left out of the entries and put in .problems by its ciphertext path."""
        parts = split_path(path)
        info = await self.paths.directory(parts)
        entries = await self.backend.scandir(info.storage)
        stats = dict(entries)
        out = Listing()
        seen: set[str] = set()
        named: list[tuple[str, BackendStat, str]] = []
        for entry, bstat in entries:
            bpath = join(info.storage, entry)
            name = None
            try:
                try:
                    name = await self.paths.decode(info, entry, stats)   # never opens entry
                except IntegrityError:
                    if not bstat.foreign:
                        raise
                if bstat.foreign:
                    # never opened: a FIFO would block, a symlink leads out of the store
                    raise ForeignEntryError(bpath, bstat.foreign)
                if name is None:
                    continue
                if name in seen:     # cannot happen with the checks above: never crash on it
                    raise IntegrityError(f"a second entry for the name {name!r}")
                seen.add(name)
                named.append((entry, bstat, name))
            except (IntegrityError, ForeignEntryError) as exc:
                out.problems.append(_problem(bpath, exc, parts, bstat, name))
            except FileNotFoundError:
                continue
        # Every file's header in one batch, rather than a round trip each below.
        await self.headers.prefetch(info.storage, [(entry, bstat) for entry, bstat, _ in named
                                                   if not bstat.is_dir])
        for entry, bstat, name in named:
            bpath = join(info.storage, entry)
            try:
                out.append((name, await self._attr(parts + [name], bpath, bstat, count=False)))
            except (IntegrityError, ForeignEntryError) as exc:
                out.problems.append(_problem(bpath, exc, parts, bstat, name))
            except FileNotFoundError:
                continue
        return out

    async def _listed_stat(self, storage: str, bpath: str, cold: bool) -> BackendStat | None:
        """The stat of a file at bpath from a recent listing of its directory (storage),
        its header fetched with the listing's others (fs/core/coldscan.py); None when there
        is none to answer from. The second cold lookup (cold: its header not read yet)
        of a run of them that find files (ColdListings.note_cold) lists the directory,
        and the first at which the run is long enough for the batch to pay fetches its
        headers."""
        listings = self.headers.listed
        entry = bpath[len(storage) + 1:] if storage else bpath
        listed = listings.stat_of(storage, entry)
        if listed is not None or not cold:
            return listed if listed is not None and _plain_file(listed) else None
        run = listings.run(storage) + 1           # with this one
        if run < 2:
            return None
        generation, known = listings.generation, listings.listed(storage)
        if known is None:
            taken = listings.now()
            entries = dict(await self.backend.scandir(storage))
            files = [(name, st) for name, st in entries.items() if _plain_file(st)
                     and (not is_reserved(name) or is_long_name_entry(name))]
            listings.keep(storage, entries, files, taken, generation, fetched=False)
        else:
            taken, entries, files = known
        if run * BATCH_RATIO < len(files):
            return None
        await self.headers.prefetch(storage, files)
        listings.keep(storage, entries, files, taken, generation, fetched=True)
        listed = listings.stat_of(storage, entry)
        return listed if listed is not None and _plain_file(listed) else None

    async def walk(self, path: str = "") -> Listing:
        """Every entry below path, depth first, as (plaintext path, attr); .problems
        gathers those of every directory listed (see listdir). A directory met twice (a
        copied stub: two records naming one storage) is a problem, not a loop."""
        out = Listing()
        stack = ["/".join(split_path(path))]
        seen: set[bytes] = set()
        while stack:
            current = stack.pop()
            listing = await self.listdir(current)
            out.problems.extend(listing.problems)
            for name, attr in sorted(listing, key=_by_name):
                child = f"{current}/{name}" if current else name
                if attr.is_dir:
                    if attr.identity in seen:
                        info = await self.paths.directory(split_path(child))
                        out.problems.append(ListingProblem(
                            info.stub, "a second record of a directory listed already (a "
                            "copied directory stub)", current,
                            await self.backend.stat(info.stub), name))
                        continue
                    seen.add(attr.identity)
                    stack.append(child)
                out.append((child, attr))
        return out

    # -- mkdir, rmdir --------------------------------------------------------------------
    async def mkdir(self, path: str, mode: int = 0o755, uid: int | None = None,
                    gid: int | None = None, *, inherit: bool = True) -> Attr:
        """A new directory owned by uid and gid (the caller's), but for the setgid rule
        (see setgid_rule); inherit=False keeps mode and gid exactly as given (a copy
        that restores its source's ownership).

        Its storage first (a crash leaves an orphan, empty storage), then its stub under a
        temporary name with its record, then the stub renamed into place (the name
        appears with everything behind it)."""
        parent, name, bpath, long = await self.paths.entry(path)
        inherited: dict[bytes, bytes] = {}
        if inherit:
            mode, gid = setgid_rule(parent, mode, gid, directory=True)
            mode, inherited = await self._inherited(parent, mode, directory=True)
        meta = Metadata(Kind.DIRECTORY, mode & 0o7777, uid_or_own(uid), gid_or_own(gid),
                        flags=META_FLAG_XATTRS if inherited else 0)
        dir_id = new_dir_id()
        if inherited:       # before anything names it (a crash: an orphan blob)
            await self.xattrs.write(KIND_DIR, dir_id, inherited)
        storage = await self.paths.create_storage(dir_id)
        tmp = join(parent.storage, TEMP_PREFIX + os.urandom(8).hex())
        try:
            await self.backend.mkdir(tmp)
            try:
                await self.paths.write_new_record(tmp, dir_id, meta)
                if long is not None:
                    await self.paths.write_sidecar(bpath, long)
                await self.backend.rename(tmp, bpath, replace=False)
            except BaseException:
                await remove_quietly(self.backend, join(tmp, DIR_META_NAME))
                await remove_quietly(self.backend, tmp, is_dir=True)
                raise
        except BaseException:
            await remove_quietly(self.backend, storage, is_dir=True)
            raise
        info = DirInfo(bpath, storage, dir_id, meta)
        self.paths.remember(split_path(path), info)
        self.headers.subdir_change(parent.storage, +1)
        self.headers.dir_created(storage)
        await self._entries_changed(parent)
        return await self._dir_attr(info, await self.backend.stat(storage))

    async def rmdir(self, path: str) -> None:
        """The stub goes first (renamed aside: the name is gone), then the storage, then
        the stub; if the storage cannot go (another client created in it meanwhile) the
        stub comes back and the directory stays."""
        parent, name, bpath, long = await self.paths.entry(path)
        bstat = await stat_entry(self.backend, bpath, path)
        if not bstat.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        # Its record as it is now: whether it has an xattr blob to remove too.
        info = await self._current_dir(split_path(path), bpath, bstat)
        await self.paths.check_empty(info.storage, path)
        tmp = join(parent.storage, TEMP_PREFIX + os.urandom(8).hex())
        await self.backend.rename(bpath, tmp, replace=False)
        try:
            await self.backend.rmdir(info.storage)
        except FileNotFoundError:
            pass            # gone already (fsck reported the damage, or a crash)
        except OSError as exc:
            with trio.CancelScope(shield=True):
                try:
                    await self.backend.rename(tmp, bpath, replace=False)
                except OSError as back:
                    log.warning("%s: could not move back to %s: %s", tmp, bpath, back)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise OSError(errno.ENOTEMPTY, "Directory not empty", path) from None
            raise
        await remove_quietly(self.backend, join(tmp, DIR_META_NAME))
        await self.backend.rmdir(tmp)
        await self._drop_blob(KIND_DIR, info.dir_id, info.meta)
        if long is not None:
            await remove_quietly(self.backend, sidecar_of(bpath))
        self.paths.forget(path)
        self.headers.subdir_change(parent.storage, -1)
        self.headers.dir_removed(info.storage)
        await self._entries_changed(parent)

    async def _entries_changed(self, *parents: DirInfo) -> None:
        """Entries of these directories were added, removed or renamed: their mtime and
        ctime move, which backends that leave them alone (Azure Files over REST) need
        done by us, one request a directory. Their subdirectory counts (kept by the
        callers) stay valid at the mtime stamped: no recount for our own change."""
        self.headers.listed.clear()
        if self.backend.capabilities.dir_times_follow_entries:
            return
        for storage in dict.fromkeys(parent.storage for parent in parents):
            await self.backend.stamp_dir(storage)
            self.headers.subdir_change(storage, 0)

    # -- rename ----------------------------------------------------------------------------
    async def _victim_dir_aside(self, parent: DirInfo, bpath: str, bstat: BackendStat,
                                path: str) -> tuple[str, DirInfo]:
        """rename over an empty directory, first step: its stub to a temporary name (its
        storage is removed once the source is in place: _victim_dir_remove)."""
        victim = await self._current_dir(split_path(path), bpath, bstat)
        await self.paths.check_empty(victim.storage, path)
        tmp = join(parent.storage, TEMP_PREFIX + os.urandom(8).hex())
        await self.backend.rename(bpath, tmp, replace=False)
        return tmp, victim

    async def _victim_dir_remove(self, tmp: str, victim: DirInfo) -> None:
        """The replaced directory's storage, then its stub (a crash between: a temporary
        stub left, which rmdir of its parent and fsck remove)."""
        try:
            await remove_quietly(self.backend, victim.storage, is_dir=True)
        except OSError as exc:        # created in meanwhile by another client: fsck's orphan
            log.warning("%s: replaced directory's storage not removed: %s", victim.storage, exc)
        await remove_quietly(self.backend, join(tmp, DIR_META_NAME))
        await remove_quietly(self.backend, tmp, is_dir=True)
        await self._drop_blob(KIND_DIR, victim.dir_id, victim.meta)
        self.headers.dir_removed(victim.storage)

    async def _dir_renamed(self, src: str, dst: str, s_parent: DirInfo, d_parent: DirInfo,
                           d_bpath: str, replaced: bool) -> None:
        """After the one backend rename of a directory's stub: resolved paths below it move
        (nothing on the backend did), subdirectory counts follow, and its change time
        moves (rename changes its name, as ext4 records; its storage did not move, so the
        backend cannot show it)."""
        self.paths.moved(src, dst, d_bpath)
        if s_parent.storage != d_parent.storage:
            self.headers.subdir_change(s_parent.storage, -1)
            self.headers.subdir_change(d_parent.storage, +1)
        if replaced:
            self.headers.subdir_change(d_parent.storage, -1)
        parts = split_path(dst)
        await self._touch_dir(await self.paths.current(parts, await self.paths.directory(parts)))


def _problem(bpath: str, exc: Exception, parts: list[str], bstat: BackendStat,
             name: str | None) -> ListingProblem:
    """A listed entry that failed, by its ciphertext path (said once, not in the reason)."""
    reason = str(exc)
    if reason.startswith(bpath + ": "):
        reason = reason[len(bpath) + 2:]
    return ListingProblem(bpath, reason, "/".join(parts), bstat, name)


def _by_name(entry: tuple[str, Attr]) -> str:
    return entry[0]


def setgid_rule(parent: DirInfo, mode: int, gid: int | None, *,
                directory: bool) -> tuple[int, int | None]:
    """(mode, gid) of a new entry in parent. As ext4 (and POSIX with BSD group semantics)
    has it: in a directory whose setgid bit is set, a new entry takes the directory's group
    instead of its creator's, and a new subdirectory takes the setgid bit too. Decided
    from the parent's sealed record, which resolving the new entry's path has read."""
    if parent.meta.mode & stat_module.S_ISGID:
        return (mode | stat_module.S_ISGID if directory else mode), parent.meta.gid
    return mode, gid


def uid_or_own(uid: int | None) -> int:
    return os.getuid() if uid is None else uid


def gid_or_own(gid: int | None) -> int:
    return os.getgid() if gid is None else gid


def _plain_file(bstat: BackendStat) -> bool:
    """A listed entry a lookup may be answered from: a file of sealfs's (a directory's
    stub needs its record and storage; a planted entry is reported by the usual path)."""
    return not bstat.is_dir and not bstat.foreign
