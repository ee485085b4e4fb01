"""Write-back of one file: which chunks a flush writes, sealed how, and in what order.

The order is the writer rule of docs/FORMAT.md §9.2, and it is what makes every crash
point readable (§9.3): journal the chunks rewritten in place, then the new and dirty
chunks in ascending order, then the old final chunk resealed as a non-final one, then the
header; a shrink writes the header, then the new final chunk, then truncates. plan()
decides under the file's lock; write() may run without it (a background write-back), so
a plan carries everything it writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ...crypto.format.chunks import ChunkCipher
from ...crypto.format.constants import CHUNK_OVERHEAD
from ...crypto.format.header import HEADER_SIZE
from ...crypto.format.layout import chunk_plain_length, final_index, slot_offset, stored_size
from .journal import Record, split_out

if TYPE_CHECKING:
    from .files import FileState


@dataclass
class Plan:
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


async def plan(f: FileState) -> Plan:
    """Everything a flush of the current dirty state writes, in order, not yet sealed.
    Caller holds f.lock; no shrink or tail cut is pending."""
    cs = f.cs
    f.generation += 1
    old, new = f.committed, f.size
    old_final, new_final = final_index(old, cs), final_index(new, cs)
    chunks: dict[int, bytes | bytearray] = {i: b for i, b in f.dirty.items() if i <= new_final}
    if new != old and new_final not in chunks:
        chunks[new_final] = await f.logical_chunk(new_final)
    reseal_old_final = old_final < new_final
    if reseal_old_final and old_final not in chunks:
        chunks[old_final] = await f.logical_chunk(old_final)
    # The old final chunk, when a write over its old bytes cannot tear (one page
    # locally, one request on SMB: Backend.untearable), is replaced by a write after
    # the rest of its slot, not journaled; see fs/core/journal.py.
    old_extent = stored_size(old, cs)
    atomic_head = old_final in chunks and f.backend.untearable(slot_offset(old_final, cs),
                                                                  old_extent)
    header_needed = new != f.header_size or f.header_dirty
    header = f.sealed_header(new) if header_needed else None
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
            for i, length in zip(run, lengths, strict=True):
                out = view[pos:pos + length + CHUNK_OVERHEAD]
                sealed = _take_presealed(f, i, chunks[i], length, new_final)
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
        for i, length in zip(run, lengths, strict=True):
            sealed = _take_presealed(f, i, chunks[i], length, new_final)
            if sealed is None:
                pending.append((i, length))
                continue
            _seal_buffer(f, pending, chunks, new_final, jobs, writes)
            writes.append((slot_offset(i, cs), sealed))
            jobs.append((i, chunks[i], False, sealed))
            done.add(i)
        _seal_buffer(f, pending, chunks, new_final, jobs, writes)
    return Plan(old, new, chunks, jobs, writes, combined, header,
                 reseal_old_final, atomic_head, done)


def _take_presealed(f: FileState, index: int, plain: bytes | bytearray, length: int,
                    new_final: int) -> memoryview | None:
    """The chunk's ciphertext from _preseal, if the chunk is unchanged since and still
    a whole non-final chunk; it is used up either way."""
    sealed = f.presealed.pop(index, None)
    if sealed is not None and sealed[0] is plain and index != new_final \
            and length == f.cs == len(plain):
        return sealed[1]
    return None


def _seal_buffer(f: FileState, pending: list[tuple[int, int]], chunks: dict, new_final: int,
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
    writes.append((slot_offset(pending[0][0], f.cs), buf))
    pending.clear()


async def write(f: FileState, plan: Plan) -> None:
    """Seal the plan's chunks and write them: journal, chunks, old final chunk, header."""
    cs = f.cs
    old = plan.old
    old_final = final_index(old, cs)
    old_extent = stored_size(old, cs)
    writes = list(plan.writes)
    await f.run_crypto([j for j in plan.jobs if j[0] not in plan.presealed],
                           partial(_seal_batch, f.cipher))
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
        if f.backend.untearable(holder[0], holder[0] + len(holder[1])):
            writes.remove(holder)             # it cannot tear: written whole, last
            head = holder
        else:
            writes, head = split_out(writes, start, old_extent)
    records = [Record(i, final, out, i == old_final,
                      chunk_plain_length(i, old, cs) + CHUNK_OVERHEAD)
               for i, _plain, final, out in plan.jobs
               if i <= old_final and not (head is not None and i == old_final)]
    if records:
        await f.journal.record(records)
    if writes:
        await f.backend.write_many(f.handle, writes)
    if resealed is not None:
        await f.backend.write(f.handle, *resealed)
    if head is not None:
        await f.backend.write(f.handle, *head)
    if plan.header is not None:
        await f.backend.write(f.handle, 0, plan.header)
    if records:
        await f.journal.clear()


def commit(f: FileState, plan: Plan) -> None:
    """The plan is on the backend: it is the committed state now."""
    f.header_size = plan.new
    f.header_dirty = False
    f.committed = plan.new
    f.low_water = plan.new
    for i, plain, _final, _out in plan.jobs:
        f.cache.put(f.file_id, i, plain)   # no longer mutated by anyone
    f.meta = f.meta.with_(size=plan.new)


def restore(f: FileState, plan: Plan) -> None:
    """A write-back that did not land: its chunks are dirty again (unless rewritten
    since), so nothing written is lost and a later flush retries them."""
    for i, plain in plan.chunks.items():
        if i not in f.dirty and i * f.cs < f.size:
            f.dirty[i] = plain if isinstance(plain, bytearray) else bytearray(plain)
            f.dirty_bytes += f.cs
    f.inflight = {}


async def shrink(f: FileState, size: int) -> None:
    cs = f.cs
    index = final_index(size, cs)
    plain = _fit(await _logical_chunk_at_most(f, index, size), chunk_plain_length(index, size, cs))
    old = f.committed
    sealed = f.cipher.seal(index, plain, True)
    offset = slot_offset(index, cs)
    journaled = not f.backend.untearable(offset, offset + len(sealed))
    if journaled:
        await f.journal.record([Record(index, True, sealed, index == final_index(old, cs),
                                          chunk_plain_length(index, old, cs) + CHUNK_OVERHEAD)])
    await f.backend.write(f.handle, 0, f.sealed_header(size))
    f.header_size = size
    await f.backend.write(f.handle, offset, sealed)
    await f.backend.truncate(f.handle, stored_size(size, cs))
    if journaled:
        await f.journal.clear()
    f.cache.drop_file(f.file_id, index)
    f.cache.put(f.file_id, index, bytes(plain))
    f.committed = size
    f.header_dirty = False


async def _logical_chunk_at_most(f: FileState, index: int, size: int) -> bytearray:
    """Current plaintext of chunk index, cut at size (used for the shrink phase)."""
    buf = await f.logical_chunk(index)
    return buf[:max(0, size - index * f.cs)]


def preseal(f: FileState, index: int, buf: bytearray) -> None:
    """Seal a chunk the moment a write completes it, as a non-final chunk, on the
    mount's own thread. Sealed at write-back instead, each chunk of a batch passed the
    GIL between the sealing threads and the thread serving FUSE writes, several times
    slower than alone and serial before each batch's transfer (docs/PERFORMANCE.md,
    "Measurements behind code comments"). Here it overlaps the previous batch's
    transfer, and the write-back only copies the ciphertext into place (and seals again
    a chunk that changed since or became the final one). Costs: up to one dirty limit of
    ciphertext per file beside its plaintext, and a wasted seal when a chunk is
    rewritten before write-back."""
    if len(buf) != f.cs:
        return
    # 64 spare bytes: once written back, the buffer's heap slot must fit the chunk a
    # later read decrypts (a bytes object a few bytes larger), or reading the file
    # back leaves every such slot unused and peak RSS grows (docs/PERFORMANCE.md).
    out = memoryview(bytearray(f.cs + CHUNK_OVERHEAD + 64))[:f.cs + CHUNK_OVERHEAD]
    f.cipher.seal_into(index, buf, False, out)
    f.presealed[index] = (buf, out)


def _seal_batch(cipher: ChunkCipher, batch: list[tuple[int, bytes, bool, memoryview]]) -> list[int]:
    for i, plain, final, out in batch:
        cipher.seal_into(i, plain, final, out)
    return [i for i, *_ in batch]


def _fit(data: bytes | bytearray, length: int) -> bytes | bytearray:
    if len(data) == length:
        return data
    if len(data) > length:
        return bytes(data[:length])
    return bytes(data) + bytes(length - len(data))
