"""The files open on one volume: their handles, and one shared state per file.

Every open(2) of a file gets an OpenFile; all of them, and every hard link of the same
file id, share one FileState (fs/core/files.py), so writes through one are what reads
through another see. The registry also keeps what this process last saw of each file it
closed (close-to-open consistency, as NFS gives it) and bounds dirty data per volume.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ...backends.base import Backend, BackendStat, Handle
from ...crypto.format.chunks import ChunkCipher
from ...crypto.format.config import VolumeConfig
from ...crypto.format.header import FileHeader, Kind, Metadata, new_file_id
from ...crypto.format.kdf import file_key
from ...crypto.format.layout import stored_size
from ...crypto.format.xattrs import KIND_FILE
from ...crypto.keys.broker import KeyBroker
from ...errors import IntegrityError
from .attrs import Attr
from .cache import ChunkCache
from .files import FileState
from .headers import HeaderCache
from .paths import split_path
from .storeio import remove_quietly

if TYPE_CHECKING:
    from .volume import VolumeTuning
    from .xattrs import XattrBlobs


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

    def __init__(self, files: OpenFiles, state: FileState, writable: bool, append: bool,
                 path: str = "") -> None:
        self.files = files
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
        await self.files.after_write(self.state)
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
            await self.files.backend.flush(self.state.handle)

    async def stat(self) -> Attr:
        fresh, self.fresh_stat = self.fresh_stat, None
        return await self.files.attr_of(self.state, fresh)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.files.release(self)

    async def read_all(self) -> bytes:
        return await self.read(0, self.state.size)


class OpenFiles:
    """The open files of one volume, by file id."""

    def __init__(self, backend: Backend, broker: KeyBroker, config: VolumeConfig,
                 cache: ChunkCache, tuning: VolumeTuning, spawn: Callable[..., bool]) -> None:
        self.backend = backend
        self.broker = broker
        self.config = config
        self.chunk_size = config.chunk_size
        self.cache = cache
        self.tuning = tuning
        #: spawn(fn, *args) -> bool: a background task in the mount's nursery, if any
        self.spawn = spawn
        #: set by the volume once its header cache exists (which asks us for open states)
        self.headers: HeaderCache = None  # type: ignore[assignment]
        #: set by the volume: a file whose last link went while it was open loses its
        #: xattr blob with the last close (unlink and rename leave an open file's blob)
        self.xattrs: XattrBlobs | None = None
        self._states: dict[bytes, FileState] = {}
        #: file id -> set when the state of that file being built, or closing after its
        #: last close, is done: meanwhile no other state of the file is built (state_for)
        self._gates: dict[bytes, trio.Event] = {}
        #: states closed so far, and file id -> that count when it closed, kept while
        #: some open is in flight (state_for)
        self._drops = 0
        self._dropped_at: dict[bytes, int] = {}
        self._opening = 0
        #: file id -> (size, mtime, ctime or None) on the backend when we last closed it
        self._stamps: dict[bytes, tuple[int, int, int | None]] = {}
        self._crypto_limiter = trio.CapacityLimiter(max(1, tuning.files.crypto_threads))

    def get(self, file_id: bytes) -> FileState | None:
        return self._states.get(file_id)

    def __contains__(self, file_id: bytes) -> bool:
        return file_id in self._states

    def values(self):
        return self._states.values()

    async def close_all(self) -> None:
        """The volume closes: every state goes, written back or not."""
        for state in list(self._states.values()):
            await self._drop(state, force=True)

    def state_attr(self, state: FileState, bstat: BackendStat, nlink: int) -> Attr:
        meta = state.meta
        mtime = state.mtime_ns or bstat.mtime_ns
        if state.pending_times is not None:
            mtime = state.pending_times[1]
        return Attr(meta.kind, meta.mode, meta.uid, meta.gid, state.size, nlink,
                    state.pending_times[0] if state.pending_times else bstat.atime_ns,
                    mtime, max(bstat.ctime_ns, meta.ctime_ns, state.mtime_ns or 0), meta.rdev,
                    state.file_id, xattrs=meta.has_xattrs)

    async def attr_of(self, state: FileState, bstat: BackendStat | None = None) -> Attr:
        if bstat is None:
            bstat = await self.backend.fstat(state.handle)
        return self.state_attr(state, bstat, await self.headers.nlink(state.bpath, bstat, state.file_id))

    async def new_file(self, tmp: str, bpath: str, mode: int, uid: int, gid: int, kind: Kind,
                       rdev: int, content: bytes, file_id: bytes | None = None,
                       flags: int = 0) -> FileState:
        """A new file written complete under the temporary backend name tmp, its handle
        open; its state says bpath (where it will live). On failure nothing is left.
        file_id and flags: for a file whose xattr blob (inherited ACLs) exists already."""
        dek_id = self.config.current_dek_id
        dek = await self.broker.acquire(dek_id)      # held while the file is open
        header = FileHeader(dek_id, file_id or new_file_id(),
                            Metadata(kind, mode & 0o7777, uid, gid, rdev, len(content),
                                     flags=flags))
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

    def open_new(self, state: FileState, path: str, append: bool) -> OpenFile:
        state.spawn = self.spawn
        state.writable = True
        state.has_writer = True
        self._states[state.file_id] = state
        state.refs += 1
        return OpenFile(self, state, True, append, path)

    async def state_for(self, bpath: str, path: str) -> tuple[FileState, bool]:
        """The file's shared state, and whether its content is unchanged since this process
        last had it open (or still has it open).

        One file, one state: two views of one file would overwrite each other's writes.
        And a new state must not be built from reads that another state's write-back of
        the same file overlapped: an old header read before it and the new length after
        it look like a crashed write's uncommitted tail, which the new state's first flush
        cuts off, leaving a file whose final chunk authenticates at no size. So a state
        is built only while no other state of the file exists, is being built or is
        closing (self._gates), and its header is read again when one closed since this
        open began reading."""
        while True:
            self._opening += 1
            start = self._drops
            try:
                found = await self._build_state(bpath, start)
            finally:
                self._opening -= 1
                if not self._opening:
                    self._dropped_at.clear()    # only opens in flight compare against it
            if found is not None:
                return found

    async def _build_state(self, bpath: str, start: int) -> tuple[FileState, bool] | None:
        """state_for's one attempt; None: the file's state closed meanwhile, start over."""
        try:
            handle = await self.backend.open(bpath, write=True)
            writable = True
        except PermissionError:
            handle = await self.backend.open(bpath)
            writable = False
        try:
            header, _dek = await self.headers.open_header(handle, bpath)
            file_id = header.file_id
            while file_id in self._gates:       # being built or closing: wait for it
                await self._gates[file_id].wait()
            existing = self._states.get(file_id)
        except BaseException:
            await self.backend.close(handle)
            raise
        if existing is not None:
            await self.backend.close(handle)
            # (its last close may have begun while we closed ours)
            return (existing, True) if self._states.get(file_id) is existing else None
        gate = self._gates[file_id] = trio.Event()
        try:
            return await self._new_state(handle, writable, bpath, header, start)
        finally:
            del self._gates[file_id]
            gate.set()

    async def _new_state(self, handle: Handle, writable: bool, bpath: str, header: FileHeader,
                         start: int) -> tuple[FileState, bool] | None:
        """Build and register the state of a file that has none; the caller holds its gate."""
        file_id = header.file_id
        try:
            if self._dropped_at.get(file_id, -1) > start:
                # A state of the file closed after we began: its last write-back may have
                # overlapped our header read.
                header, _dek = await self.headers.open_header(handle, bpath)
                if header.file_id != file_id:
                    await self.backend.close(handle)
                    return None
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
        state.spawn = self.spawn
        state.writable = writable
        # An uncommitted tail or a stale header is repaired by the first flush of a writer;
        # a reader never writes.
        state.tail_at = stored_size(committed, self.chunk_size) \
            if fst.size != stored_size(committed, self.chunk_size) else None
        self._states[header.file_id] = state
        return state, unchanged

    async def release(self, handle: OpenFile) -> None:
        state = handle.state
        try:
            if handle.writable:
                await handle.flush()
        finally:
            state.refs -= 1
            if state.refs <= 0:
                await self._drop(state)

    async def _drop(self, state: FileState, force: bool = False) -> None:
        """Last close: write back, then forget the file. The state stays registered while
        it flushes, so an open(2) racing with this close shares it instead of building a
        second view from the not-yet-flushed backend file (which would lose writes)."""
        flush_error: BaseException | None = None
        if state.has_writer and state.needs_flush:
            try:
                async with state.lock:
                    await state.flush()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the state is dropped
                flush_error = exc
        if state.has_writer:
            self.headers.listed.clear()     # its stat moved: no listing before may answer
        if state.refs > 0 and not force:
            # Reopened meanwhile: it lives on for that opener (with what could not be
            # written still dirty); this closer learns that the write-back failed.
            if flush_error is not None:
                raise flush_error
            return
        gate = None
        if self._states.get(state.file_id) is state:
            del self._states[state.file_id]
            self._drops += 1
            if self._opening:
                self._dropped_at[state.file_id] = self._drops
            if state.file_id not in self._gates:
                # Until its handle and journal are closed, no new state of the file.
                gate = self._gates[state.file_id] = trio.Event()
        gone = False
        try:
            if flush_error is not None:
                raise flush_error
            fst = await self.backend.fstat(state.handle)
            # No link left once the hidden names go: an unlinked file's nlink is 0 (local),
            # or counts only the names hidden while it was open (SMB, Azure Files).
            gone = fst.nlink is not None and fst.nlink <= len(state.victims)
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
            if gone and state.meta.has_xattrs and self.xattrs is not None:
                await self.xattrs.delete(KIND_FILE, state.file_id)
            try:
                await state.journal.remove()
            finally:
                state.forget_secrets()
                self.broker.release(state.dek_id)
                if gate is not None:
                    del self._gates[state.file_id]
                    gate.set()

    async def after_write(self, state: FileState) -> None:
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

    async def at(self, bpath: str) -> FileState | None:
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

    async def add_victim(self, state: FileState, hidden: str) -> None:
        """A hidden name goes with its file's last close; when that close is under way
        already (the state is no longer registered) it may be past its victims: the name
        goes now (on SMB when the last handle on it closes)."""
        if self._states.get(state.file_id) is state:
            state.victims.append(hidden)
        else:
            await remove_quietly(self.backend, hidden)


def _seal_whole(cipher: ChunkCipher, content: bytes, chunk_size: int) -> bytes:
    """The chunk area of a file written in one go (creation)."""
    if not content:
        return cipher.seal(0, b"", True)
    pieces = []
    count = -(-len(content) // chunk_size)
    for i in range(count):
        pieces.append(cipher.seal(i, content[i * chunk_size:(i + 1) * chunk_size], i == count - 1))
    return b"".join(pieces)
