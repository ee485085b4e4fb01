"""`sealfs fsck`: verify every byte of a volume on its backend, repair only what is safe.

Volume.load has already verified sealfs.json (its MAC) and the root's sealfs.dir.
The check then walks the directories from the root, each directory's storage
(d/<locator>) in turn:

  - each directory's stub and the record in it (sealed dir id + metadata), which names
    the storage of its children; a storage named by two records (a copied stub) is
    reported for the second;
  - each entry name, decrypted with the parent's dir id (long names via their sidecar,
    whose hash must match the entry name); a name that does not decrypt (modified, or
    moved in from another directory) is reported by its ciphertext path;
  - each file: the header, then every chunk (GCM tag, index and final flag; all-zero
    non-final slots are holes); the committed size by the reader rule of FORMAT.md
    (FileState.resolve_size); backend bytes beyond the committed extent are an
    "uncommitted tail".

  - each inode whose sealed flags say it has extended attributes: its blob
    (x/<locator>, FORMAT.md section 12) must open under its own id; blobs no inode
    claims are orphans of an interrupted update (--repair removes them).

Problems are printed one per line as "PROBLEM: <where>: <what>", <where> being the
plaintext path when every component decrypted, else the backend (ciphertext) path.
--repair fixes only what loses nothing a reader could see, each as "REPAIRED: ...":
orphaned long-name sidecars, sealfs.tmp.* / sealfs.del.* leftovers (files, and temporary
stubs holding at most a directory record; a sealfs.tmp.* directory holding anything else
is reported and kept, as rmdir keeps it), uncommitted tails (cut to the committed
extent), and write journals left by a crashed mount (the chunks they tore restored, then
removed), and orphan storages that are empty or hold only such leftovers. An orphan
holding anything else is reported and kept (it may be another client's work), and so is
every orphan when some directory could not be walked (the orphan may be that directory's
storage). Damaged headers, chunks, names and directory records, and entries planted
under d/, are reported, never "repaired".

The store is untrusted: a symlink, FIFO, device or misplaced directory where sealfs keeps
its write journals (sealfs.journal itself, or an entry in it) is reported by its
ciphertext path, and --repair removes that entry itself (unlinkat never follows a
symlink; the backend refuses to traverse one), never what it points to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ...backends.base import BackendStat, join
from ...crypto.format.chunks import ChunkCipher
from ...crypto.format.constants import (
    CHUNK_OVERHEAD,
    DIR_META_NAME,
    HIDDEN_PREFIX,
    LOCATOR_SPLIT,
    NONCE_SIZE,
    STORAGE_DIR,
    TEMP_PREFIX,
    XATTR_DIR,
)
from ...crypto.format.header import HEADER_SIZE, Metadata
from ...crypto.format.kdf import file_key
from ...crypto.format.layout import chunk_count, chunk_plain_length, slot_offset, stored_size
from ...crypto.format.locator import is_storage_path
from ...crypto.format.names import (
    entry_of_sidecar,
    is_long_name_entry,
    is_reserved,
    is_sidecar,
    sidecar_of,
)
from ...crypto.format.xattrs import KIND_DIR, KIND_FILE, is_blob_path
from ...errors import IntegrityError, KeyAccessError
from ..core.files import FileState
from ..core.journal import journal_entries, journal_path
from ..core.journal import recover as recover_journal
from ..core.paths import DirInfo
from ..core.volume import Volume

READ_BLOCK = 1024 * 1024
MAX_CHUNK_LINES = 20          # per file; the rest is summarised in one line


@dataclass
class FsckResult:
    problems: list[str] = field(default_factory=list)     # still present
    repaired: list[str] = field(default_factory=list)
    directories: int = 0
    files: int = 0
    orphans: int = 0                                      # orphan storages found


    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        orphans = f", {self.orphans} orphaned storages" if self.orphans else ""
        return (f"fsck: {self.directories} directories, {self.files} files checked{orphans}: "
                f"{len(self.problems)} problems, {len(self.repaired)} repaired")


class Fsck:
    def __init__(self, volume: Volume, repair: bool = False,
                 out: Callable[[str], None] = print) -> None:
        self.vol = volume
        self.backend = volume.backend
        self.repair = repair
        self.out = out
        self.result = FsckResult()

    # -- reporting ---------------------------------------------------------------------------
    def _where(self, plain: str | None, bpath: str) -> str:
        if plain is not None:
            return plain or "/"
        return f"{self.backend.location.rstrip('/')}/{bpath} (ciphertext path)"

    def _cipher_note(self, plain: str | None, bpath: str) -> str:
        """The ciphertext path, for a line that names an object by its plaintext path."""
        if plain is None:
            return ""
        return f" (ciphertext path {self.backend.location.rstrip('/')}/{bpath})"

    def problem(self, where: str, what: str) -> None:
        line = f"PROBLEM: {where}: {what}"
        self.result.problems.append(line)
        self.out(line)

    def repaired(self, where: str, what: str) -> None:
        line = f"REPAIRED: {where}: {what}"
        self.result.repaired.append(line)
        self.out(line)

    async def _safe(self, where: str, what: str, fix, done: str) -> None:
        """A problem that --repair may fix."""
        if not self.repair:
            self.problem(where, what + " (fsck --repair fixes it)")
            return
        try:
            await fix()
        except OSError as exc:
            self.problem(where, f"{what}; repair failed: {exc}")
            return
        self.repaired(where, done)

    # -- walk --------------------------------------------------------------------------------
    async def run(self) -> FsckResult:
        root = await self.vol.paths.root()
        self.journals, planted = await journal_entries(self.backend)
        for bpath, what in planted:
            await self._planted(bpath, what)
        self.storages: set[str] = {root.storage}
        # False once some directory could not be walked: its children's storages would
        # look like orphans, so none is removed.
        self.complete = True
        self.blobs: set[str] = set()
        await self._check_xattrs(KIND_DIR, root.dir_id, root.meta, "/")
        await self._check_dir(root.storage, "", root)
        await self._check_storages()
        await self._check_blob_area()
        for file_id in sorted(self.journals):      # no file has this id any more
            path = journal_path(file_id)
            await self._safe(self._where(None, path), "write journal of a file that no longer exists",
                             lambda p=path: self.backend.unlink(p), "removed orphaned write journal")
        return self.result

    async def _check_dir(self, bpath: str, plain: str | None, info: DirInfo) -> None:
        """Check the directory whose storage is bpath."""
        self.result.directories += 1
        try:
            entries = await self.backend.scandir(bpath)
        except OSError as exc:
            self.problem(self._where(plain, bpath), f"cannot list directory: {exc}")
            self.complete = False
            return
        names = dict(entries)
        for entry, bstat in sorted(entries):
            child = join(bpath, entry)
            here = self._where(None, child)
            if entry.startswith(TEMP_PREFIX) or entry.startswith(HIDDEN_PREFIX):
                if bstat.is_dir and not bstat.foreign \
                        and not await self._is_leftover(bpath, entry, bstat, set(names)):
                    # As rmdir has it (FORMAT.md 9.2): not what an interrupted mkdir,
                    # rmdir or rename leaves, so not ours to delete.
                    self.problem(here, "a temporary directory holding more than a directory "
                                       "record: not a leftover of sealfs's, kept")
                    continue
                await self._safe(here, "leftover of an interrupted operation",
                                 lambda c=child, d=bstat.is_dir: self._remove_tree(c, d),
                                 "removed leftover")
                continue
            if is_sidecar(entry):
                if entry_of_sidecar(entry) not in names:
                    await self._safe(here, "orphaned long-name sidecar",
                                     lambda c=child: self.backend.unlink(c),
                                     "removed orphaned long-name sidecar")
                continue
            if bstat.foreign:       # never opened: a FIFO blocks, a symlink leaves the store
                self.problem(here, "not a regular file or directory (not written by sealfs)")
                continue
            name: str | None
            try:
                name = await self._decode(info, bpath, entry, names)
            except IntegrityError as exc:
                self.problem(here, f"name does not decrypt in this directory (moved from "
                                   f"another directory, or modified): {exc}")
                name = None
            if name is False:        # an unknown reserved entry (reported)
                continue
            child_plain = f"{plain}/{name}" if plain is not None and name is not None else None
            if bstat.is_dir:
                child_info = await self._check_stub(child, child_plain)
                if child_info is not None:
                    await self._check_xattrs(KIND_DIR, child_info.dir_id, child_info.meta,
                                             self._where(child_plain, child))
                    await self._check_dir(child_info.storage, child_plain, child_info)
            else:
                await self._check_file(child, self._where(child_plain, child), bstat.size,
                                       self._cipher_note(child_plain, child))

    async def _check_stub(self, stub: str, plain: str | None) -> DirInfo | None:
        """A directory's stub: its record, which must name a storage no other record
        names, and nothing else; the directory, when its storage can be walked."""
        where = self._where(plain, stub)
        try:
            info = await self.vol.paths.read_dir_info(stub)
        except IntegrityError as exc:
            self.problem(where, f"directory record: {exc}{self._cipher_note(plain, stub)}")
            self.complete = False
            return None
        for entry in await self.backend.listdir(stub):
            if entry != DIR_META_NAME:
                self.problem(self._where(None, join(stub, entry)),
                             "not written by sealfs (a directory stub holds only its record)")
        if info.storage in self.storages:
            self.problem(where, f"directory record names the storage {info.storage} of another "
                                f"directory (a copied stub){self._cipher_note(plain, stub)}")
            return None
        self.storages.add(info.storage)
        try:
            st = await self.backend.stat(info.storage)
        except FileNotFoundError:
            st = None
        if st is None or not st.is_dir or st.foreign:
            self.problem(where, f"directory storage {info.storage} is missing"
                                f"{self._cipher_note(plain, stub)}")
            return None
        return info

    async def _decode(self, info: DirInfo, bpath: str, entry: str, names: dict):
        if is_long_name_entry(entry):
            side = names.get(sidecar_of(entry))
            if side is None:
                raise IntegrityError("long name has no sidecar")
            if side.foreign or side.is_dir:
                raise IntegrityError("long-name sidecar is not a regular file")
            try:
                encoded = (await self.vol.paths.read_sidecar(bpath, entry)).decode("ascii")
            except UnicodeDecodeError:
                raise IntegrityError("long-name sidecar is not ASCII") from None
            return self.vol.paths.long_name(info, entry, encoded)
        if is_reserved(entry):
            self.problem(self._where(None, join(bpath, entry)), "unknown sealfs.* entry")
            return False
        return self.vol.names.decode(entry, info.dir_id)

    # -- storages under d/ --------------------------------------------------------------
    async def _check_storages(self) -> None:
        """Everything under d/ after the walk: a storage it did not reach is an orphan;
        anything else is not sealfs's and is reported, never listed into or followed."""
        for fanout, bstat in await self._scan_store_dir(STORAGE_DIR):
            top = join(STORAGE_DIR, fanout)
            if not _fanout_name(fanout) or not bstat.is_dir or bstat.foreign:
                self._not_ours(top, bstat, "d/ holds only the fan-out directories of storages")
                continue
            for entry, st in await self._scan_store_dir(top):
                storage = join(top, entry)
                if not is_storage_path(storage) or not st.is_dir or st.foreign:
                    self._not_ours(storage, st, "a fan-out directory holds only storages")
                elif storage not in self.storages:
                    await self._orphan(storage)

    async def _scan_store_dir(self, bpath: str) -> list[tuple[str, BackendStat]]:
        try:
            return sorted(await self.backend.scandir(bpath))
        except FileNotFoundError:
            return []       # no d/ at all: the walk reported the root's missing storage
        except OSError as exc:
            self.problem(self._where(None, bpath), f"cannot list directory: {exc}")
            return []

    def _not_ours(self, bpath: str, bstat: BackendStat, why: str) -> None:
        what = bstat.foreign or ("a directory" if bstat.is_dir else "a file")
        self.problem(self._where(None, bpath), f"{what} not written by sealfs ({why}); "
                                               "never followed, not removed")

    async def _orphan(self, storage: str) -> None:
        """A storage no directory record names (FORMAT.md 9.2): removable only when it holds
        nothing but leftovers, and only when the walk saw every record."""
        where = self._where(None, storage)
        if not self.complete:
            # Most likely the storage of a directory whose record was just reported: one
            # fault, one PROBLEM line. The run fails on that record; the next one, after it
            # is dealt with, judges this storage.
            self.out(f"NOTE: {where}: storage not reached from any readable record (it may "
                     "be the storage of a directory reported above); kept")
            return
        self.result.orphans += 1
        what = "orphaned directory storage (no directory record names it: an interrupted " \
               "mkdir, rmdir or rename over a directory)"
        try:
            entries = await self.backend.scandir(storage)
        except OSError as exc:
            self.problem(where, f"{what}; cannot list it: {exc}")
            return
        names = {entry for entry, _ in entries}
        kept = [entry for entry, st in entries
                if not await self._is_leftover(storage, entry, st, names)]
        if kept:
            self.problem(where, f"{what}, holding {_entries(len(kept))} a reader would show "
                                "(kept: they may be another client's work)")
        else:
            await self._safe(where, what, lambda: self._remove_orphan(storage, entries),
                             "removed orphaned directory storage")

    async def _is_leftover(self, storage: str, entry: str, st: BackendStat,
                           names: set[str]) -> bool:
        """What an interrupted operation leaves in a storage (FORMAT.md 9.2): sealfs.tmp.* /
        sealfs.del.* files, a sealfs.tmp.* stub holding at most its record, a long-name
        sidecar whose entry is gone."""
        if st.foreign:
            return False
        if entry.startswith(TEMP_PREFIX) and st.is_dir:
            try:
                inside = await self.backend.listdir(join(storage, entry))
            except OSError:
                return False
            return all(name == DIR_META_NAME for name in inside)
        if st.is_dir:
            return False
        if entry.startswith(TEMP_PREFIX) or entry.startswith(HIDDEN_PREFIX):
            return True
        return is_sidecar(entry) and entry_of_sidecar(entry) not in names

    async def _remove_orphan(self, storage: str,
                             entries: list[tuple[str, BackendStat]]) -> None:
        for entry, st in entries:
            await self._remove_tree(join(storage, entry), st.is_dir)
        await self.backend.rmdir(storage)

    async def _planted(self, bpath: str, what: str) -> None:
        """Someone wrote into the store: a problem even once removed (fsck exits 4), and
        --repair removes the entry itself so journals work again."""
        where = self._where(None, bpath)
        hint = "" if self.repair else " (fsck --repair removes the entry itself)"
        self.problem(where, f"{what}, not written by sealfs: planted in the store{hint}")
        if not self.repair:
            return
        try:
            await self._remove_entry(bpath)
        except OSError as exc:
            self.problem(where, f"removing it failed: {exc}")
            return
        self.repaired(where, "removed the planted entry itself (nothing it points to)")

    async def _remove_entry(self, bpath: str) -> None:
        """Remove one planted entry: a symlink or special file is unlinked as itself."""
        st = await self.backend.stat(bpath)
        await self._remove_tree(bpath, st.is_dir and not st.foreign)

    async def _remove_tree(self, bpath: str, is_dir: bool) -> None:
        if not is_dir:
            await self.backend.unlink(bpath)
            return
        for entry, bstat in await self.backend.scandir(bpath):
            await self._remove_tree(join(bpath, entry), bstat.is_dir)
        await self.backend.rmdir(bpath)

    # -- extended attributes ---------------------------------------------------------------
    async def _check_xattrs(self, kind: bytes, ident: bytes, meta: Metadata, where: str) -> None:
        """An inode's blob, if its flag says it has one (once per inode: hard links)."""
        bpath = self.vol.xattrs.path(kind, ident)
        if not meta.has_xattrs or bpath in self.blobs:
            return
        self.blobs.add(bpath)
        try:
            await self.vol.xattrs.read(kind, ident)
        except IntegrityError as exc:
            self.problem(where, f"extended attributes: {_strip(exc, bpath)} (ciphertext path "
                                f"{self.backend.location.rstrip('/')}/{bpath})")

    async def _check_blob_area(self) -> None:
        """x/: blobs no inode claims (orphans), leftovers, and what sealfs never writes."""
        try:
            fanouts = await self.backend.scandir(XATTR_DIR)
        except FileNotFoundError:
            return
        for fan, fstat in sorted(fanouts):
            fan_path = join(XATTR_DIR, fan)
            if not fstat.is_dir or fstat.foreign:
                self.problem(self._where(None, fan_path), "not written by sealfs")
                continue
            for entry, bstat in sorted(await self.backend.scandir(fan_path)):
                child = join(fan_path, entry)
                here = self._where(None, child)
                if bstat.is_dir or bstat.foreign:
                    self.problem(here, "not written by sealfs")
                elif entry.startswith(TEMP_PREFIX):
                    await self._safe(here, "leftover of an interrupted xattr update",
                                     lambda c=child: self.backend.unlink(c), "removed leftover")
                elif not is_blob_path(child):
                    self.problem(here, "not written by sealfs")
                elif child not in self.blobs:
                    await self._safe(here, "orphaned xattr blob (no inode has it)",
                                     lambda c=child: self.backend.unlink(c),
                                     "removed orphaned xattr blob")

    # -- files -------------------------------------------------------------------------------
    async def _check_file(self, bpath: str, where: str, stored: int, note: str = "") -> None:
        self.result.files += 1
        cs = self.vol.chunk_size
        try:
            handle = await self.backend.open(bpath)
        except OSError as exc:
            self.problem(where, f"cannot open: {exc}")
            return
        try:
            if stored < HEADER_SIZE:
                self.problem(where, f"file header truncated ({stored} of {HEADER_SIZE} bytes)"
                                    f"{note}")
                return
            try:
                header, dek = await self.vol.headers.open_header(handle, bpath)
            except (IntegrityError, KeyAccessError) as exc:
                self.problem(where, f"file header: {_strip(exc, bpath)}{note}")
                return
            await self._check_xattrs(KIND_FILE, header.file_id, header.meta, where)
            cipher = ChunkCipher(file_key(dek, header.file_id), header.file_id)
            if header.file_id in self.journals:
                self.journals.discard(header.file_id)
                await self._check_journal(bpath, where, header.file_id, cipher)
                stored = (await self.backend.fstat(handle)).size
            try:
                committed = await FileState.resolve_size(self.backend, handle, header, cipher,
                                                         cs, stored)
            except IntegrityError as exc:
                self.problem(where, f"{exc}; backend size {stored}")
                await self._scan_chunks(handle, where, cipher, stored, None)
                return
            await self._scan_chunks(handle, where, cipher, stored, committed)
        finally:
            await self.backend.close(handle)
        extent = stored_size(committed, cs)
        if stored > extent:
            async def cut() -> None:
                h = await self.backend.open(bpath, write=True)
                try:
                    await self.backend.truncate(h, extent)
                    await self.backend.flush(h)
                finally:
                    await self.backend.close(h)
            await self._safe(where, f"uncommitted tail of {stored - extent} bytes after the "
                                    f"committed size {committed}",
                             cut, f"cut uncommitted tail of {stored - extent} bytes")

    async def _check_journal(self, bpath: str, where: str, file_id: bytes,
                             cipher: ChunkCipher) -> None:
        """A journal left by a flush that never finished (fs/core/journal.py): the chunks it
        tore are restored from it, the first thing a mount would do on opening the file."""
        cs = self.vol.chunk_size
        handle = await self.backend.open(bpath)
        try:
            torn = await recover_journal(self.backend, handle, file_id, cipher, cs, apply=False)
        finally:
            await self.backend.close(handle)

        async def replay() -> None:
            h = await self.backend.open(bpath, write=True)
            try:
                await recover_journal(self.backend, h, file_id, cipher, cs)
                await self.backend.flush(h)
            finally:
                await self.backend.close(h)

        if torn:
            await self._safe(where, f"{torn} chunk(s) torn by an interrupted write, "
                                    f"restorable from its write journal",
                             replay, f"restored {torn} torn chunk(s) from the write journal")
        else:
            await self._safe(where, "leftover write journal of an interrupted write",
                             replay, "removed spent write journal")

    async def _scan_chunks(self, handle, where: str, cipher: ChunkCipher, stored: int,
                           committed: int | None) -> None:
        """Verify every chunk; with committed None (no valid final chunk), the chunks that
        are present are checked as non-final ones so damage elsewhere is listed too."""
        cs = self.vol.chunk_size
        slot = cs + CHUNK_OVERHEAD
        if committed is None:
            count = max(0, (stored - HEADER_SIZE) // slot)       # complete slots only
            size = count * cs
            final = -1
        else:
            count = chunk_count(committed, cs)
            size = committed
            final = count - 1
        per_read = max(1, READ_BLOCK // slot)
        bad: list[int] = []
        for first in range(0, count, per_read):
            last = min(count, first + per_read)
            start = slot_offset(first, cs)
            end = slot_offset(last - 1, cs) + chunk_plain_length(last - 1, size, cs) + CHUNK_OVERHEAD
            data = memoryview(await self.backend.read(handle, start, end - start))
            for i in range(first, last):
                lo = slot_offset(i, cs) - start
                sealed = data[lo:lo + chunk_plain_length(i, size, cs) + CHUNK_OVERHEAD]
                if len(sealed) < CHUNK_OVERHEAD:
                    bad.append(i)
                    continue
                if i != final and sealed[:NONCE_SIZE] == bytes(NONCE_SIZE) \
                        and sealed == bytes(len(sealed)):
                    continue                                   # a hole
                if not cipher.verifies(i, sealed, i == final):
                    bad.append(i)
        for i in bad[:MAX_CHUNK_LINES]:
            self.problem(where, f"chunk {i} failed authentication")
        if len(bad) > MAX_CHUNK_LINES:
            self.problem(where, f"{len(bad) - MAX_CHUNK_LINES} more chunks failed authentication")


def _entries(n: int) -> str:
    return "1 entry" if n == 1 else f"{n} entries"


def _fanout_name(name: str) -> bool:
    return len(name) == LOCATOR_SPLIT and set(name) <= set("abcdefghijklmnopqrstuvwxyz234567")


def _strip(exc: BaseException, bpath: str) -> str:
    text = str(exc)
    prefix = f"{bpath}: "
    return text[len(prefix):] if text.startswith(prefix) else text


async def fsck_volume(volume: Volume, repair: bool = False,
                      out: Callable[[str], None] = print) -> FsckResult:
    return await Fsck(volume, repair, out).run()
