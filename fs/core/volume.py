"""The encrypted filesystem as a library: used by the FUSE mount and by the CLI alike.

Plaintext paths in, backend calls out. A plaintext path maps to a backend path by
encrypting each component under its parent directory's id; directories are
resolved once and cached. File contents go through FileState (fs/core/files.py), shared
by every handle and hard link of one file id.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat as stat_module
import time
from dataclasses import dataclass

import trio

from ...backends.base import Backend, BackendStat, ForeignEntryError, join, parent_of
from ...crypto.format.chunks import ChunkCipher
from ...crypto.format.config import VolumeConfig
from ...crypto.format.constants import (
    CONFIG_NAME,
    DEFAULT_CHUNK_SIZE,
    DIR_META_NAME,
    HIDDEN_PREFIX,
    TEMP_PREFIX,
)
from ...crypto.format.header import (
    FileHeader,
    Kind,
    Metadata,
    new_dir_id,
    new_file_id,
    seal_dir_meta,
    seal_header,
)
from ...crypto.format.kdf import (
    config_mac_key,
    dir_meta_key,
    dir_meta_key_secret,
    file_key,
    name_key_secret,
    pin_fingerprint,
)
from ...crypto.format.layout import stored_size
from ...crypto.format.names import (
    NameCipher,
    entry_of_sidecar,
    is_sidecar,
    sidecar_of,
)
from ...crypto.keys.audit import AuditLog
from ...crypto.keys.broker import KeyBroker, wrap_new_dek
from ...crypto.keys.kms import KekProvider, KeySecrets, provider_from_config
from ...crypto.secmem import secret
from ...errors import ConfigError, IntegrityError, UsageError
from .attrs import Attr, Listing, ListingProblem
from .cache import ChunkCache
from .files import FileState, FileTuning
from .headers import HeaderCache
from .paths import DirInfo, PathResolver, split_path
from .pins import PinStore
from .storeio import read_small, remove_quietly, stat_entry, write_new_file

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


class held:
    """`async with held(lock)`: a free lock is taken at once, a busy one waited for.

    trio.Lock.acquire() always passes through the scheduler (one turn of the event loop,
    an epoll_wait and every other ready task) even when nobody holds the lock; a small
    file's write, flush and close take a file's lock three times, and every read that
    misses the cache once. Taking it without that turn is safe here: the request yields to
    the loop anyway once it replies.
    """

    __slots__ = ("lock",)

    def __init__(self, lock: trio.Lock) -> None:
        self.lock = lock

    async def __aenter__(self) -> None:
        try:
            self.lock.acquire_nowait()
        except trio.WouldBlock:
            await self.lock.acquire()

    async def __aexit__(self, *exc_info) -> None:
        self.lock.release()


class OpenFile:
    """One open(2) of a file: the handle the CLI and FUSE hold."""

    def __init__(self, volume: "Volume", state: FileState, writable: bool, append: bool,
                 path: str = "") -> None:
        self.volume = volume
        self.path = "/" + "/".join(split_path(path))
        self.state = state
        self.writable = writable
        self.append = append
        self.closed = False
        #: the file's content is what this process last saw of it (it was open here all
        #: along, or unchanged on the backend since our last close): the kernel may keep
        #: the pages it cached for it (FUSE keep_cache)
        self.content_unchanged = False
        #: the backend's stat of the file as create placed it, for the first stat() (one
        #: round trip less per new file on SMB); dropped by any change before that
        self.fresh_stat: BackendStat | None = None

    async def read(self, offset: int, size: int) -> bytes:
        if not self.state.lock.locked():
            data = self.state.read_in_memory(offset, size)
            if data is not None:
                return data
        async with held(self.state.lock):
            try:
                return await self.state.read(offset, size)
            except IntegrityError as exc:
                raise IntegrityError(f"{self.path}: {exc}") from None

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        if not self.writable:
            raise OSError(errno.EBADF, "file not open for writing")
        self.fresh_stat = None
        async with held(self.state.lock):
            if self.append:
                offset = self.state.size
            n = await self.state.write(offset, data)
        await self.volume._after_write(self.state)
        return n

    async def truncate(self, size: int) -> None:
        if not self.writable:
            raise OSError(errno.EBADF, "file not open for writing")
        self.fresh_stat = None
        async with self.state.lock:
            await self.state.truncate(size)

    async def flush(self) -> None:
        state = self.state
        if self.writable and (state.needs_flush or state.lock.locked()):
            # (a busy lock may be a flush in progress: this one returns after it)
            async with held(state.lock):
                await state.flush()

    async def fsync(self) -> None:
        await self.flush()
        if self.writable:
            await self.volume.backend.flush(self.state.handle)

    async def stat(self) -> Attr:
        fresh, self.fresh_stat = self.fresh_stat, None
        return await self.volume._attr_of_state(self.state, fresh)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.volume._release(self)

    async def read_all(self) -> bytes:
        return await self.read(0, self.state.size)


class Volume:
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
        self.paths = PathResolver(backend, self.names, dir_meta_key_secret(names_dek))
        self.cache = ChunkCache(self.tuning.cache_bytes)
        #: open files by file id: one state for every handle and hard link of a file
        self._states: dict[bytes, FileState] = {}
        #: headers, committed sizes and link counts of files and directories
        self.headers = HeaderCache(backend, broker, self.chunk_size, self._states.get)
        #: file id -> (size, mtime, ctime or None) on the backend when we last closed it
        self._stamps: dict[bytes, tuple[int, int, int | None]] = {}
        self._crypto_limiter = trio.CapacityLimiter(max(1, self.tuning.files.crypto_threads))
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
        try:
            await backend.stat(CONFIG_NAME)
            raise UsageError(f"{backend.location} already holds a sealfs volume")
        except FileNotFoundError:
            pass
        await trio.to_thread.run_sync(provider.check, allow_purgeable)
        wrapped, dek_buf = await trio.to_thread.run_sync(
            lambda: wrap_new_dek(provider, 1, audit=audit))
        dek_secret = secret(dek_buf)
        dek_buf[:] = bytes(len(dek_buf))
        dek = dek_secret.readonly()
        config = VolumeConfig.new(chunk_size, provider.config_entry(), wrapped)
        root_meta = Metadata(Kind.DIRECTORY, 0o755, os.getuid() if uid is None else uid,
                             os.getgid() if gid is None else gid)
        await write_new_file(backend, DIR_META_NAME,
                              seal_dir_meta(dir_meta_key(dek), new_dir_id(), root_meta))
        await write_new_file(backend, CONFIG_NAME, config.serialize(config_mac_key(dek)))
        if pins is not None:
            pins.check(backend.location, config.volume_id.hex(), pin_fingerprint(dek))
        del dek
        dek_secret.wipe()
        return config

    @classmethod
    async def load(cls, backend: Backend, secrets: KeySecrets, *, pins: PinStore | None = None,
                   tuning: VolumeTuning | None = None, audit: AuditLog | None = None,
                   check_kek: bool = False, allow_purgeable: bool = False,
                   key_ttl: float | None = None) -> "Volume":
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
            for state in list(self._states.values()):
                await self._drop_state(state, force=True)
            self.cache.clear()
            self.broker.close()
            self.paths.close()
            await self.backend.aclose()

    async def save_config(self) -> None:
        """Rewrite sealfs.json atomically (key rotation): temp file, then rename."""
        names_dek = await self.broker.dek(self.config.name_dek_id)
        data = self.config.serialize(config_mac_key(names_dek))
        tmp = TEMP_PREFIX + os.urandom(8).hex()
        await write_new_file(self.backend, tmp, data)
        await self.backend.rename(tmp, CONFIG_NAME, replace=True)

    async def _bstat(self, bpath: str, path: str) -> BackendStat:
        return await stat_entry(self.backend, bpath, path)

    # -- attributes ------------------------------------------------------------------------
    async def stat(self, path: str) -> Attr:
        parts = split_path(path)
        if not parts:
            root = await self.paths.root()
            return await self._dir_attr(root, await self.backend.stat(""))
        info = self.paths.cached(parts)
        if info is not None:
            # A directory resolved before (the parent of every new file: the kernel asks
            # for its attributes after each create): its backend path is known already.
            bstat = await self._bstat(info.bpath, path)
            if bstat.is_dir:
                return await self._dir_attr(info, bstat)
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
        try:
            bstat = await self.backend.stat(bpath)
        except FileNotFoundError:
            return None
        return await self._attr(parts, bpath, bstat)

    async def _attr(self, parts: list[str], bpath: str, bstat: BackendStat,
                    count: bool = True) -> Attr:
        if bstat.foreign:       # planted: reading its header could block (FIFO) or leave the store
            raise ForeignEntryError(bpath, bstat.foreign)
        if bstat.is_dir:
            info = self.paths.cached(parts)
            if info is None or info.bpath != bpath:
                info = await self.paths.read_dir_info(bpath)
                self.paths.remember(parts, info)
            return await self._dir_attr(info, bstat, count)
        header, size = await self.headers.header(bpath, bstat)
        nlink = await self.headers.nlink(bpath, bstat, header.file_id)
        state = self._states.get(header.file_id)
        if state is not None:
            return self._state_attr(state, bstat, nlink)
        meta = header.meta
        return Attr(meta.kind, meta.mode, meta.uid, meta.gid, size, nlink, bstat.atime_ns,
                    bstat.mtime_ns, max(bstat.ctime_ns, meta.ctime_ns), meta.rdev, header.file_id)

    def _state_attr(self, state: FileState, bstat: BackendStat, nlink: int) -> Attr:
        meta = state.meta
        mtime = state.mtime_ns or bstat.mtime_ns
        if state.pending_times is not None:
            mtime = state.pending_times[1]
        return Attr(meta.kind, meta.mode, meta.uid, meta.gid, state.size, nlink,
                    state.pending_times[0] if state.pending_times else bstat.atime_ns,
                    mtime, max(bstat.ctime_ns, meta.ctime_ns, state.mtime_ns or 0), meta.rdev,
                    state.file_id)

    async def _dir_attr(self, info: DirInfo, bstat: BackendStat, count: bool = True) -> Attr:
        """A directory's attributes (its link count: HeaderCache.dir_nlink)."""
        nlink, known = await self.headers.dir_nlink(info.bpath, bstat, count)
        meta = info.meta
        return Attr(Kind.DIRECTORY, meta.mode, meta.uid, meta.gid, 4096, nlink,
                    bstat.atime_ns, bstat.mtime_ns, max(bstat.ctime_ns, meta.ctime_ns), 0,
                    info.dir_id, known)

    async def _attr_of_state(self, state: FileState, bstat: BackendStat | None = None) -> Attr:
        if bstat is None:
            bstat = await self.backend.fstat(state.handle)
        return self._state_attr(state, bstat, await self.headers.nlink(state.bpath, bstat, state.file_id))

    async def file_dek_id(self, path: str) -> int:
        """The id of the DEK that seals a file (rekey, `keys list`): from its header."""
        _parent, _name, bpath, _long = await self.paths.entry(path)
        header, _size = await self.headers.header(bpath, await self._bstat(bpath, path))
        return header.dek_id

    # -- directories ---------------------------------------------------------------------
    async def listdir(self, path: str) -> Listing:
        """Entries with attributes. An entry whose name, header or sealfs.dir fails to
        authenticate, or that sealfs never writes (a symlink, FIFO, device or socket), is
        left out of the entries and put in .problems by its ciphertext path."""
        parts = split_path(path)
        info = await self.paths.directory(parts)
        entries = await self.backend.scandir(info.bpath)
        stats = dict(entries)
        out = Listing()
        seen: set[str] = set()
        for entry, bstat in entries:
            bpath = join(info.bpath, entry)
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
                out.append((name, await self._attr(parts + [name], bpath, bstat, count=False)))
            except (IntegrityError, ForeignEntryError) as exc:
                reason = str(exc)
                if reason.startswith(bpath + ": "):
                    reason = reason[len(bpath) + 2:]
                out.problems.append(ListingProblem(bpath, reason, "/".join(parts), bstat, name))
            except FileNotFoundError:
                continue
        return out

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

    async def mkdir(self, path: str, mode: int = 0o755, uid: int | None = None,
                    gid: int | None = None, *, inherit: bool = True) -> Attr:
        """A new directory owned by uid and gid (the caller's), but for the setgid rule
        (see _setgid_rule); inherit=False keeps mode and gid exactly as given (a copy
        that restores its source's ownership)."""
        parent, name, bpath, long = await self.paths.entry(path)
        if inherit:
            mode, gid = _setgid_rule(parent, mode, gid, directory=True)
        tmp = join(parent.bpath, TEMP_PREFIX + os.urandom(8).hex())
        meta = Metadata(Kind.DIRECTORY, mode & 0o7777, _uid(uid), _gid(gid))
        dir_id = new_dir_id()
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
        info = DirInfo(bpath, dir_id, meta)
        self.paths.remember(split_path(path), info)
        self.headers.subdir_change(parent.bpath, +1)
        self.headers.dir_created(bpath)
        return await self._dir_attr(info, await self.backend.stat(bpath))

    async def rmdir(self, path: str) -> None:
        parent, name, bpath, long = await self.paths.entry(path)
        bstat = await self._bstat(bpath, path)
        if not bstat.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        await self._check_empty(bpath, path)
        tmp = join(parent.bpath, TEMP_PREFIX + os.urandom(8).hex())
        await self.backend.rename(bpath, tmp, replace=False)
        await remove_quietly(self.backend, join(tmp, DIR_META_NAME))
        await self.backend.rmdir(tmp)
        if long is not None:
            await remove_quietly(self.backend, sidecar_of(bpath))
        self.paths.forget(path)
        self.headers.subdir_change(parent.bpath, -1)
        self.headers.dir_removed(bpath)

    async def _check_empty(self, bpath: str, path: str) -> None:
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

    # -- files -----------------------------------------------------------------------------
    async def create(self, path: str, mode: int = 0o644, uid: int | None = None,
                     gid: int | None = None, *, kind: Kind = Kind.REGULAR, rdev: int = 0,
                     content: bytes = b"", append: bool = False) -> OpenFile:
        """Create a new file (EEXIST if the name exists), complete on the backend before its
        name appears, and return it open for writing. Owned by uid and gid (the caller's),
        but for the setgid rule (see _setgid_rule)."""
        parent, name, bpath, long = await self.paths.entry(path)
        mode, gid = _setgid_rule(parent, mode, gid, directory=False)
        tmp = join(parent.bpath, TEMP_PREFIX + os.urandom(8).hex())
        state = await self._new_file(tmp, bpath, mode, uid, gid, kind, rdev, content)
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
            raise
        opened = self._open_new(state, path, append)
        opened.fresh_stat = created       # FUSE's create asks for attributes right away
        return opened

    async def _new_file(self, tmp: str, bpath: str, mode: int, uid: int | None,
                        gid: int | None, kind: Kind, rdev: int, content: bytes) -> FileState:
        """A new file written complete under the temporary backend name tmp, its handle
        open; its state says bpath (where it will live). On failure nothing is left."""
        dek_id = self.config.current_dek_id
        dek = await self.broker.acquire(dek_id)      # held while the file is open
        header = FileHeader(dek_id, new_file_id(), Metadata(kind, mode & 0o7777, _uid(uid),
                                                            _gid(gid), rdev, len(content)))
        # The state derives the file key and chunk cipher once; the first bytes use them.
        # (its handle is set once the backend file exists)
        state = FileState(backend=self.backend, handle=None,  # type: ignore[arg-type]
                          bpath=bpath, header=header, dek=dek,
                          chunk_size=self.chunk_size, cache=self.cache, tuning=self.tuning.files,
                          limiter=self._crypto_limiter, committed=len(content))
        first = state.sealed_header(len(content)) + _seal_whole(state.cipher, content,
                                                                   self.chunk_size)
        try:
            handle = await self.backend.create_file(tmp, first)
        except BaseException as exc:
            state.forget_secrets()
            self.broker.release(dek_id)
            if not isinstance(exc, FileExistsError):   # created, then the write failed
                await remove_quietly(self.backend, tmp)
            raise
        state.handle = handle
        return state

    def _open_new(self, state: FileState, path: str, append: bool) -> OpenFile:
        state.spawn = self._spawn
        state.writable = True
        state.has_writer = True
        self._states[state.file_id] = state
        state.refs += 1
        return OpenFile(self, state, True, append, path)

    # -- temporaries: files no plaintext name can reach -----------------------------------
    async def create_temp(self, directory: str, mode: int = 0o600, uid: int | None = None,
                          gid: int | None = None, *, tag: str, kind: Kind = Kind.REGULAR,
                          rdev: int = 0, content: bytes = b"") -> tuple[OpenFile, "TempName"]:
        """Create a file in directory under a reserved backend name (sealfs.tmp.<tag><random>)
        and return it open for writing. No plaintext name can equal it, so no user's file
        is ever taken for it; place_temp() later renames it over its real name. The tag
        marks whose temporaries they are, for remove_temps()."""
        if not _TEMP_TAG.fullmatch(tag):
            raise ValueError(f"bad temporary tag {tag!r}")
        parent = await self.paths.directory(split_path(directory))
        tmp = join(parent.bpath, TEMP_PREFIX + tag + os.urandom(8).hex())
        state = await self._new_file(tmp, tmp, mode, uid, gid, kind, rdev, content)
        return self._open_new(state, directory, False), TempName(tmp)

    async def place_temp(self, temp: "TempName", path: str) -> None:
        """Rename a closed temporary over path (a file, or nothing) in the same directory:
        rename()'s file-over-file case, for a source that has no plaintext name."""
        parent, name, bpath, long = await self.paths.entry(path)
        if parent_of(temp.bpath) != parent.bpath:
            raise OSError(errno.EXDEV, "a temporary is placed in its own directory", path)
        try:
            d_stat = await self.backend.stat(bpath)
        except FileNotFoundError:
            d_stat = None
        if d_stat is not None:
            if d_stat.is_dir:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            victim = await self._open_state_at(bpath)
            if victim is not None and not self.backend.capabilities.unlink_open_files:
                await self._remove_file_entry(parent, bpath, None)
            elif victim is not None and victim.bpath == bpath:
                victim.unlinked = True
        if long is not None:
            await self.paths.write_sidecar(bpath, long)
        await self.backend.rename(temp.bpath, bpath, replace=True)
        self.headers.forget_header(temp.bpath)
        self.headers.forget_header(bpath)
        for state in self._states.values():
            if state.bpath == temp.bpath:
                state.bpath = bpath

    async def discard_temp(self, temp: "TempName") -> None:
        await remove_quietly(self.backend, temp.bpath)

    async def remove_temps(self, directory: str, tag: str) -> int:
        """Remove the temporary files tagged tag in directory (what an interrupted run of
        their maker left); the number removed. Other temporaries are not touched."""
        if not _TEMP_TAG.fullmatch(tag):
            raise ValueError(f"bad temporary tag {tag!r}")
        info = await self.paths.directory(split_path(directory))
        prefix = TEMP_PREFIX + tag
        removed = 0
        for entry in await self.backend.listdir(info.bpath):
            if not entry.startswith(prefix):
                continue
            bpath = join(info.bpath, entry)
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
        state, unchanged = await self._state_for(bpath, path)
        state.refs += 1
        state.has_writer |= write
        handle = OpenFile(self, state, write, append, path)
        handle.content_unchanged = unchanged and not truncate
        if write and not state.writable:
            await handle.close()
            raise OSError(errno.EROFS, "the backend file is read-only", path)
        if truncate:
            await handle.truncate(0)
        return handle

    async def _state_for(self, bpath: str, path: str) -> tuple[FileState, bool]:
        """The file's shared state, and whether its content is unchanged since this process
        last had it open (or still has it open)."""
        try:
            handle = await self.backend.open(bpath, write=True)
            writable = True
        except PermissionError:
            handle = await self.backend.open(bpath)
            writable = False
        try:
            header, dek = await self.headers.open_header(handle, bpath)
            existing = self._states.get(header.file_id)
            if existing is not None:
                await self.backend.close(handle)
                return existing, True
            # Pinned before any await: the DEK view must not be evicted while we use it.
            dek = await self.broker.acquire(header.dek_id)     # held while the file is open
        except BaseException:
            await self.backend.close(handle)
            raise
        try:
            cipher = ChunkCipher(file_key(dek, header.file_id), header.file_id)
            committed = await self.headers.committed_size(handle, bpath, header, cipher)
            fst = await self.backend.fstat(handle)
        except BaseException:
            self.broker.release(header.dek_id)
            await self.backend.close(handle)
            raise
        stamp = self._stamps.pop(header.file_id, None)
        # ctime too where we know it: a same-size rewrite that restores the mtime (cp -p,
        # touch -r) changes nothing else a client can see.
        unchanged = stamp is not None and stamp[:2] == (fst.size, fst.mtime_ns) \
            and stamp[2] in (None, fst.ctime_ns)
        if not unchanged:
            self.cache.drop_file(header.file_id)     # close-to-open: someone else changed it
        state = FileState(backend=self.backend, handle=handle, bpath=bpath, header=header, dek=dek,
                          chunk_size=self.chunk_size, cache=self.cache, tuning=self.tuning.files,
                          limiter=self._crypto_limiter, committed=committed)
        state.spawn = self._spawn
        state.writable = writable
        # An uncommitted tail or a stale header is repaired by the first flush of a writer;
        # a reader never writes.
        state.tail_at = stored_size(committed, self.chunk_size) \
            if fst.size != stored_size(committed, self.chunk_size) else None
        raced = self._states.get(header.file_id)
        if raced is not None:
            # Another open of the same file finished first while we awaited the backend:
            # one file, one state, or two views would overwrite each other's writes.
            await self.backend.close(handle)
            self.broker.release(header.dek_id)
            return raced, True
        self._states[header.file_id] = state
        return state, unchanged

    async def _release(self, handle: OpenFile) -> None:
        state = handle.state
        try:
            if handle.writable:
                await handle.flush()
        finally:
            state.refs -= 1
            if state.refs <= 0:
                await self._drop_state(state)

    async def _drop_state(self, state: FileState, force: bool = False) -> None:
        """Last close: write back, then forget the file. The state stays registered while
        it flushes, so an open(2) racing with this close shares it instead of building a
        second view from the not-yet-flushed backend file (which would lose writes)."""
        flush_error: BaseException | None = None
        if state.has_writer and state.needs_flush:
            try:
                async with state.lock:
                    await state.flush()
            except BaseException as exc:
                flush_error = exc
        if state.refs > 0 and not force:
            # Reopened meanwhile: it lives on for that opener (with what could not be
            # written still dirty); this closer learns that the write-back failed.
            if flush_error is not None:
                raise flush_error
            return
        if self._states.get(state.file_id) is state:
            del self._states[state.file_id]
        try:
            if flush_error is not None:
                raise flush_error
            fst = await self.backend.fstat(state.handle)
            ctime: int | None = fst.ctime_ns
            if state.has_writer and not state.unlinked \
                    and self.backend.capabilities.stamps_write_time_on_close:
                # Pin the times users saw: an SMB server stamps its own write time when a
                # handle that wrote is finally closed (ours may close much later).
                await self.backend.fset_times(state.handle, fst.atime_ns, fst.mtime_ns)
                ctime = None                      # just changed, and the server may again
            self._stamps[state.file_id] = (fst.size, fst.mtime_ns, ctime)
        finally:
            await self.backend.close(state.handle)
            for victim in state.victims:
                await remove_quietly(self.backend, victim)
            try:
                await state.journal.remove()
            finally:
                state.forget_secrets()
                self.broker.release(state.dek_id)

    async def _after_write(self, state: FileState) -> None:
        """Write-back under memory pressure: bound dirty data per file and per volume."""
        if state.dirty_bytes >= self.tuning.files.file_dirty_limit:
            await state.write_back()
        total = sum(s.dirty_bytes for s in self._states.values())
        if total > self.tuning.dirty_bytes:
            victim = max(self._states.values(), key=lambda s: s.dirty_bytes)
            async with victim.lock:
                await victim.flush()

    async def flush_all(self) -> None:
        for state in list(self._states.values()):
            if state.has_writer and state.needs_flush:
                async with state.lock:
                    await state.flush()

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
        await self._remove_file_entry(parent, bpath, long)

    async def _losing_link(self, bpath: str, bstat: BackendStat) -> None:
        """A file is about to lose the name bpath: its change time moves, which its other
        names and open handles show (the last name of a closed file nobody can look at)."""
        if self.backend.capabilities.real_change_time:
            return
        header, _size = await self.headers.header(bpath, bstat)
        if header.file_id in self._states \
                or await self.headers.nlink(bpath, bstat, header.file_id) > 1:
            await self._touch_file(bpath, bstat)

    async def _remove_file_entry(self, parent: DirInfo, bpath: str, long: str | None) -> None:
        state = await self._open_state_at(bpath)
        if state is not None and not self.backend.capabilities.unlink_open_files:
            # SMB keeps an open file's name in delete-pending state: hide it NFS-style
            # instead and delete it on the last close (fsck removes leftovers of a crash).
            hidden = join(parent.bpath, HIDDEN_PREFIX + os.urandom(8).hex())
            await self.backend.rename(bpath, hidden, replace=False)
            if state.bpath == bpath:
                state.bpath = hidden
            await self._add_victim(state, hidden)
        else:
            await self.backend.unlink(bpath)
            if state is not None and state.bpath == bpath:
                state.unlinked = True
        self.headers.forget_header(bpath)
        if long is not None:
            await remove_quietly(self.backend, sidecar_of(bpath))

    async def _open_state_at(self, bpath: str) -> FileState | None:
        """The open file behind a backend entry: by path, or (hard links) by file id."""
        if not self._states:
            return None
        for state in self._states.values():
            if state.bpath == bpath:
                return state
        try:
            header, _size = await self.headers.header(bpath, await self.backend.stat(bpath))
        except (FileNotFoundError, IntegrityError):
            return None
        return self._states.get(header.file_id)

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
        victim_dir = None
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
                await self._check_empty(d_bpath, dst)
                victim_dir = join(d_parent.bpath, TEMP_PREFIX + os.urandom(8).hex())
                await self.backend.rename(d_bpath, victim_dir, replace=False)
            else:
                await self._losing_link(d_bpath, d_stat)
                victim = await self._open_state_at(d_bpath)
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
            hidden = join(d_parent.bpath, HIDDEN_PREFIX + os.urandom(8).hex())
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
        if victim_dir is not None:
            await remove_quietly(self.backend, join(victim_dir, DIR_META_NAME))
            await remove_quietly(self.backend, victim_dir, is_dir=True)
        self.headers.forget_header(s_bpath)
        self.headers.forget_header(d_bpath)
        if s_stat.is_dir:
            self.paths.forget(src)
            self.paths.forget(dst)
            prefix = s_bpath + "/"
            for state in self._states.values():
                if state.bpath.startswith(prefix):
                    state.bpath = d_bpath + "/" + state.bpath[len(prefix):]
                # Hidden names of its unlinked links go on the last close: at the new path.
                state.victims = [d_bpath + "/" + v[len(prefix):] if v.startswith(prefix) else v
                                 for v in state.victims]
            self.headers.forget_names()
        else:
            for state in self._states.values():
                if state.bpath == s_bpath:
                    state.bpath = d_bpath
        await self._after_rename(s_parent, d_parent, s_bpath, d_bpath, s_stat.is_dir,
                                 victim_dir is not None, dst)

    async def _after_rename(self, s_parent: DirInfo, d_parent: DirInfo, s_bpath: str,
                            d_bpath: str, is_dir: bool, replaced_dir: bool, dst: str) -> None:
        """Subdirectory counts follow a moved directory; the moved entry's change time
        moves (rename changes its name, as ext4 records)."""
        if is_dir:
            self.headers.dir_moved(s_bpath, d_bpath)
            if s_parent.bpath != d_parent.bpath:
                self.headers.subdir_change(s_parent.bpath, -1)
                self.headers.subdir_change(d_parent.bpath, +1)
            if replaced_dir:
                self.headers.subdir_change(d_parent.bpath, -1)
        if not self.backend.capabilities.real_change_time:
            if is_dir:
                await self._touch_dir(await self.paths.directory(split_path(dst)))
            else:
                await self._touch_file(d_bpath)

    async def _hidden_busy(self, bpath: str, hidden: str) -> None:
        """A replaced file that something held open, moved aside from bpath to hidden: the
        victim of its open state if it has one by now, else deleted (on SMB when the last
        handle closes)."""
        state = await self._open_state_at(hidden)
        if state is None:
            await remove_quietly(self.backend, hidden)
            return
        if state.bpath == bpath:
            state.bpath = hidden
        await self._add_victim(state, hidden)

    async def _add_victim(self, state: FileState, hidden: str) -> None:
        """A hidden name goes with its file's last close; when that close is under way
        already (the state is no longer registered) it may be past its victims: the name
        goes now (on SMB when the last handle on it closes)."""
        if self._states.get(state.file_id) is state:
            state.victims.append(hidden)
        else:
            await remove_quietly(self.backend, hidden)

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
        state = await self._open_state_at(bpath)
        if state is not None and state.writable:
            async with state.lock:
                await state.write_metadata(state.meta.with_(ctime_ns=now))
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

    async def _touch_dir(self, info: DirInfo, **changes) -> None:
        """Rewrite a directory's record with changes and now as its change time (the
        record is a file inside the directory: writing it moves no time of the directory)."""
        info.meta = info.meta.with_(ctime_ns=time.time_ns(), **changes)
        await self.paths.rewrite_record(info)

    async def setattr(self, path: str, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      handle: OpenFile | None = None) -> Attr:
        """chmod/chown/truncate/utimens. Times left None keep their value."""
        if handle is not None:
            state = handle.state
            bpath = state.bpath
            is_dir = False
        else:
            parts = split_path(path)
            if parts:
                _parent, _name, bpath, _long = await self.paths.entry(path)
            else:
                bpath = ""
            bstat = await self._bstat(bpath, path)
            is_dir = bstat.is_dir
            state = None
        if is_dir:
            if size is not None:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            set_times = atime_ns is not None or mtime_ns is not None
            if mode is not None or uid is not None or gid is not None \
                    or set_times and not self.backend.capabilities.real_change_time:
                info = await self.paths.directory(split_path(path))
                await self._touch_dir(info, mode=info.meta.mode if mode is None else mode & 0o7777,
                                      uid=info.meta.uid if uid is None else uid,
                                      gid=info.meta.gid if gid is None else gid)
                self.paths.remember(split_path(path), info)
            if set_times:
                cur = await self.backend.stat(bpath)
                await self.backend.set_times(bpath, cur.atime_ns if atime_ns is None else atime_ns,
                                             cur.mtime_ns if mtime_ns is None else mtime_ns)
            return await self.stat(path)
        opened = None
        if state is None:
            opened = await self.open(path, write=size is not None or mode is not None
                                     or uid is not None or gid is not None)
            state = opened.state
        try:
            async with state.lock:
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
            return await self._attr_of_state(state)
        finally:
            if opened is not None:
                await opened.close()

    async def statfs(self):
        return await self.backend.statvfs()

    # -- whole-tree helpers (CLI, sync, fsck) ----------------------------------------------
    async def walk(self, path: str = "") -> Listing:
        """Every entry below path, depth first, as (plaintext path, attr); .problems
        gathers those of every directory listed (see listdir)."""
        out = Listing()
        stack = ["/".join(split_path(path))]
        while stack:
            current = stack.pop()
            listing = await self.listdir(current)
            out.problems.extend(listing.problems)
            for name, attr in sorted(listing, key=_by_name):
                child = f"{current}/{name}" if current else name
                out.append((child, attr))
                if attr.is_dir:
                    stack.append(child)
        return out


def _by_name(entry: tuple[str, Attr]) -> str:
    return entry[0]


def _setgid_rule(parent: DirInfo, mode: int, gid: int | None, *,
                 directory: bool) -> tuple[int, int | None]:
    """(mode, gid) of a new entry in parent. As ext4 (and POSIX with BSD group semantics)
    has it: in a directory whose setgid bit is set, a new entry takes the directory's group
    instead of its creator's, and a new subdirectory takes the setgid bit too. Decided
    from the parent's sealed record, which resolving the new entry's path has read."""
    if parent.meta.mode & stat_module.S_ISGID:
        return (mode | stat_module.S_ISGID if directory else mode), parent.meta.gid
    return mode, gid


def _uid(uid: int | None) -> int:
    return os.getuid() if uid is None else uid


def _gid(gid: int | None) -> int:
    return os.getgid() if gid is None else gid


def _seal_whole(cipher: ChunkCipher, content: bytes, chunk_size: int) -> bytes:
    """The chunk area of a file written in one go (creation)."""
    if not content:
        return cipher.seal(0, b"", True)
    pieces = []
    count = -(-len(content) // chunk_size)
    for i in range(count):
        pieces.append(cipher.seal(i, content[i * chunk_size:(i + 1) * chunk_size], i == count - 1))
    return b"".join(pieces)


async def read_config(backend: Backend) -> tuple[VolumeConfig, str]:
    try:
        raw = await read_small(backend, CONFIG_NAME, 1 << 20)
    except FileNotFoundError:
        raise ConfigError(f"{backend.location} is not a sealfs volume (no {CONFIG_NAME}); "
                          f"create one with `sealfs init`") from None
    try:
        return VolumeConfig.parse(raw)
    except ConfigError as exc:
        if CONFIG_NAME in str(exc):
            raise
        raise ConfigError(f"{CONFIG_NAME} is damaged: {exc}") from None
