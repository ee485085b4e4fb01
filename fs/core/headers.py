"""File headers, committed sizes and link counts, cached while the store is unchanged.

A stat of a closed file needs its sealed header (type, mode, owner) and its committed size
(the reader rule of docs/FORMAT.md §9.1), and sometimes a link count the backend's listing
does not give (SMB). All of them are cached here, keyed so that a change on the backend
(another client's write, link or unlink) is noticed; a write journal a crashed flush left
behind (§9.5) is replayed the first time its file is read.
"""

from __future__ import annotations

from collections.abc import Callable

from ...backends.base import Backend, BackendStat, Handle
from ...crypto.format.chunks import ChunkCipher
from ...crypto.format.header import HEADER_SIZE, FileHeader, open_header, read_header_public
from ...crypto.format.kdf import file_key
from ...crypto.format.layout import logical_size
from ...crypto.format.names import is_long_name_entry, is_reserved
from ...crypto.keys.broker import KeyBroker
from ...errors import IntegrityError
from .coldscan import ColdListings
from .files import FileState
from .journal import journaled_file_ids
from .journal import recover as recover_journal
from .storeio import stat_entry, version_stamp


class HeaderCache:
    """Headers, committed sizes and link counts of one volume's files and directories.

    open_state(file_id) is the file's state while it is open on this volume (its journal
    and its names unlinked while open count too)."""

    def __init__(self, backend: Backend, broker: KeyBroker, chunk_size: int,
                 open_state: Callable[[bytes], FileState | None]) -> None:
        self.backend = backend
        self.broker = broker
        self.chunk_size = chunk_size
        self._open_state = open_state
        #: backend path -> (its stamp, the file id it held): which file a name is
        self._headers: dict[str, tuple[tuple, bytes]] = {}
        #: file id -> (header, committed size): one entry for every name of a file, so a
        #: chmod through one hard link is what all of them show
        self._files: dict[bytes, tuple[FileHeader, int]] = {}
        #: directory storage path -> (its mtime when counted or None, subdirectories), for
        #: backends whose directory stat has no link count (SMB); a storage never moves
        self._subdirs: dict[str, tuple[int | None, int]] = {}
        # Link counts by file id, for listings that cannot tell (SMB): learnt from every full
        # stat and header read, so all names of a file agree; refreshed when a name's stamp
        # (which includes the change time that link and unlink bump) no longer matches.
        self._links: dict[bytes, int] = {}
        #: files whose journal a crashed mount left behind (listed once, on load)
        self._journaled: set[bytes] = set()
        #: listings that answer runs of cold lookups; every forget below drops them
        self.listed = ColdListings()

    async def find_journals(self) -> None:
        """List the write journals a crashed mount left behind (when the volume opens)."""
        self._journaled = await journaled_file_ids(self.backend)

    # -- file headers --------------------------------------------------------------------
    async def header(self, bpath: str, bstat: BackendStat) -> tuple[FileHeader, int]:
        """A file's header and committed size, cached while the backend file is unchanged.

        Read with the file's full stat in one go, which refreshes its link count too."""
        known = self._known(bpath, bstat)
        if known is not None:
            return known
        raw, fresh = await self.backend.read_head(bpath, HEADER_SIZE)
        return await self._learn(bpath, bstat, raw, fresh)

    def knows(self, bpath: str) -> bool:
        """Whether a header was read for this name (it may have changed since)."""
        return bpath in self._headers

    async def read_cold(self, bpath: str) -> BackendStat | None:
        """Read the header of a name not known yet, in one call with its stat, and return
        that stat (FileNotFoundError if there is no such name). None when it is not a
        file whose header opens (a directory's stub, a planted or damaged entry): the
        caller stats it, and reports it, as any other name."""
        try:
            raw, fresh = await self.backend.read_head(bpath, HEADER_SIZE)
            await self._learn(bpath, fresh, raw, fresh)
        except FileNotFoundError:
            raise
        except (IntegrityError, OSError):
            return None
        return fresh

    def _known(self, bpath: str, bstat: BackendStat) -> tuple[FileHeader, int] | None:
        """The cached header and size of the file at bpath if it is unchanged since."""
        cached = self._headers.get(bpath)
        if cached is not None and cached[0] == version_stamp(bstat):
            return self._files.get(cached[1])
        return None

    async def prefetch(self, directory: str, entries: list[tuple[str, BackendStat]]) -> None:
        """Read the headers of these files of one directory (entry names and their listed
        stats) that are not cached, in one batch (Backend.read_heads), so that a listing
        does not pay one round trip, or one path walk, per file. A header that cannot be
        read or opened is left out: header() then reads it again and reports it."""
        todo = [(entry, bstat) for entry, bstat in entries
                if self._known(f"{directory}/{entry}" if directory else entry, bstat) is None]
        if not todo:
            return
        heads = await self.backend.read_heads(directory, [entry for entry, _ in todo], HEADER_SIZE)
        deks: dict[int, memoryview] = {}     # each DEK taken once for the batch, pinned
        try:
            for (entry, bstat), head in zip(todo, heads, strict=True):
                if isinstance(head, BaseException):
                    continue
                try:
                    await self._learn(f"{directory}/{entry}" if directory else entry, bstat,
                                      *head, deks)
                except (IntegrityError, OSError):
                    continue
        finally:
            for dek_id in deks:
                self.broker.release(dek_id)

    async def _learn(self, bpath: str, bstat: BackendStat, raw: bytes, fresh: BackendStat,
                     deks: dict[int, memoryview] | None = None) -> tuple[FileHeader, int]:
        """Open a header read for bpath (listed as bstat, read with its full stat fresh),
        resolve its committed size, and cache both."""
        stamp = version_stamp(bstat)
        header, dek = await self.open_header_bytes(raw, bpath, deks)
        size = header.meta.size
        state = self._open_state(header.file_id)
        if state is not None:
            # Open here: its write-back may be rewriting the file under our reads, and
            # what it committed is the size.
            size = state.committed
        elif logical_size(bstat.size, self.chunk_size) != size or header.file_id in self._journaled:
            cipher = ChunkCipher(file_key(dek, header.file_id), header.file_id)   # before any await
            handle = await self.backend.open(bpath)
            try:
                size = await self.committed_size(handle, bpath, header, cipher)
            finally:
                await self.backend.close(handle)
        if len(self._headers) > 100_000:
            self._headers.clear()
            self._files.clear()
            self._links.clear()
        self._headers[bpath] = (stamp, header.file_id)
        self._files[header.file_id] = (header, size)
        if fresh.nlink is not None:
            self._links[header.file_id] = fresh.nlink
        return header, size

    def forget_header(self, bpath: str) -> None:
        """A name changed: forget its header, and its file's link count if we knew it."""
        self.listed.clear()
        cached = self._headers.pop(bpath, None)
        if cached is not None:
            self.forget_file(cached[1])

    def forget_file(self, file_id: bytes) -> None:
        """A file's metadata or link count changed: every name of it reads them again."""
        self.listed.clear()
        self._files.pop(file_id, None)
        self._links.pop(file_id, None)

    def forget_names(self) -> None:
        """Which file a name is must be read again for every name (the store changed
        under the volume)."""
        self.listed.clear()
        self._headers.clear()

    async def committed_size(self, handle: Handle, bpath: str, header: FileHeader,
                             cipher: ChunkCipher) -> int:
        """The reader rule of FORMAT.md, after replaying a crashed flush's journal (listed
        when the volume opened, or found because the file failed to authenticate)."""
        if header.file_id in self._journaled:
            await self.replay_journal(bpath, header.file_id, cipher)
        try:
            stored = (await self.backend.fstat(handle)).size
            return await FileState.resolve_size(self.backend, handle, header, cipher,
                                                self.chunk_size, stored)
        except IntegrityError:
            if not await self.replay_journal(bpath, header.file_id, cipher):
                raise
            stored = (await self.backend.fstat(handle)).size
            return await FileState.resolve_size(self.backend, handle, header, cipher,
                                                self.chunk_size, stored)

    async def replay_journal(self, bpath: str, file_id: bytes, cipher: ChunkCipher) -> int:
        """Restore chunks torn by a flush that never finished; how many were restored."""
        self._journaled.discard(file_id)
        state = self._open_state(file_id)
        if state is not None and state.journal.active:
            return 0                        # our own journal: its flush is not over
        try:
            handle = await self.backend.open(bpath, write=True)
        except PermissionError:
            return 0
        try:
            return await recover_journal(self.backend, handle, file_id, cipher, self.chunk_size)
        finally:
            await self.backend.close(handle)

    async def open_header(self, handle: Handle, bpath: str) -> tuple[FileHeader, bytes]:
        """Read and open the header of an open backend file: (header, its DEK)."""
        return await self.open_header_bytes(await self.backend.read(handle, 0, HEADER_SIZE), bpath)

    async def open_header_bytes(self, raw: bytes, bpath: str,
                                deks: dict[int, memoryview] | None = None) -> tuple[FileHeader, bytes]:
        """deks: DEKs acquired already, by id; one this needs is acquired into it (the
        caller releases them)."""
        try:
            dek_id, file_id = read_header_public(raw)
            if deks is None:
                dek = await self.broker.dek(dek_id)
            else:
                dek = deks.get(dek_id)
                if dek is None:
                    dek = deks[dek_id] = await self.broker.acquire(dek_id)
            return open_header(file_key(dek, file_id), raw), dek
        except IntegrityError as exc:
            raise IntegrityError(f"{bpath}: {exc}") from None

    # -- link counts ---------------------------------------------------------------------
    async def nlink(self, bpath: str, bstat: BackendStat, file_id: bytes) -> int:
        """The link count: from bstat if it knows, else as last learnt for the file id;
        less the names unlinked while the file is open, which the backend still holds
        under hidden names until the last close (SMB)."""
        if bstat.nlink is not None:
            self._links[file_id] = bstat.nlink
            nlink = bstat.nlink
        else:
            nlink = self._links.get(file_id)
            if nlink is None:         # a name whose header was cached before its count was
                nlink = (await stat_entry(self.backend, bpath, bpath)).nlink or 1
                self._links[file_id] = nlink
        state = self._open_state(file_id)
        return max(0, nlink - len(state.victims)) if state is not None else nlink

    async def dir_nlink(self, bpath: str, bstat: BackendStat, count: bool = True) -> tuple[int, bool]:
        """A directory's link count, 2 + its subdirectories, and whether it is known; bpath
        is its storage, bstat the storage's stat, and each subdirectory a stub in it: the
        backend's link count of the storage, or where the backend has none (SMB) counted
        from its listing once and then kept by sealfs's own mkdir, rmdir and rename; a
        count gone stale (the storage's mtime moved under another client) is taken again.
        count=False (a listing of its parent) only uses a count known already."""
        nlink, known = max(2, bstat.nlink or 0), True
        if not self.backend.capabilities.dir_link_counts:
            cached = self._subdirs.get(bpath)
            if cached is not None and cached[0] in (None, bstat.mtime_ns):
                if cached[0] is None:
                    self._subdirs[bpath] = (bstat.mtime_ns, cached[1])
                nlink = 2 + cached[1]
            elif count:
                nlink = 2 + await self._count_subdirs(bpath, bstat.mtime_ns)
            else:
                known = False
        return nlink, known

    async def _count_subdirs(self, bpath: str, mtime_ns: int | None,
                             entries: list[tuple[str, BackendStat]] | None = None) -> int:
        if entries is None:
            entries = await self.backend.scandir(bpath)
        count = sum(1 for entry, st in entries
                    if st.is_dir and (not is_reserved(entry) or is_long_name_entry(entry)))
        if len(self._subdirs) > 50_000:
            self._subdirs.clear()
        self._subdirs[bpath] = (mtime_ns, count)
        return count

    def subdir_change(self, parent_bpath: str, delta: int) -> None:
        """Our own mkdir, rmdir or rename changed a known count: keep it, and take the
        directory's next mtime as the one it was counted at."""
        self.listed.clear()
        cached = self._subdirs.pop(parent_bpath, None)
        if cached is not None:
            self._subdirs[parent_bpath] = (None, max(0, cached[1] + delta))

    def dir_created(self, bpath: str) -> None:
        """A directory we just made has no subdirectories."""
        self.listed.clear()
        self._subdirs[bpath] = (None, 0)

    def dir_removed(self, bpath: str) -> None:
        self.listed.clear()
        self._subdirs.pop(bpath, None)
