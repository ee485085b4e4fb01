"""Write journal for in-place chunk rewrites: a torn rewrite must not become a lasting EIO.

Rewriting a sealed chunk where it already lies is not atomic: when the mount dies in the
middle (Linux stops a large pwrite at a page boundary on SIGKILL; the SMB client splits
large writes into several requests), the slot holds part old, part new ciphertext and
neither authenticates. So before a flush overwrites bytes that already exist on the
backend, it writes the exact sealed chunks it is about to write to
sealfs.journal/<file id hex>, and empties the journal once they are written.

A journal that is not empty therefore belongs to a flush that never finished. Recovery
looks at each record's slot: the new chunk complete, or the old chunk untouched (the
record says what the old one was: its final flag and length), leave it; anything else is
a torn rewrite, and the record's chunk is written into the slot. Records need no key or
MAC of their own: each is a sealed chunk that authenticates under the file key with its
index and final flag, and one that does not is ignored. The format is in docs/FORMAT.md.

The store is untrusted: the journal directory must be a real directory and each journal
a regular file, checked before anything is read, truncated or removed. Whatever else
lies there (a symlink, FIFO, device, a directory) is never opened or written through:
the mount fails that flush with EIO, and fsck reports the entry (see fs/tools/fsck.py).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ...backends.base import PAGE_SIZE, Backend, ForeignEntryError, Handle, join
from ...crypto.format.chunks import ChunkCipher
from ...crypto.format.constants import CHUNK_OVERHEAD, JOURNAL_DIR
from ...crypto.format.layout import slot_offset

log = logging.getLogger("sealfs.journal")

MAGIC = b"SEALJNL1"
# index, new chunk final flag, new sealed length, old chunk final flag, old sealed length
_RECORD = struct.Struct(">QBIBI")


@dataclass(frozen=True)
class Record:
    index: int
    final: bool
    sealed: bytes | memoryview       # the chunk as the flush writes it
    old_final: bool                  # what the slot held before: final flag ...
    old_length: int                  # ... and sealed length (0: nothing to keep)


# A local write within one page cannot tear (Backend.untearable); tests tear at pages.
ATOMIC_WRITE = PAGE_SIZE


def split_out(writes: list[tuple[int, bytearray]], start: int,
              end: int) -> tuple[list[tuple[int, memoryview]], tuple[int, memoryview]]:
    """Cut bytes [start, end) out of the write that holds them, to be written on their own
    after the rest. A write that begins at offset 0 carries the file header, which must
    not land before those bytes: it stays with them."""
    rest: list[tuple[int, memoryview]] = []
    head = None
    for offset, data in writes:
        view = memoryview(data)
        if not offset <= start < offset + len(view):
            rest.append((offset, view))
            continue
        lo = 0 if offset == 0 else start - offset
        if lo:
            rest.append((offset, view[:lo]))
        head = (offset + lo, view[lo:end - offset])
        if end - offset < len(view):
            rest.append((end, view[end - offset:]))
    assert head is not None, "split_out: no write holds the range"
    return rest, head


def journal_path(file_id: bytes) -> str:
    return join(JOURNAL_DIR, file_id.hex())


def encode(records: Iterable[Record]) -> bytes:
    parts: list[bytes | memoryview] = [MAGIC]
    for r in records:
        parts.append(_RECORD.pack(r.index, r.final, len(r.sealed), r.old_final, r.old_length))
        parts.append(r.sealed)
    return b"".join(parts)


def decode(blob: bytes) -> list[Record]:
    """Every complete record; a torn or foreign journal yields the records before the damage."""
    if not blob.startswith(MAGIC):
        return []
    out = []
    view = memoryview(blob)
    pos = len(MAGIC)
    while pos + _RECORD.size <= len(view):
        index, final, length, old_final, old_length = _RECORD.unpack_from(view, pos)
        pos += _RECORD.size
        if length < CHUNK_OVERHEAD or pos + length > len(view) or final > 1 or old_final > 1:
            break
        out.append(Record(index, bool(final), view[pos:pos + length], bool(old_final), old_length))
        pos += length
    return out


class Journal:
    """One file's journal while it is open for writing: created on the first in-place
    rewrite, emptied after each flush, removed on the last close."""

    def __init__(self, backend: Backend, file_id: bytes) -> None:
        self.backend = backend
        self.path = journal_path(file_id)
        self._handle: Handle | None = None

    @property
    def active(self) -> bool:
        return self._handle is not None

    async def record(self, records: list[Record]) -> None:
        """Must complete before the first byte of these chunks is rewritten."""
        if self._handle is None:
            self._handle = await _open_journal(self.backend, self.path)
            await self.backend.truncate(self._handle, 0)      # a crashed session's leftover
        await self.backend.write(self._handle, 0, encode(records))

    async def clear(self) -> None:
        """The rewrites are on the backend: no record may be replayed any more."""
        if self._handle is not None:
            await self.backend.truncate(self._handle, 0)

    async def remove(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        await self.backend.close(handle)
        try:
            await self.backend.unlink(self.path)
        except FileNotFoundError:
            pass


async def _open_journal(backend: Backend, path: str) -> Handle:
    try:
        handle = await backend.open(path, write=True, create=True)
    except FileNotFoundError:                   # a volume made before journals existed
        try:
            await backend.mkdir(JOURNAL_DIR)
        except FileExistsError:
            pass
        handle = await backend.open(path, write=True, create=True)
    await _check_regular(backend, handle, path)
    return handle


async def _check_regular(backend: Backend, handle: Handle, path: str) -> None:
    """Backends refuse to open what is not a file; this holds on any backend all the same,
    before a journal is truncated or replayed."""
    st = await backend.fstat(handle)
    if st.is_dir or st.foreign:
        await backend.close(handle)
        raise ForeignEntryError(path, "a directory where a file belongs" if st.is_dir
                                else "not a regular file")


async def journal_entries(backend: Backend) -> tuple[set[bytes], list[tuple[str, str]]]:
    """File ids with a journal left on the backend (a crashed mount's), and the entries
    sealfs never writes found instead: (backend path, what it is), the journal directory
    itself when it is not a real directory."""
    try:
        st = await backend.stat(JOURNAL_DIR)
        if st.foreign or not st.is_dir:
            return set(), [(JOURNAL_DIR, _what(st, "a directory"))]
        entries = await backend.scandir(JOURNAL_DIR)
    except FileNotFoundError:
        return set(), []
    except (ForeignEntryError, NotADirectoryError) as exc:   # swapped since the stat
        return set(), [(JOURNAL_DIR, getattr(exc, "what", None) or str(exc))]
    ids = set()
    planted = []
    for name, st in entries:
        if st.foreign or st.is_dir:
            planted.append((join(JOURNAL_DIR, name), _what(st, "a file")))
            continue
        try:
            ids.add(bytes.fromhex(name))
        except ValueError:
            continue
    return ids, planted


def _what(st, belongs: str) -> str:
    if st.foreign:
        return "a symbolic link or special file"
    return f"a directory where {belongs} belongs" if st.is_dir else f"a file where {belongs} belongs"


async def journaled_file_ids(backend: Backend) -> set[bytes]:
    """File ids with a journal left on the backend (a crashed mount's), listed once.
    Planted entries are left out here (never replayed) and reported by fsck."""
    ids, planted = await journal_entries(backend)
    for path, what in planted:
        log.warning("%s: %s in the store, not written by sealfs: ignored (run fsck)",
                    path, what)
    return ids


async def recover(backend: Backend, handle: Handle, file_id: bytes, cipher: ChunkCipher,
                  chunk_size: int, *, apply: bool = True, remove: bool = True) -> int:
    """Repair the chunks a crashed flush tore, from its journal; returns how many were torn.

    handle must be writable when apply is set. With apply unset nothing is written: the
    count says what a repair would restore (fsck without --repair)."""
    path = journal_path(file_id)
    try:
        jh = await backend.open(path)
    except FileNotFoundError:
        return 0
    await _check_regular(backend, jh, path)
    try:
        size = (await backend.fstat(jh)).size
        blob = await backend.read(jh, 0, size) if size else b""
    finally:
        await backend.close(jh)
    torn = 0
    for r in decode(blob):
        if not cipher.verifies(r.index, r.sealed, r.final):
            continue                            # the journal write itself was cut short
        offset = slot_offset(r.index, chunk_size)
        slot = await backend.read(handle, offset, max(len(r.sealed), r.old_length))
        if slot[:len(r.sealed)] == r.sealed:
            continue                            # the rewrite completed
        if r.old_length and _intact(cipher, r, slot[:r.old_length]):
            continue                            # the rewrite never reached this slot
        torn += 1
        if apply:
            await backend.write(handle, offset, r.sealed)
            log.warning("%s: chunk %d was torn by an interrupted write; restored from the journal",
                        handle.path, r.index)
    if apply and remove:
        try:
            await backend.unlink(path)
        except FileNotFoundError:
            pass
    return torn


def _intact(cipher: ChunkCipher, r: Record, old: bytes) -> bool:
    if len(old) < r.old_length:
        return False
    if not r.old_final and not any(old):
        return True                             # a hole stays a hole
    return cipher.verifies(r.index, old, r.old_final)
