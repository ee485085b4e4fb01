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
from ...crypto.format.header import HEADER_SIZE, FileHeader, Metadata, seal_header
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
from .journal import Journal, Record, split_out
from .journal import recover as recover_journal

if TYPE_CHECKING:
    from .cache import ChunkCache

log = logging.getLogger("sealfs.files")

# Crypto below this many bytes stays on the event loop: a thread hop costs ~50 us,
# AES-GCM of 64 KiB about 30 us.
_INLINE_CRYPTO = 128 * 1024
# Work handed to one worker thread at a time when sealing or opening in parallel.
_THREAD_BATCH = 1024 * 1024
_ZERO_NONCE = bytes(NONCE_SIZE)


@dataclass
class FileTuning:
    """Per-volume I/O knobs (set from the CLI / config file)."""

    readahead_bytes: int = 16 * 1024 * 1024
    # One background load; two fill the window. Over SMB, 8 MiB batches read 9 % faster
    # than 4 MiB ones (A/B, tmpfs share, 708 vs 649 MB/s): half the hops between trio,
    # the SMB threads and the crypto threads per byte; locally neutral; peak RSS +7 MiB.
    readahead_batch: int = 8 * 1024 * 1024
    file_dirty_limit: int = 8 * 1024 * 1024
    crypto_threads: int = 2


class FileState:
    """Shared by every handle (and hard link) open on one file id."""

    def __init__(self, *, backend: Backend, handle: Handle, bpath: str, header: FileHeader,
                 dek: bytes | memoryview, chunk_size: int, cache: "ChunkCache", tuning: FileTuning,
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
        except Exception as exc:                   # the reader will load (and report) itself
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

    async def _logical_chunk(self, index: int) -> bytearray:
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
        for run, pieces in zip(runs, results_pieces):
            base = slot_offset(run[0], cs)
            slots = []
            for i in run:
                length = chunk_plain_length(i, committed, cs) + CHUNK_OVERHEAD
                slots.append((slot_offset(i, cs) - base, length))
            for i, (_, length), sealed in zip(run, slots, _cut(pieces, slots)):
                jobs.append((i, sealed, i == committed_final, length))
        results = await self._run_crypto(jobs, self._open_batch)
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

    async def _run_crypto(self, jobs: list, fn) -> list:
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
                    buf = await self._logical_chunk(index)
                self.dirty[index] = buf
                self.dirty_bytes += cs
            elif self.presealed:
                self.presealed.pop(index, None)
            if len(buf) < within:
                buf.extend(bytes(within - len(buf)))
            buf[within:within + n] = view[taken:taken + n]
            if within + n == cs and self.spawn is not None:
                self._preseal(index, buf)
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
                    buf = await self._logical_chunk(index)
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
            await self._shrink_to(self.low_water)
        plan = await self._plan()
        await self._write_plan(plan)
        # A background write-back that failed earlier left its chunks dirty; they are on
        # the backend now, so that error has been made good.
        self.writeback_error = None
        self._commit(plan)
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
                plan = await self._plan()
                self.inflight = plan.chunks
                self.dirty = {}
                self.presealed = {}
                self.dirty_bytes = 0
                done = self._writeback = trio.Event()
                if not self.spawn(self._background_write, plan, done):
                    self._writeback = None
                    self._restore(plan)
                    await self.flush()
                return

    async def _background_write(self, plan: "_Plan", done: trio.Event) -> None:
        try:
            await self._write_plan(plan)
        except BaseException as exc:
            self._restore(plan)
            if not isinstance(exc, Exception):
                raise
            log.warning("%s: background write-back failed: %s", self.bpath, exc)
            self.writeback_error = exc
        else:
            self._commit(plan)
            if not self.dirty and not self._stamp_mtime:
                self.mtime_ns = None
        finally:
            self.inflight = {}
            self._writeback = None
            done.set()

    def _restore(self, plan: "_Plan") -> None:
        """A write-back that did not land: its chunks are dirty again (unless rewritten
        since), so nothing written is lost and a later flush retries them."""
        for i, plain in plan.chunks.items():
            if i not in self.dirty and i * self.cs < self.size:
                self.dirty[i] = plain if isinstance(plain, bytearray) else bytearray(plain)
                self.dirty_bytes += self.cs
        self.inflight = {}

    async def _plan(self) -> "_Plan":
        """Everything a flush of the current dirty state writes, in order, not yet sealed.
        Caller holds self.lock; no shrink or tail cut is pending."""
        cs = self.cs
        self.generation += 1
        old, new = self.committed, self.size
        old_final, new_final = final_index(old, cs), final_index(new, cs)
        chunks: dict[int, bytes | bytearray] = {i: b for i, b in self.dirty.items() if i <= new_final}
        if new != old and new_final not in chunks:
            chunks[new_final] = await self._logical_chunk(new_final)
        reseal_old_final = old_final < new_final
        if reseal_old_final and old_final not in chunks:
            chunks[old_final] = await self._logical_chunk(old_final)
        # The old final chunk, when a write over its old bytes cannot tear (one page
        # locally, one request on SMB: Backend.untearable), is replaced by a write after
        # the rest of its slot, not journaled; see fs/core/journal.py.
        old_extent = stored_size(old, cs)
        atomic_head = old_final in chunks and self.backend.untearable(slot_offset(old_final, cs),
                                                                      old_extent)
        header_needed = new != self.header_size or self.header_dirty
        header = self._sealed_header(new) if header_needed else None
        # Contiguous runs of chunks are sealed straight into one buffer each and written
        # in one request; the old final chunk (resealed last) always stands alone.
        runs: list[list[int]] = []
        for i in sorted(chunks):
            alone = reseal_old_final and i == old_final
            if runs and runs[-1][-1] == i - 1 and not alone and not (
                    reseal_old_final and runs[-1][-1] == old_final):
                runs[-1].append(i)
            else:
                runs.append([i])
        jobs = []
        done: set[int] = set()                # chunks sealed already (presealed)
        writes: list[tuple[int, bytearray]] = []
        combined = None
        for run in runs:
            # Header and chunk 0 are contiguous: one request (every small file), written
            # after every other chunk so the header still comes last.
            lead = HEADER_SIZE if (run[0] == 0 and header is not None and not reseal_old_final
                                   and (not atomic_head or old_final == 0)) else 0
            lengths = [chunk_plain_length(i, new, cs) for i in run]
            if lead:
                buf = bytearray(lead + sum(lengths) + CHUNK_OVERHEAD * len(run))
                view = memoryview(buf)
                pos = lead
                for i, length in zip(run, lengths):
                    out = view[pos:pos + length + CHUNK_OVERHEAD]
                    sealed = self._take_presealed(i, chunks[i], length, new_final)
                    if sealed is not None:
                        out[:] = sealed
                        done.add(i)
                    jobs.append((i, _fit(chunks[i], length), i == new_final, out))
                    pos += length + CHUNK_OVERHEAD
                buf[:HEADER_SIZE] = header
                combined = (0, buf)
                header = None
                continue
            # A chunk sealed already goes to the backend as it is; the rest of the run is
            # sealed into shared buffers. The backend gathers the adjacent pieces into its
            # requests (pwritev, one SMB WRITE) without joining them.
            pending: list[tuple[int, int]] = []
            for i, length in zip(run, lengths):
                sealed = self._take_presealed(i, chunks[i], length, new_final)
                if sealed is None:
                    pending.append((i, length))
                    continue
                self._seal_buffer(pending, chunks, new_final, jobs, writes)
                writes.append((slot_offset(i, cs), sealed))
                jobs.append((i, chunks[i], False, sealed))
                done.add(i)
            self._seal_buffer(pending, chunks, new_final, jobs, writes)
        return _Plan(old, new, chunks, jobs, writes, combined, header,
                     reseal_old_final, atomic_head, done)

    def _take_presealed(self, index: int, plain: bytes | bytearray, length: int,
                        new_final: int) -> memoryview | None:
        """The chunk's ciphertext from _preseal, if the chunk is unchanged since and still
        a whole non-final chunk; it is used up either way."""
        sealed = self.presealed.pop(index, None)
        if sealed is not None and sealed[0] is plain and index != new_final \
                and length == self.cs == len(plain):
            return sealed[1]
        return None

    def _seal_buffer(self, pending: list[tuple[int, int]], chunks: dict, new_final: int,
                     jobs: list, writes: list) -> None:
        """One buffer for the adjacent chunks in pending, each sealed into its slot later."""
        if not pending:
            return
        buf = bytearray(sum(length + CHUNK_OVERHEAD for _, length in pending))
        view = memoryview(buf)
        pos = 0
        for i, length in pending:
            jobs.append((i, _fit(chunks[i], length), i == new_final,
                         view[pos:pos + length + CHUNK_OVERHEAD]))
            pos += length + CHUNK_OVERHEAD
        writes.append((slot_offset(pending[0][0], self.cs), buf))
        pending.clear()

    async def _write_plan(self, plan: "_Plan") -> None:
        """Seal the plan's chunks and write them: journal, chunks, old final chunk, header."""
        cs = self.cs
        old = plan.old
        old_final = final_index(old, cs)
        old_extent = stored_size(old, cs)
        writes = list(plan.writes)
        await self._run_crypto([j for j in plan.jobs if j[0] not in plan.presealed],
                               self._seal_batch)
        resealed = None
        if plan.reseal_old_final:
            resealed = next(w for w in writes if w[0] == slot_offset(old_final, cs))
            writes.remove(resealed)
        if plan.combined is not None:
            writes.append(plan.combined)
        # Rewrites of bytes already on the backend must not tear (fs/core/journal.py): every
        # chunk rewritten in place is journaled first, but for an atomic head.
        head = None
        if plan.atomic_head:
            if resealed is not None:
                writes.append(resealed)
                resealed = None
            start = slot_offset(old_final, cs)
            holder = next(w for w in writes if w[0] <= start < w[0] + len(w[1]))
            if self.backend.untearable(holder[0], holder[0] + len(holder[1])):
                writes.remove(holder)             # it cannot tear: written whole, last
                head = holder
            else:
                writes, head = split_out(writes, start, old_extent)
        records = [Record(i, final, out, i == old_final,
                          chunk_plain_length(i, old, cs) + CHUNK_OVERHEAD)
                   for i, _plain, final, out in plan.jobs
                   if i <= old_final and not (head is not None and i == old_final)]
        if records:
            await self.journal.record(records)
        if writes:
            await self.backend.write_many(self.handle, writes)
        if resealed is not None:
            await self.backend.write(self.handle, *resealed)
        if head is not None:
            await self.backend.write(self.handle, *head)
        if plan.header is not None:
            await self.backend.write(self.handle, 0, plan.header)
        if records:
            await self.journal.clear()

    def _commit(self, plan: "_Plan") -> None:
        """The plan is on the backend: it is the committed state now."""
        self.header_size = plan.new
        self.header_dirty = False
        self.committed = plan.new
        self.low_water = plan.new
        for i, plain, _final, _out in plan.jobs:
            self.cache.put(self.file_id, i, plain)   # no longer mutated by anyone
        self.meta = self.meta.with_(size=plan.new)

    async def _shrink_to(self, size: int) -> None:
        cs = self.cs
        index = final_index(size, cs)
        plain = _fit(await self._logical_chunk_at_most(index, size), chunk_plain_length(index, size, cs))
        old = self.committed
        sealed = self.cipher.seal(index, plain, True)
        offset = slot_offset(index, cs)
        journaled = not self.backend.untearable(offset, offset + len(sealed))
        if journaled:
            await self.journal.record([Record(index, True, sealed, index == final_index(old, cs),
                                              chunk_plain_length(index, old, cs) + CHUNK_OVERHEAD)])
        await self.backend.write(self.handle, 0, self._sealed_header(size))
        self.header_size = size
        await self.backend.write(self.handle, offset, sealed)
        await self.backend.truncate(self.handle, stored_size(size, cs))
        if journaled:
            await self.journal.clear()
        self.cache.drop_file(self.file_id, index)
        self.cache.put(self.file_id, index, bytes(plain))
        self.committed = size
        self.header_dirty = False

    async def _logical_chunk_at_most(self, index: int, size: int) -> bytearray:
        """Current plaintext of chunk index, cut at size (used for the shrink phase)."""
        buf = await self._logical_chunk(index)
        return buf[:max(0, size - index * self.cs)]

    def _preseal(self, index: int, buf: bytearray) -> None:
        """Seal a chunk the moment a write completes it, as a non-final chunk, on the
        mount's own thread. Sealed at write-back instead, each of the 128 chunks of an
        8 MiB batch passed the GIL between the sealing threads and the thread serving
        FUSE writes: a seal that takes 0.5 ms alone took 4 ms, serial before each batch's
        transfer. Here it overlaps the previous batch's transfer, and the write-back only
        copies the ciphertext into place (and seals again a chunk that changed since or
        became the final one). Costs: up to one dirty limit of ciphertext per file beside
        its plaintext, and a wasted seal when a chunk is rewritten before write-back."""
        if len(buf) != self.cs:
            return
        # 64 spare bytes: once written back, the buffer's heap slot must fit the chunk a
        # later read decrypts (a bytes object a few bytes larger), or reading the file
        # back left every such slot unused: peak RSS 243 MiB instead of 221 (205 without
        # presealing) for a 512 MiB write and read.
        out = memoryview(bytearray(self.cs + CHUNK_OVERHEAD + 64))[:self.cs + CHUNK_OVERHEAD]
        self.cipher.seal_into(index, buf, False, out)
        self.presealed[index] = (buf, out)

    def _seal_batch(self, batch: list[tuple[int, bytes, bool, memoryview]]) -> list[int]:
        for i, plain, final, out in batch:
            self.cipher.seal_into(i, plain, final, out)
        return [i for i, *_ in batch]

    def _sealed_header(self, size: int) -> bytes:
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


@dataclass
class _Plan:
    """One flush, planned under the file lock and written with or without it."""

    old: int                                   # committed size before
    new: int                                   # committed size after
    chunks: dict[int, bytes | bytearray]       # plaintext of every chunk it writes
    jobs: list                                 # (index, plain, final, sealed out view)
    writes: list[tuple[int, bytearray]]        # sealed pieces by offset (adjacent ones continue a run)
    combined: tuple[int, bytearray] | None     # header + chunk 0 in one write
    header: bytes | None                       # the header alone, written last
    reseal_old_final: bool
    atomic_head: bool
    presealed: set[int]                        # chunks whose out view holds their seal already


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


def _fit(data: bytes | bytearray, length: int) -> bytes | bytearray:
    if len(data) == length:
        return data
    if len(data) > length:
        return bytes(data[:length])
    return bytes(data) + bytes(length - len(data))

