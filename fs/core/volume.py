"""The encrypted filesystem as a library: used by the FUSE mount and by the CLI alike.

Plaintext paths in, backend calls out. Volume decides what each operation does and in
what order; its parts each own one job and one cache:

- paths.PathResolver: plaintext path -> backend path, directory records, long names;
- directories.DirectoryOps: mkdir, rmdir, listings and directory attributes (a mixin);
- headers.HeaderCache: file headers, committed sizes, link counts, journal replay;
- openfiles.OpenFiles: one FileState (fs/core/files.py) per open file id, shared by
  every handle and hard link; files.py's write-back goes through writeback.py;
- lifecycle: creating a volume, reading and rewriting its sealfs.json.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass

import trio

from ...backends.base import Backend, BackendStat, ForeignEntryError, join, parent_of
from ...crypto.format.config import VolumeConfig
from ...crypto.format.constants import (
    DEFAULT_CHUNK_SIZE,
    HIDDEN_PREFIX,
    META_FLAG_XATTRS,
    TEMP_PREFIX,
)
from ...crypto.format.header import (
    FileHeader,
    Kind,
    new_file_id,
    seal_header,
)
from ...crypto.format.kdf import (
    config_mac_key,
    dir_meta_key_secret,
    file_key,
    locator_key_secret,
    name_key_secret,
    pin_fingerprint,
    xattr_key_secret,
)
from ...crypto.format.names import (
    NameCipher,
    sidecar_of,
)
from ...crypto.format.xattrs import KIND_FILE
from ...crypto.keys.audit import AuditLog
from ...crypto.keys.broker import KeyBroker
from ...crypto.keys.kms import KekProvider, KeySecrets, provider_from_config
from .attrs import Attr, ListingProblem
from .cache import ChunkCache
from .directories import DirectoryOps, gid_or_own, setgid_rule, uid_or_own
from .files import FileTuning
from .headers import HeaderCache
from .lifecycle import create_store, read_config, write_config
from .openfiles import OpenFile, OpenFiles
from .paths import DirInfo, PathResolver, split_path
from .pins import PinStore
from .storeio import remove_quietly, stat_entry
from .xattrs import XattrBlobs, XattrOps

log = logging.getLogger("sealfs.volume")

@dataclass
class VolumeTuning:
    cache_bytes: int = 128 * 1024 * 1024
    dirty_bytes: int = 64 * 1024 * 1024
    files: FileTuning = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.files is None:
            self.files = FileTuning()


@dataclass(frozen=True)
class TempName:
    """A file of Volume.create_temp(): it lives under a backend name in the reserved
    sealfs.tmp.* namespace, which no plaintext name encodes to."""

    bpath: str


# The tag's dot keeps remove_temps() off the temporaries of create and mkdir (hex only).
_TEMP_TAG = re.compile(r"[a-z]{1,16}\.")


class Volume(DirectoryOps, XattrOps):
    def __init__(self, backend: Backend, config: VolumeConfig, broker: KeyBroker,
                 names_dek: bytes, tuning: VolumeTuning | None = None) -> None:
        self.backend = backend
        self.config = config
        self.broker = broker
        self.tuning = tuning or VolumeTuning()
        self.chunk_size = config.chunk_size
        # Both keys live in locked memory, zeroed by close(); AES-SIV keeps its own copy.
        names_key = name_key_secret(names_dek)
        self.names = NameCipher(names_key.readonly())
        names_key.wipe()
        #: plaintext paths to backend paths, directory records (it holds their key)
        self.paths = PathResolver(backend, self.names, dir_meta_key_secret(names_dek),
                                  locator_key_secret(names_dek))
        self.cache = ChunkCache(self.tuning.cache_bytes)
        #: open files by file id: one state for every handle and hard link of a file
        self.open_files = OpenFiles(backend, broker, config, self.cache, self.tuning, self._spawn)
        #: headers, committed sizes and link counts of files and directories
        self.headers = HeaderCache(backend, broker, self.chunk_size, self.open_files.get)
        self.open_files.headers = self.headers
        #: sealed xattr blobs, one per inode (fs/core/xattrs.py)
        self.xattrs = XattrBlobs(backend, xattr_key_secret(names_dek), locator_key_secret(names_dek))
        self.open_files.xattrs = self.xattrs
        self._xattr_lock = trio.Lock()
        #: the mount's nursery, for background read-ahead (None for one-off CLI commands)
        self.background: trio.Nursery | None = None

    def _spawn(self, fn, *args) -> bool:
        if self.background is None:
            return False
        self.background.start_soon(fn, *args)
        return True

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    async def init(cls, backend: Backend, provider: KekProvider, *,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, pins: PinStore | None = None,
                   uid: int | None = None, gid: int | None = None, audit: AuditLog | None = None,
                   allow_purgeable: bool = False) -> VolumeConfig:
        """`sealfs init`: a new volume with one DEK wrapped by the provider's KEK."""
        return await create_store(backend, provider, chunk_size=chunk_size, pins=pins, uid=uid,
                                  gid=gid, audit=audit, allow_purgeable=allow_purgeable)

    @classmethod
    async def load(cls, backend: Backend, secrets: KeySecrets, *, pins: PinStore | None = None,
                   tuning: VolumeTuning | None = None, audit: AuditLog | None = None,
                   check_kek: bool = False, allow_purgeable: bool = False,
                   key_ttl: float | None = None) -> Volume:
        """Open a volume: read and verify sealfs.json, unwrap the names DEK, check the pin.

        check_kek runs the provider's safety checks (recoverable, enabled, key_ops) as a
        mount does; one-off CLI commands skip that extra KMS round trip.
        """
        config, claimed_mac = await read_config(backend)
        provider = provider_from_config(config.kek, secrets)
        broker = KeyBroker(provider, config, audit=audit,
                           **({"ttl": key_ttl} if key_ttl is not None else {}))
        try:
            if check_kek:
                await trio.to_thread.run_sync(provider.check, allow_purgeable)
            names_dek = await broker.dek(config.name_dek_id)
            config.verify(config_mac_key(names_dek), claimed_mac)
            pin = (backend.location, config.volume_id.hex(), pin_fingerprint(names_dek))
            first_use = pins is not None and pins.check(*pin, record=False)
            volume = cls(backend, config, broker, names_dek, tuning)
            await volume.paths.root()
            await volume.headers.find_journals()
            if first_use:      # pinned only once the volume really opened
                pins.check(*pin)
        except BaseException:
            broker.close()
            raise
        return volume

    async def close(self) -> None:
        """Flush everything and release handles; keys are zeroed."""
        try:
            await self.flush_all()
        finally:
            await self.open_files.close_all()
            self.cache.clear()
            self.broker.close()
            self.paths.close()
            self.xattrs.close()
            await self.backend.aclose()

    async def save_config(self) -> None:
        """Rewrite sealfs.json atomically (key rotation): temp file, then rename."""
        await write_config(self.backend, self.config, await self.broker.dek(self.config.name_dek_id))

    async def _bstat(self, bpath: str, path: str) -> BackendStat:
        return await stat_entry(self.backend, bpath, path)

    # -- attributes ------------------------------------------------------------------------
    async def stat(self, path: str) -> Attr:
        parts = split_path(path)
        attr = await self._cached_dir_attr(parts, path)
        if attr is not None:
            return attr
        parent, name, bpath, _ = await self.paths.entry(path)
        bstat = await self._bstat(bpath, path)
        return await self._attr(parts, bpath, bstat)

    async def lookup(self, path: str) -> Attr | None:
        """stat() of a name that may well not exist (the kernel looks every name up before
        it creates it): None when it does not, without the cost of an exception."""
        parts = split_path(path)
        if not parts:
            return await self.stat(path)
        parent, name, bpath, _ = await self.paths.entry(path)
        known = self.paths.cached(parts)
        try:
            if known is not None:
                # A directory resolved before: its record and its storage stat at once.
                attr = await self._revalidated_dir_attr(parts, known, bpath, path)
                if attr is not None:
                    return attr
            elif (bstat := await self._listed_stat(parent.storage, bpath,
                                                   not self.headers.knows(bpath))) is not None:
                # One of a run of cold lookups in this directory: from its listing.
                return await self._attr(parts, bpath, bstat)
            elif not self.headers.knows(bpath):
                # Cold: most names are files, whose header the answer needs anyway; its
                # read brings the file's stat along (one backend call, not two).
                bstat = await self.headers.read_cold(bpath)
                if bstat is not None:
                    self.headers.listed.note_cold(parent.storage)
                    return await self._attr(parts, bpath, bstat)
            bstat = await self.backend.stat(bpath)
        except FileNotFoundError:
            if known is not None:    # a directory another client removed
                self.paths.forget(path)
            self.headers.listed.end_run(parent.storage)
            return None
        if known is not None and not bstat.is_dir:   # a file another client put there
            self.paths.forget(path)
        return await self._attr(parts, bpath, bstat)

    async def _attr(self, parts: list[str], bpath: str, bstat: BackendStat,
                    count: bool = True) -> Attr:
        if bstat.foreign:       # planted: reading its header could block (FIFO) or leave the store
            raise ForeignEntryError(bpath, bstat.foreign)
        if bstat.is_dir:
            return await self._dir_attr_at(parts, bpath, bstat, "/".join(parts), count)
        header, size = await self.headers.header(bpath, bstat)
        nlink = await self.headers.nlink(bpath, bstat, header.file_id)
        state = self.open_files.get(header.file_id)
        if state is not None:
            return self.open_files.state_attr(state, bstat, nlink)
        meta = header.meta
        return Attr(meta.kind, meta.mode, meta.uid, meta.gid, size, nlink, bstat.atime_ns,
                    bstat.mtime_ns, max(bstat.ctime_ns, meta.ctime_ns), meta.rdev, header.file_id,
                    xattrs=meta.has_xattrs)

    async def file_dek_id(self, path: str) -> int:
        """The id of the DEK that seals a file (rekey, `keys list`): from its header."""
        _parent, _name, bpath, _long = await self.paths.entry(path)
        header, _size = await self.headers.header(bpath, await self._bstat(bpath, path))
        return header.dek_id

    # -- directories (the rest: fs/core/directories.py) -----------------------------------
    def ciphertext_path(self, bpath: str) -> str:
        """Where an entry is in the store, for messages about entries without a name."""
        return f"{self.backend.location.rstrip('/')}/{bpath}"

    def where_of(self, problem: ListingProblem) -> str:
        """A listing problem's ciphertext path (and plaintext path, when its name
        authenticated), for messages."""
        of = f" of /{problem.path}" if problem.path is not None else ""
        return f"{self.ciphertext_path(problem.bpath)} (ciphertext path{of})"

    def describe(self, problem: ListingProblem) -> str:
        """One line about a listing problem: where it is, and what is wrong."""
        return f"{self.where_of(problem)}: {problem.reason}"

    # -- files -----------------------------------------------------------------------------
    async def create(self, path: str, mode: int = 0o644, uid: int | None = None,
                     gid: int | None = None, *, kind: Kind = Kind.REGULAR, rdev: int = 0,
                     content: bytes = b"", append: bool = False) -> OpenFile:
        """Create a new file (EEXIST if the name exists), complete on the backend before its
        name appears, and return it open for writing. Owned by uid and gid (the caller's),
        but for the setgid rule (see _setgid_rule)."""
        parent, name, bpath, long = await self.paths.entry(path)
        mode, gid = setgid_rule(parent, mode, gid, directory=False)
        tmp = join(parent.storage, TEMP_PREFIX + os.urandom(8).hex())
        # The parent's default ACL: the new file's blob exists before the file does.
        inherited: dict[bytes, bytes] = {}
        if kind != Kind.SYMLINK:
            mode, inherited = await self._inherited(parent, mode, directory=False)
        file_id = new_file_id() if inherited else None
        if file_id is not None:
            await self.xattrs.write(KIND_FILE, file_id, inherited)
        try:
            state = await self.open_files.new_file(
                tmp, bpath, mode, uid_or_own(uid), gid_or_own(gid), kind, rdev, content,
                file_id, META_FLAG_XATTRS if inherited else 0)
        except BaseException:
            if file_id is not None:
                await self.xattrs.delete(KIND_FILE, file_id)
            raise
        handle = state.handle
        try:
            if long is not None:
                await self.paths.write_sidecar(bpath, long)
            created = await self.backend.place_new(handle, tmp, bpath)
        except BaseException:
            state.forget_secrets()
            self.broker.release(state.dek_id)
            await self.backend.close(handle)
            await remove_quietly(self.backend, tmp)
            if file_id is not None:
                await self.xattrs.delete(KIND_FILE, file_id)
            raise
        opened = self.open_files.open_new(state, path, append)
        opened.fresh_stat = created       # FUSE's create asks for attributes right away
        await self._entries_changed(parent)
        return opened

    # -- temporaries: files no plaintext name can reach -----------------------------------
    async def create_temp(self, directory: str, mode: int = 0o600, uid: int | None = None,
                          gid: int | None = None, *, tag: str, kind: Kind = Kind.REGULAR,
                          rdev: int = 0, content: bytes = b"") -> tuple[OpenFile, TempName]:
        """Create a file in directory under a reserved backend name (sealfs.tmp.<tag><random>)
        and return it open for writing. No plaintext name can equal it, so no user's file
        is ever taken for it; place_temp() later renames it over its real name. The tag
        marks whose temporaries they are, for remove_temps()."""
        if not _TEMP_TAG.fullmatch(tag):
            raise ValueError(f"bad temporary tag {tag!r}")
        parent = await self.paths.directory(split_path(directory))
        tmp = join(parent.storage, TEMP_PREFIX + tag + os.urandom(8).hex())
        state = await self.open_files.new_file(tmp, tmp, mode, uid_or_own(uid), gid_or_own(gid), kind, rdev,
                                                content)
        return self.open_files.open_new(state, directory, False), TempName(tmp)

    async def place_temp(self, temp: TempName, path: str) -> None:
        """Rename a closed temporary over path (a file, or nothing) in the same directory:
        rename()'s file-over-file case, for a source that has no plaintext name."""
        parent, name, bpath, long = await self.paths.entry(path)
        if parent_of(temp.bpath) != parent.storage:
            raise OSError(errno.EXDEV, "a temporary is placed in its own directory", path)
        victim_blob = None
        try:
            d_stat = await self.backend.stat(bpath)
        except FileNotFoundError:
            d_stat = None
        if d_stat is not None:
            if d_stat.is_dir:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            victim_blob = await self._last_blob(bpath, d_stat)
            victim = await self.open_files.at(bpath)
            if victim is not None and not self.backend.capabilities.unlink_open_files:
                await self._remove_file_entry(parent, bpath, None)
            elif victim is not None and victim.bpath == bpath:
                victim.unlinked = True
        if long is not None:
            await self.paths.write_sidecar(bpath, long)
        await self.backend.rename(temp.bpath, bpath, replace=True)
        if victim_blob is not None:
            await self.xattrs.delete(KIND_FILE, victim_blob)
        self.headers.forget_header(temp.bpath)
        self.headers.forget_header(bpath)
        for state in self.open_files.values():
            if state.bpath == temp.bpath:
                state.bpath = bpath
        await self._entries_changed(parent)

    async def discard_temp(self, temp: TempName) -> None:
        await remove_quietly(self.backend, temp.bpath)

    async def remove_temps(self, directory: str, tag: str) -> int:
        """Remove the temporary files tagged tag in directory (what an interrupted run of
        their maker left); the number removed. Other temporaries are not touched."""
        if not _TEMP_TAG.fullmatch(tag):
            raise ValueError(f"bad temporary tag {tag!r}")
        info = await self.paths.directory(split_path(directory))
        prefix = TEMP_PREFIX + tag
        removed = 0
        for entry in await self.backend.listdir(info.storage):
            if not entry.startswith(prefix):
                continue
            bpath = join(info.storage, entry)
            try:
                bstat = await self.backend.stat(bpath)
            except FileNotFoundError:
                continue
            if not bstat.is_dir and not bstat.foreign:      # only what create_temp makes
                await remove_quietly(self.backend, bpath)
                removed += 1
        return removed

    async def open(self, path: str, *, write: bool = False, truncate: bool = False,
                   append: bool = False) -> OpenFile:
        parent, name, bpath, long = await self.paths.entry(path)
        bstat = await self._bstat(bpath, path)
        if bstat.is_dir:
            if write:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if write or truncate:
            self.headers.listed.clear()     # its stat will move: no listing before may answer
        state, unchanged = await self.open_files.state_for(bpath, path)
        state.refs += 1
        state.has_writer |= write
        handle = OpenFile(self.open_files, state, write, append, path)
        handle.content_unchanged = unchanged and not truncate
        if write and not state.writable:
            await handle.close()
            raise OSError(errno.EROFS, "the backend file is read-only", path)
        if truncate:
            await handle.truncate(0)
        return handle

    async def flush_all(self) -> None:
        """Write back every open file's dirty data."""
        await self.open_files.flush_all()

    async def read_file(self, path: str) -> bytes:
        f = await self.open(path)
        try:
            return await f.read_all()
        finally:
            await f.close()

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        try:
            f = await self.create(path, mode)
        except FileExistsError:
            f = await self.open(path, write=True, truncate=True)
        try:
            await f.write(0, data)
        finally:
            await f.close()

    # -- namespace changes -----------------------------------------------------------------
    async def unlink(self, path: str) -> None:
        parent, name, bpath, long = await self.paths.entry(path)
        bstat = await self._bstat(bpath, path)
        if bstat.is_dir:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        await self._losing_link(bpath, bstat)
        last_blob = await self._last_blob(bpath, bstat)
        await self._remove_file_entry(parent, bpath, long)
        if last_blob is not None:
            await self.xattrs.delete(KIND_FILE, last_blob)
        await self._entries_changed(parent)

    async def _last_blob(self, bpath: str, bstat: BackendStat) -> bytes | None:
        """The file id whose xattr blob goes with this name: its last link, not open (an
        open one keeps its blob until its last close, which deletes it: OpenFiles._drop)."""
        header, _size = await self.headers.header(bpath, bstat)
        if not header.meta.has_xattrs or header.file_id in self.open_files:
            return None
        if await self.headers.nlink(bpath, bstat, header.file_id) > 1:
            return None
        return header.file_id

    async def _losing_link(self, bpath: str, bstat: BackendStat) -> None:
        """A file is about to lose the name bpath: its change time moves, which its other
        names and open handles show (the last name of a closed file nobody can look at)."""
        if self.backend.capabilities.real_change_time:
            return
        header, _size = await self.headers.header(bpath, bstat)
        if header.file_id in self.open_files \
                or await self.headers.nlink(bpath, bstat, header.file_id) > 1:
            await self._touch_file(bpath, bstat)

    async def _remove_file_entry(self, parent: DirInfo, bpath: str, long: str | None) -> None:
        state = await self.open_files.at(bpath)
        if state is not None and not self.backend.capabilities.unlink_open_files:
            # SMB keeps an open file's name in delete-pending state: hide it NFS-style
            # instead and delete it on the last close (fsck removes leftovers of a crash).
            hidden = join(parent.storage, HIDDEN_PREFIX + os.urandom(8).hex())
            await self.backend.rename(bpath, hidden, replace=False)
            if state.bpath == bpath:
                state.bpath = hidden
            await self.open_files.add_victim(state, hidden)
        else:
            await self.backend.unlink(bpath)
            if state is not None and state.bpath == bpath:
                state.unlinked = True
        self.headers.forget_header(bpath)
        if long is not None:
            await remove_quietly(self.backend, sidecar_of(bpath))

    async def rename(self, src: str, dst: str, *, noreplace: bool = False) -> None:
        src_parts, dst_parts = split_path(src), split_path(dst)
        if src_parts == dst_parts:
            await self.stat(src)
            return
        if src_parts and dst_parts[:len(src_parts)] == src_parts:
            raise OSError(errno.EINVAL, "cannot move a directory into itself", dst)
        s_parent, s_name, s_bpath, s_long = await self.paths.entry(src)
        d_parent, d_name, d_bpath, d_long = await self.paths.entry(dst)
        s_stat = await self._bstat(s_bpath, src)
        victim_dir = victim_info = victim_blob = None
        try:
            d_stat = await self.backend.stat(d_bpath)
        except FileNotFoundError:
            d_stat = None
        if d_stat is not None and not s_stat.is_dir and not d_stat.is_dir \
                and s_stat.ino and s_stat.ino == d_stat.ino and not noreplace:
            return      # POSIX: both names are links to the same file; rename does nothing
        if d_stat is not None:
            if noreplace:
                raise FileExistsError(errno.EEXIST, "File exists", dst)
            if s_stat.is_dir and not d_stat.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", dst)
            if not s_stat.is_dir and d_stat.is_dir:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", dst)
            if d_stat.is_dir:
                victim_dir, victim_info = await self._victim_dir_aside(d_parent, d_bpath, d_stat,
                                                                       dst)
            else:
                await self._losing_link(d_bpath, d_stat)
                victim_blob = await self._last_blob(d_bpath, d_stat)
                victim = await self.open_files.at(d_bpath)
                if victim is not None and not self.backend.capabilities.unlink_open_files:
                    await self._remove_file_entry(d_parent, d_bpath, None)
                elif victim is not None and victim.bpath == d_bpath:
                    victim.unlinked = True
        if d_long is not None:
            await self.paths.write_sidecar(d_bpath, d_long)
        try:
            await self.backend.rename(s_bpath, d_bpath, replace=not noreplace)
        except PermissionError:
            if d_stat is None or d_stat.is_dir or self.backend.capabilities.unlink_open_files:
                raise
            # Opened since it was checked above (an open or a stat in flight): SMB will not
            # replace an open file, so it goes aside like an open victim, then src moves.
            hidden = join(d_parent.storage, HIDDEN_PREFIX + os.urandom(8).hex())
            await self.backend.rename(d_bpath, hidden, replace=False)
            self.headers.forget_header(d_bpath)
            try:
                await self.backend.rename(s_bpath, d_bpath, replace=not noreplace)
            except BaseException:
                with trio.CancelScope(shield=True):   # the rename failed: dst stays
                    try:
                        await self.backend.rename(hidden, d_bpath, replace=False)
                    except OSError as exc:
                        log.warning("%s: could not move back to %s: %s", hidden, d_bpath, exc)
                raise
            await self._hidden_busy(d_bpath, hidden)
        if s_long is not None:
            await remove_quietly(self.backend, sidecar_of(s_bpath))
        if victim_info is not None:
            await self._victim_dir_remove(victim_dir, victim_info)
        if victim_blob is not None:         # the replaced file's last link went
            await self.xattrs.delete(KIND_FILE, victim_blob)
        self.headers.forget_header(s_bpath)
        self.headers.forget_header(d_bpath)
        if s_stat.is_dir:
            # Its storage, and every backend path below it, stayed where it was.
            await self._dir_renamed(src, dst, s_parent, d_parent, d_bpath,
                                    victim_info is not None)
        else:
            for state in self.open_files.values():
                if state.bpath == s_bpath:
                    state.bpath = d_bpath
            if not self.backend.capabilities.real_change_time:
                # rename changes the moved file's change time, as ext4 records
                await self._touch_file(d_bpath)
        await self._entries_changed(s_parent, d_parent)

    async def _hidden_busy(self, bpath: str, hidden: str) -> None:
        """A replaced file that something held open, moved aside from bpath to hidden: the
        victim of its open state if it has one by now, else deleted (on SMB when the last
        handle closes)."""
        state = await self.open_files.at(hidden)
        if state is None:
            await remove_quietly(self.backend, hidden)
            return
        if state.bpath == bpath:
            state.bpath = hidden
        await self.open_files.add_victim(state, hidden)

    async def link(self, src: str, dst: str) -> Attr:
        if not self.backend.capabilities.hard_links:
            raise OSError(errno.EPERM, "the backend does not support hard links", dst)
        s_parent, s_name, s_bpath, _ = await self.paths.entry(src)
        s_stat = await self._bstat(s_bpath, src)
        if s_stat.is_dir:
            raise OSError(errno.EPERM, "hard links to directories are not allowed", src)
        d_parent, d_name, d_bpath, d_long = await self.paths.entry(dst)
        try:
            await self.backend.stat(d_bpath)
            raise FileExistsError(errno.EEXIST, "File exists", dst)
        except FileNotFoundError:
            pass
        if d_long is not None:
            await self.paths.write_sidecar(d_bpath, d_long)
        await self.backend.link(s_bpath, d_bpath)
        self.headers.forget_header(s_bpath)
        if not self.backend.capabilities.real_change_time:
            await self._touch_file(d_bpath)
        await self._entries_changed(d_parent)
        return await self.stat(dst)

    async def symlink(self, path: str, target: str, uid: int | None = None,
                      gid: int | None = None) -> Attr:
        f = await self.create(path, 0o777, uid, gid, kind=Kind.SYMLINK,
                              content=os.fsencode(target))
        await f.close()
        return await self.stat(path)

    async def readlink(self, path: str) -> str:
        attr = await self.stat(path)
        if attr.kind != Kind.SYMLINK:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return os.fsdecode(await self.read_file(path))

    async def mknod(self, path: str, kind: Kind, mode: int, rdev: int = 0,
                    uid: int | None = None, gid: int | None = None) -> Attr:
        f = await self.create(path, mode, uid, gid, kind=kind, rdev=rdev)
        await f.close()
        return await self.stat(path)

    # -- metadata changes --------------------------------------------------------------------
    async def _touch_file(self, bpath: str, bstat: BackendStat | None = None) -> None:
        """Record now as the file's change time in its sealed header, leaving its backend
        times as they are: for backends whose own change time is the write time (SMB).
        One compound request when the file is not open here."""
        now = time.time_ns()
        state = await self.open_files.at(bpath)
        if state is not None and state.writable:
            try:
                async with state.lock:
                    await state.write_metadata(state.meta.with_(ctime_ns=now))
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
                # Its last close came first (another process, while we waited): the
                # file is closed now, and its header is rewritten by path below.
                bstat = None
            else:
                self.headers.forget_file(state.file_id)
                return
        if bstat is None:
            bstat = await self.backend.stat(bpath)
        header, size = await self.headers.header(bpath, bstat)
        new = FileHeader(header.dek_id, header.file_id, header.meta.with_(ctime_ns=now))
        key = file_key(await self.broker.dek(header.dek_id), header.file_id)
        try:
            await self.backend.rewrite_head(bpath, seal_header(key, new), bstat.atime_ns,
                                            bstat.mtime_ns)
        except PermissionError:
            log.debug("%s: read-only on the backend; change time not recorded", bpath)
            return
        self.headers.forget_file(header.file_id)

    async def setattr(self, path: str, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      handle: OpenFile | None = None) -> Attr:
        """chmod/chown/truncate/utimens. Times left None keep their value."""
        if handle is not None:
            state = handle.state
        else:
            parts = split_path(path)
            info = await self.paths.current([], await self.paths.root()) if not parts else None
            if parts:
                _parent, _name, bpath, _long = await self.paths.entry(path)
                bstat = await self._bstat(bpath, path)
                if bstat.is_dir:
                    info = await self._current_dir(parts, bpath, bstat)
            state = None
            if info is not None:
                return await self._set_dir_attrs(path, info, mode=mode, uid=uid, gid=gid,
                                                 size=size, atime_ns=atime_ns, mtime_ns=mtime_ns)
        opened = None
        if state is None:
            opened = await self.open(path, write=size is not None or mode is not None
                                     or uid is not None or gid is not None)
            state = opened.state
        try:
            # chmod takes the xattr lock first (setxattr's order: xattr lock, then the
            # file's), as it writes the access ACL's blob before the mode (blob first).
            async with self._xattr_lock if mode is not None else nullcontext(), state.lock:
                if size is not None:
                    if not state.writable:
                        raise OSError(errno.EROFS, "read-only", path)
                    await state.truncate(size)
                    await state.flush()
                set_times = atime_ns is not None or mtime_ns is not None
                if mode is not None or uid is not None or gid is not None \
                        or set_times and not self.backend.capabilities.real_change_time \
                        and state.writable:
                    meta = state.meta.with_(
                        mode=state.meta.mode if mode is None else mode & 0o7777,
                        uid=state.meta.uid if uid is None else uid,
                        gid=state.meta.gid if gid is None else gid, ctime_ns=time.time_ns())
                    if mode is not None:
                        await self._acl_follow_mode(KIND_FILE, state.file_id, state.meta,
                                                    meta.mode)
                    await state.write_metadata(meta)
                if atime_ns is not None or mtime_ns is not None:
                    await state.settle()          # no write of ours may land after the times
                    cur = await self.backend.fstat(state.handle)
                    times = (cur.atime_ns if atime_ns is None else atime_ns,
                             (state.mtime_ns or cur.mtime_ns) if mtime_ns is None else mtime_ns)
                    state.pending_times = times
                    state.mtime_ns = None
                    await self.backend.fset_times(state.handle, *times)
            self.headers.forget_file(state.file_id)
            return await self.open_files.attr_of(state)
        finally:
            if opened is not None:
                await opened.close()

    async def statfs(self):
        return await self.backend.statvfs()
