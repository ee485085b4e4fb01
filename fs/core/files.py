"""One open encrypted file: random-access reads and writes over sealed chunks.

Writes land in dirty plaintext chunks and are sealed and written back in batches
(on flush, fsync, release, memory pressure and a timer), in the crash-safe order of
docs/FORMAT.md: grow = new chunks, then the old final chunk, then the header;
shrink = header, then the new final chunk, then truncate. Reads decrypt whole
chunks into a shared cache and read ahead on sequential access.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ...backends.base import Backend, Handle
from ...crypto.format.chunks import ChunkCipher
from ...crypto.format.constants import CHUNK_OVERHEAD, NONCE_SIZE
from ...crypto.format.header import FileHeader, Metadata, seal_header
from ...crypto.format.kdf import file_key_secret
from ...crypto.format.layout import (
    chunk_count,
    chunk_plain_length,
    final_index,
    logical_size,
    slot_offset,
    stored_size,
)
from ...errors import IntegrityError, first_error
from . import writeback
from .journal import Journal
from .journal import recover as recover_journal

if TYPE_CHECKING:
    from .cache import ChunkCache

log = logging.getLogger("sealfs.files")

# Crypto below this many bytes stays on the event loop: there a hop to a worker thread
# costs more than the AES-GCM it would move (docs/PERFORMANCE.md, "Measurements behind
# code comments").
_INLINE_CRYPTO = 128 * 1024
# Work handed to one worker thread at a time when sealing or opening in parallel.
_THREAD_BATCH = 1024 * 1024
_ZERO_NONCE = bytes(NONCE_SIZE)


@dataclass
class FileTuning:
    """Per-volume I/O knobs (set from the CLI / config file)."""

    readahead_bytes: int = 16 * 1024 * 1024
    # One background load; two fill the window. 8 MiB rather than 4: half the hops between
    # trio, the SMB threads and the crypto threads per byte, which reads faster over SMB
    # and is neutral locally, for a little more peak memory (docs/PERFORMANCE.md).
    readahead_batch: int = 8 * 1024 * 1024
    file_dirty_limit: int = 8 * 1024 * 1024
    crypto_threads: int = 2


class FileState:
    """Shared by every handle (and hard link) open on one file id."""

    def __init__(self, *, backend: Backend, handle: Handle, bpath: str, header: FileHeader,
                 dek: bytes | memoryview, chunk_size: int, cache: ChunkCache, tuning: FileTuning,
                 limiter: trio.CapacityLimiter, committed: int) -> None:
        self.backend = backend
        self.handle = handle
        self.bpath = bpath
        self.file_id = header.file_id
        self.dek_id = header.dek_id
        # The file key lives in locked memory until forget_secrets(); AES-GCM copies it.
        self._key_secret = file_key_secret(dek, header.file_id)
        self._file_key: bytes | memoryview = self._key_secret.readonly()
        self.cipher = ChunkCipher(self._file_key, header.file_id)
        self.meta = header.meta
        self.cs = chunk_size
        self.cache = cache
        self.tuning = tuning
        self.limiter = limiter
        self.committed = committed            # logical size as laid out on the backend
        self.header_size = header.meta.size   # size recorded in the backend header
        self.size = committed                 # logical size seen by users
        self.low_water = committed            # lowest size since the last flush
        self.dirty: dict[int, bytearray] = {}
        self.dirty_bytes = 0
        # Dirty chunks sealed as the write that completed them landed (see _preseal):
        # index -> (the dirty buffer as sealed, its non-final ciphertext).
        self.presealed: dict[int, tuple[bytearray, memoryview]] = {}
        # Write-back in the background: the chunks one flush is writing (readers and
        # writers see them as the file's content until the flush lands), the event it sets
        # when done, and the error it met, reported by the next flush, fsync or close.
        self.inflight: dict[int, bytes | bytearray] = {}
        self._writeback: trio.Event | None = None
        self.writeback_error: BaseException | None = None
        self.header_dirty = False
        self.pending_times: tuple[int, int] | None = None
        # The time of the last write or truncate whose mtime the backend does not show yet.
        self.mtime_ns: int | None = None
        # The backend keeps its own time of a write through a handle that set times (SMB,
        # once a flush or chmod pinned them): the flush sets the write's time itself.
        self._stamp_mtime = backend.capabilities.stamps_write_time_on_close
        self.refs = 0
        self.writable = False                 # the backend handle can write
        self.has_writer = False               # some open(2) asked to write
        self.tail_at: int | None = None       # cut the backend file here on the first flush
        self.unlinked = False
        self.victims: list[str] = []         # hidden names to delete on last close (SMB)
        # The inode's xattrs as last read or written while open (fs/core/xattrs.py): the
        # kernel's security.capability check before each write answers from here. Gone
        # with the last close, so the next open reads the blob again (close-to-open).
        self.xattrs: dict[bytes, bytes] | None = None
        self.lock = trio.Lock()
        self.journal = Journal(backend, header.file_id)
        self._next_sequential = -1
        # Background read-ahead: spawn(fn, *args) -> bool starts a task in the mount's
        # nursery (None outside a mount); generation changes whenever content is rewritten.
        self.spawn = None
        self.generation = 0
        self._prefetching: dict[int, trio.Event] = {}
        self._ahead = 0                       # read-ahead has scheduled chunks below this

    # -- opening -------------------------------------------------------------------------
    @staticmethod
    async def resolve_size(backend: Backend, handle: Handle, header: FileHeader,
                           cipher: ChunkCipher, chunk_size: int, stored: int) -> int:
        """The committed logical size, by the reader rule of docs/FORMAT.md."""
        by_header = header.meta.size
        by_length = logical_size(stored, chunk_size)
        if by_header == by_length:
            return by_header
        for candidate in (by_header, by_length):
            if candidate is None or stored_size(candidate, chunk_size) > stored:
                continue
            index = final_index(candidate, chunk_size)
            length = chunk_plain_length(index, candidate, chunk_size) + CHUNK_OVERHEAD
            sealed = await backend.read(handle, slot_offset(index, chunk_size), length)
            if cipher.verifies(index, sealed, True):
                if candidate != by_header:
                    log.info("%s: header is stale after an interrupted write; using size %d",
                             handle.path, candidate)
                elif stored != stored_size(candidate, chunk_size):
                    log.info("%s: ignoring an uncommitted tail after size %d", handle.path, candidate)
                return candidate
        raise IntegrityError("final chunk failed authentication (file truncated or damaged)")

    # -- reading -------------------------------------------------------------------------
    async def read(self, offset: int, size: int) -> bytes:
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        cs = self.cs
        first, last = offset // cs, (end - 1) // cs
        sequential = offset == self._next_sequential
        self._next_sequential = end
        loaded: dict[int, bytes] = {}
        inline_ahead = sequential and self.spawn is None   # no background tasks
        # Until nothing is missing: a background write-back that lands during an await
        # moves the committed size, and a chunk that was a hole past it a moment ago
        # (zeros, nothing to load) is now a committed chunk to be read.
        while missing := [i for i in range(first, last + 1) if i not in loaded and self._missing(i)]:
            if self._prefetching:
                for i in missing:                  # already on its way: wait, don't re-read
                    event = self._prefetching.get(i)
                    if event is not None:
                        await event.wait()
                missing = [i for i in missing if self._missing(i)]
                if not missing:
                    continue
            if inline_ahead:
                inline_ahead = False
                ahead_end = min(chunk_count(self.committed, cs) - 1,
                                last + max(1, self.tuning.readahead_bytes // cs))
                missing += [i for i in range(last + 1, ahead_end + 1) if self._missing(i)]
            loaded.update(await self._load_chunks(missing))
        if sequential and self.spawn is not None:
            self._schedule_readahead(last)
        return self._assemble(offset, end, loaded)

    def read_in_memory(self, offset: int, size: int) -> bytes | None:
        """read() when every chunk it needs is dirty or cached: no await, so no lock and
        no trip through the scheduler (a FUSE read of cached data costs one round trip
        only). None when something has to come from the backend."""
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        cs = self.cs
        first, last = offset // cs, (end - 1) // cs
        if not self.dirty and not self.inflight and end <= min(self.low_water, self.committed):
            # The common case of a reader, all of it committed and clean: one cache
            # lookup per chunk instead of _missing's and _assemble's two each.
            get, fid = self.cache.get, self.file_id
            parts = []
            for i in range(first, last + 1):
                data = get(fid, i)
                if data is None:
                    return None
                parts.append(data)
            if offset == self._next_sequential and self.spawn is not None:
                self._schedule_readahead(last)
            self._next_sequential = end
            lo, hi = offset - first * cs, end - last * cs
            if len(parts) == 1:
                data = parts[0]
                return data if lo == 0 and hi == len(data) and type(data) is bytes \
                    else bytes(memoryview(data)[lo:hi])
            parts[0] = memoryview(parts[0])[lo:]
            parts[-1] = memoryview(parts[-1])[:hi]
            return b"".join(parts)
        for i in range(first, last + 1):
            if self._missing(i):
                return None
        if offset == self._next_sequential and self.spawn is not None:
            self._schedule_readahead(last)
        self._next_sequential = end
        return self._assemble(offset, end, {})

    def _assemble(self, offset: int, end: int, loaded: dict[int, bytes]) -> bytes:
        cs = self.cs
        first, last = offset // cs, (end - 1) // cs
        if first == last:
            chunk = self._logical_chunk_cached(first, loaded)
            lo, hi = offset - first * cs, end - first * cs
            if lo == 0 and hi == len(chunk) and type(chunk) is bytes:
                return chunk
            return bytes(memoryview(chunk)[lo:hi])
        parts = []
        for i in range(first, last + 1):
            chunk = memoryview(self._logical_chunk_cached(i, loaded))
            lo = offset - i * cs if i == first else 0
            hi = end - i * cs if i == last else len(chunk)
            parts.append(chunk[lo:hi])
        return b"".join(parts)

    def _schedule_readahead(self, last: int) -> None:
        """Keep the next window of a sequential reader loading in the background, so
        decryption overlaps with the kernel's next requests instead of stalling them.

        The window is loaded in batches that run concurrently and are topped up as the
        reader moves (one batch's decryption overlaps the next one's transfer, and a
        backend may spread them over its connections): the reader should find its chunks
        cached, not wait for a transfer that started only when it got close."""
        cs = self.cs
        window = max(1, self.tuning.readahead_bytes // cs)
        batch = min(window, max(1, self.tuning.readahead_batch // cs))
        final = chunk_count(min(self.committed, self.low_water), cs) - 1
        limit = min(final, last + window)
        if self._ahead <= last + 1 or (self._missing(last + 1) and last + 1 not in self._prefetching):
            self._ahead = last + 1            # lost track (a seek, an eviction, a rewrite)
        start = self._ahead
        if limit - start + 1 < batch and limit < final or start > limit:
            return                            # wait until a whole batch fits the window
        while start <= limit:
            stop = min(start + batch, limit + 1)
            if stop - start < batch and stop <= final:
                break
            todo = [i for i in range(start, stop) if self._missing(i) and i not in self._prefetching]
            self._ahead = start = stop
            if not todo:
                continue
            events = {i: trio.Event() for i in todo}
            self._prefetching.update(events)
            if not self.spawn(self._prefetch, todo, events, self.generation):
                for i, event in events.items():
                    del self._prefetching[i]
                    event.set()
                return

    async def _prefetch(self, todo: list[int], events: dict[int, trio.Event], generation: int) -> None:
        try:
            loaded = await self._load_chunks(todo, cache=False)
            if generation == self.generation:      # nothing was rewritten meanwhile
                for i, plain in loaded.items():
                    self.cache.put(self.file_id, i, plain)
        except Exception as exc:  # noqa: BLE001 - the reader will load (and report) itself
            log.debug("%s: read-ahead dropped: %s", self.bpath, exc)
        finally:
            for i, event in events.items():
                if self._prefetching.get(i) is event:
                    del self._prefetching[i]
                event.set()

    def _needs_backend(self, index: int) -> bool:
        return index not in self.dirty and index not in self.inflight \
            and index * self.cs < min(self.low_water, self.committed)

    def _missing(self, index: int) -> bool:
        return self._needs_backend(index) and self.cache.get(self.file_id, index) is None

    def _logical_chunk_cached(self, index: int, loaded: dict[int, bytes]) -> bytes | bytearray:
        """Current plaintext of a chunk, assuming its committed part is cached or loaded."""
        length = chunk_plain_length(index, self.size, self.cs)
        dirty = self.dirty.get(index)
        if dirty is None:
            dirty = self.inflight.get(index)
        if dirty is not None:
            data = dirty
        elif index * self.cs >= min(self.low_water, self.committed):
            return bytes(length)
        else:
            data = loaded.get(index)
            if data is None:
                data = self.cache.get(self.file_id, index)
            if data is None:
                raise AssertionError(f"chunk {index} was not loaded")
            valid = min(self.low_water, self.committed) - index * self.cs
            if valid < len(data):
                data = data[:valid]
        if len(data) == length:
            return data
        if len(data) > length:
            return data[:length]
        return bytes(data) + bytes(length - len(data))

    async def logical_chunk(self, index: int) -> bytearray:
        loaded = await self._load_chunks([index]) if self._missing(index) else {}
        return bytearray(self._logical_chunk_cached(index, loaded))

    async def _load_chunks(self, indices: list[int], cache: bool = True) -> dict[int, bytes]:
        try:
            return await self._load_chunks_once(indices, cache)
        except BaseException as exc:
            # A chunk torn by another mount's crashed flush: its journal can restore it.
            if not isinstance(first_error(exc), IntegrityError) or not await self._replay_journal():
                raise
        return await self._load_chunks_once(indices, cache)

    async def _replay_journal(self) -> int:
        if not self.writable or self.journal.active:
            return 0
        return await recover_journal(self.backend, self.handle, self.file_id, self.cipher, self.cs)

    async def _load_chunks_once(self, indices: list[int], cache: bool) -> dict[int, bytes]:
        """Read and open committed chunks, contiguous runs in one backend request each."""
        cs = self.cs
        committed = self.committed             # one size for the whole load, across awaits
        committed_final = final_index(committed, cs)
        indices = sorted(set(indices))
        runs: list[list[int]] = []
        for i in indices:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        reads = []
        for run in runs:
            start = slot_offset(run[0], cs)
            end = slot_offset(run[-1], cs) + chunk_plain_length(run[-1], committed, cs) + CHUNK_OVERHEAD
            reads.append((start, end - start))
        results_pieces = await self.backend.read_many_pieces(self.handle, reads)
        jobs: list[tuple[int, bytes | memoryview, bool, int]] = []
        for run, pieces in zip(runs, results_pieces, strict=True):
            base = slot_offset(run[0], cs)
            slots = []
            for i in run:
                length = chunk_plain_length(i, committed, cs) + CHUNK_OVERHEAD
                slots.append((slot_offset(i, cs) - base, length))
            for i, (_, length), sealed in zip(run, slots, _cut(pieces, slots), strict=True):
                jobs.append((i, sealed, i == committed_final, length))
        results = await self.run_crypto(jobs, self._open_batch)
        if cache:
            for i, plain in results:
                self.cache.put(self.file_id, i, plain)
        return dict(results)

    def _open_batch(self, batch: list[tuple[int, memoryview, bool, int]]) -> list[tuple[int, bytes]]:
        out = []
        for i, sealed, final, expected in batch:
            if len(sealed) < expected:
                raise IntegrityError(f"chunk {i} is missing or short (file truncated)")
            if not final and sealed[:NONCE_SIZE] == _ZERO_NONCE and sealed == bytes(len(sealed)):
                out.append((i, bytes(expected - CHUNK_OVERHEAD)))   # a hole
                continue
            out.append((i, self.cipher.open(i, sealed, final)))
        return out

    async def run_crypto(self, jobs: list, fn) -> list:
        total = sum(len(j[1]) for j in jobs)
        if total <= _INLINE_CRYPTO or len(jobs) == 1 and total <= 4 * _INLINE_CRYPTO:
            return fn(jobs)
        batches: list[list] = [[]]
        size = 0
        per_batch = max(_THREAD_BATCH, total // max(1, self.tuning.crypto_threads))
        for job in jobs:
            if size >= per_batch:
                batches.append([])
                size = 0
            batches[-1].append(job)
            size += len(job[1])
        results: list = [None] * len(batches)

        async def run(k: int) -> None:
            results[k] = await trio.to_thread.run_sync(fn, batches[k], limiter=self.limiter)

        async with trio.open_nursery() as nursery:
            for k in range(len(batches)):
                nursery.start_soon(run, k)
        return [item for batch in results for item in batch]

    # -- writing -------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes | memoryview) -> int:
        view = memoryview(data)
        if not len(view):
            return 0                          # POSIX: a zero-length write changes nothing
        cs = self.cs
        pos, remaining = offset, len(view)
        taken = 0
        while remaining:
            index, within = divmod(pos, cs)
            n = min(cs - within, remaining)
            buf = self.dirty.get(index)
            if buf is None:
                if within == 0 and n == cs:
                    buf = bytearray()
                else:
                    buf = await self.logical_chunk(index)
                self.dirty[index] = buf
                self.dirty_bytes += cs
            elif self.presealed:
                self.presealed.pop(index, None)
            if len(buf) < within:
                buf.extend(bytes(within - len(buf)))
            buf[within:within + n] = view[taken:taken + n]
            if within + n == cs and self.spawn is not None:
                writeback.preseal(self, index, buf)
            pos += n
            taken += n
            remaining -= n
        if offset + len(view) > self.size:
            self.size = offset + len(view)
        self.mtime_ns = time.time_ns()
        self.pending_times = None
        return len(view)

    async def truncate(self, size: int) -> None:
        await self.settle()
        cs = self.cs
        self.generation += 1
        if size < self.size:
            for index in [i for i in self.presealed if (i + 1) * cs > size]:
                del self.presealed[index]
            for index in [i for i in self.dirty if i * cs >= size]:
                del self.dirty[index]
                self.dirty_bytes -= cs
            index, within = divmod(size, cs)
            if within and index * cs < self.size:
                buf = self.dirty.get(index)
                if buf is None:
                    buf = await self.logical_chunk(index)
                    self.dirty[index] = buf
                    self.dirty_bytes += cs
                del buf[within:]
            self.low_water = min(self.low_water, size)
        self.size = size
        self.mtime_ns = time.time_ns()

    # -- write-back ----------------------------------------------------------------------
    @property
    def needs_flush(self) -> bool:
        return bool(self.dirty) or self.header_dirty or self.size != self.committed \
            or self.low_water < self.committed or self.header_size != self.committed \
            or self.tail_at is not None or self._writeback is not None \
            or self.writeback_error is not None \
            or self._stamp_mtime and self.mtime_ns is not None

    async def settle(self) -> None:
        """Wait until no write-back of this file is in flight. Everything that writes to
        the backend file itself, or must see its latest state there, settles first."""
        while self._writeback is not None:
            await self._writeback.wait()

    async def flush(self) -> None:
        """Write dirty state back in crash-safe order. Caller holds self.lock."""
        await self.settle()
        if not self.needs_flush:
            return
        if not self.writable:
            raise OSError(9, "file is not open for writing")
        if self.tail_at is not None:
            # Bytes past the committed extent are an interrupted write's tail: cut them.
            await self.backend.truncate(self.handle, self.tail_at)
            self.tail_at = None
        if self.low_water < self.committed:
            await writeback.shrink(self, self.low_water)
        plan = await writeback.plan(self)
        await writeback.write(self, plan)
        # A background write-back that failed earlier left its chunks dirty; they are on
        # the backend now, so that error has been made good.
        self.writeback_error = None
        writeback.commit(self, plan)
        self.dirty.clear()
        self.presealed.clear()
        self.dirty_bytes = 0
        written, self.mtime_ns = self.mtime_ns, None
        if self.pending_times is not None:
            await self.backend.fset_times(self.handle, *self.pending_times)
        elif written is not None and self._stamp_mtime:
            # One time per flush, not per write: the write's own, as a local file shows.
            await self.backend.fset_times(self.handle, None, written)

    async def write_back(self) -> None:
        """Write-back under memory pressure, overlapped with the writer: the dirty chunks
        move to self.inflight and are sealed and written by a background task while new
        writes fill a fresh dirty set. One batch per file is in flight; the next waits
        for it (the crash-safe order of docs/FORMAT.md holds batch by batch). Falls back
        to a synchronous flush outside a mount or when a shrink or tail cut is pending."""
        while True:
            await self.settle()
            async with self.lock:
                if self._writeback is not None:
                    continue                 # another writer started one meanwhile
                if self.dirty_bytes < self.tuning.file_dirty_limit:
                    return
                if self.spawn is None or self.tail_at is not None \
                        or self.low_water < self.committed or self.header_dirty \
                        or self.writeback_error is not None or not self.writable:
                    await self.flush()
                    return
                plan = await writeback.plan(self)
                self.inflight = plan.chunks
                self.dirty = {}
                self.presealed = {}
                self.dirty_bytes = 0
                done = self._writeback = trio.Event()
                if not self.spawn(self._background_write, plan, done):
                    self._writeback = None
                    writeback.restore(self, plan)
                    await self.flush()
                return

    async def _background_write(self, plan: writeback.Plan, done: trio.Event) -> None:
        try:
            await writeback.write(self, plan)
        except BaseException as exc:
            writeback.restore(self, plan)
            if not isinstance(exc, Exception):
                raise
            log.warning("%s: background write-back failed: %s", self.bpath, exc)
            self.writeback_error = exc
        else:
            writeback.commit(self, plan)
            if not self.dirty and not self._stamp_mtime:
                self.mtime_ns = None
        finally:
            self.inflight = {}
            self._writeback = None
            done.set()

    def sealed_header(self, size: int) -> bytes:
        self.meta = self.meta.with_(size=size)
        return seal_header(self._file_key, FileHeader(self.dek_id, self.file_id, self.meta))

    async def write_metadata(self, meta: Metadata) -> None:
        """chmod/chown: one small header write; the backend mtime is restored after it."""
        await self.settle()
        self.meta = meta.with_(size=self.header_size)
        before = await self.backend.fstat(self.handle)
        await self.backend.write(self.handle, 0, seal_header(
            self._file_key, FileHeader(self.dek_id, self.file_id, self.meta)))
        times = self.pending_times or (before.atime_ns, before.mtime_ns)
        await self.backend.fset_times(self.handle, *times)

    def forget_secrets(self) -> None:
        self._file_key = b""
        self._key_secret.wipe()


def _cut(pieces: list[bytes | memoryview], slots: list[tuple[int, int]]) -> list[bytes | memoryview]:
    """The (offset, length) slots, ascending, of consecutive pieces: a view where a slot
    lies in one piece, a joined copy where it spans two (or what there is, at the end)."""
    out: list[bytes | memoryview] = []
    k, start = 0, 0                     # pieces[k] begins at start
    for lo, length in slots:
        while k < len(pieces) and start + len(pieces[k]) <= lo:
            start += len(pieces[k])
            k += 1
        if k == len(pieces):
            out.append(b"")
            continue
        piece = memoryview(pieces[k])
        if lo + length <= start + len(piece):
            out.append(piece[lo - start:lo - start + length])
            continue
        parts, pos, j = [piece[lo - start:]], start + len(piece), k + 1
        while j < len(pieces) and pos < lo + length:
            parts.append(memoryview(pieces[j])[:lo + length - pos])
            pos += len(pieces[j])
            j += 1
        out.append(b"".join(parts))
    return out
