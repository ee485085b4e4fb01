"""The SMB backend itself: the Backend interface on top of the channels and the handle
table. It maps store paths to share paths, sends the requests each operation is made
of (one compound where the server allows it), keeps a rename's critical section on names
(_renaming), and refines SMB's errors into the errno a local filesystem gives.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import struct
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import (
    FileDispositionInformation,
    FileEndOfFileInformation,
    FileInformationClass,
    FileLinkInformation,
    FileRenameInformation,
    InfoType,
)
from smbprotocol.header import NtStatus
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    SMB2FlushRequest,
    SMB2QueryDirectoryRequest,
    SMB2QueryDirectoryResponse,
    SMB2ReadResponse,
)
from smbprotocol.open import (
    FilePipePrinterAccessMask as Access,
)

from ..base import Backend, BackendError, BackendStat, BackendStatvfs, Capabilities, Handle
from .channel import Channel, ConnectionLost
from .config import SmbSettings, SmbTarget
from .handles import HandleTable, SmbHandle
from .messages import (
    DIR_LIST_ACCESS,
    READ_ACCESS,
    RELATED_FID,
    WRITE_ACCESS,
    NameNotFound,
    check_written,
    close_msg,
    create_msg,
    cut_spans,
    merge_ranges,
    parse_create,
    parse_dir_entries,
    query_buffer,
    query_msg,
    read_msg,
    setinfo_msg,
    stat_from_infos,
    stat_queries,
    times_info,
    write_msg,
    write_requests,
)
from .snapshots import SmbSnapshotOps, gmt_ns
from .wire import GatheredWrite

T = TypeVar("T")


def _overlaps(path: str, src: str, dst: str) -> bool:
    """Whether a rename of src to dst moves path (below src) or replaces it (dst, below)."""
    return path.startswith(src + "/") or path == dst or path.startswith(dst + "/")


class SmbBackend(SmbSnapshotOps, Backend):
    """Encrypted SMB 3 storage: Samba or Azure Files. See the package docstring."""

    def __init__(self, target: SmbTarget, password: Callable[[], str | None] | None = None,
                 settings: SmbSettings | None = None) -> None:
        self.target = target
        self.settings = settings or SmbSettings()
        self.location = target.location
        self._password_source = password
        self._password_value: str | None = None
        self._password_loaded = False
        self._password_lock = threading.Lock()
        self._generations = itertools.count(1)
        self._channels = [Channel(target, self.settings, i, self._password, self._generations)
                          for i in range(max(1, self.settings.connections))]
        self._next_channel = itertools.cycle(range(len(self._channels)))
        self._limiter = trio.CapacityLimiter(max(2, self.settings.threads))
        self._base = target.path.replace("/", "\\")
        self._handles = HandleTable(self._channels, self.settings, self._smb_path, target.where,
                                    self._io, self._run)
        # Renames in progress, as (src, dst, renaming task, gate), and the work in flight
        # on names that one must not overlap (see _renaming).
        self._moving: list[tuple[str, str, Any, trio.Event]] = []
        self._inflight: dict[int, str | SmbHandle] = {}
        self._tokens = itertools.count()
        self._settled: trio.Event | None = None
        hard_links = self.settings.hard_links
        if hard_links is None:  # Azure Files supports hard links only on NFS shares
            hard_links = not target.host.lower().endswith(".file.core.windows.net")
        self.capabilities = Capabilities(case_insensitive=True, max_name_length=255, hard_links=hard_links,
                                         unlink_open_files=False,
                                         stamps_write_time_on_close=True,
                                         real_change_time=False, dir_link_counts=False,
                                         time_resolution_ns=100)

    @classmethod
    def from_url(cls, store: str, options: Any = None) -> SmbBackend:
        """Build from a STORE URL and BackendOptions (password callable, extra["smb_*"])."""
        target = SmbTarget.parse(store)
        password = getattr(options, "smb_password", None) if options is not None else None
        extra = getattr(options, "extra", None) or {}
        settings = SmbSettings.from_extra(extra)
        snapshot = getattr(options, "snapshot", None)
        if snapshot:
            gmt_ns(snapshot)                  # a malformed token is refused before connecting
            settings.snapshot = snapshot
        return cls(target, password, settings)

    def _password(self) -> str | None:
        """Ask the callable once, at first connect (never earlier, never logged)."""
        with self._password_lock:
            if not self._password_loaded:
                self._password_value = self._password_source() if self._password_source else None
                self._password_loaded = True
            return self._password_value

    # -- plumbing ----------------------------------------------------------------------------
    def _smb_path(self, path: str) -> str:
        if path.startswith("/") or "\\" in path:
            raise OSError(errno.EINVAL, "bad backend path", path)
        rel = path.replace("/", "\\")
        if self._base:
            return f"{self._base}\\{rel}" if rel else self._base
        return rel

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _io(self, what: str | SmbHandle, fn: Callable[..., T], *args: Any) -> T:
        """_run for work that keeps a name open on the server (a handle's requests, a
        directory listing): it waits for a rename that moves or replaces that name, and
        such a rename waits for it (_renaming)."""
        if self._moving:
            await self._wait_moves(what)
        token = next(self._tokens)
        self._inflight[token] = what
        try:
            return await self._run(fn, *args)
        finally:
            del self._inflight[token]
            settled, self._settled = self._settled, None
            if settled is not None:
                settled.set()

    async def _wait_moves(self, what: str | SmbHandle) -> None:
        """Until no other task's rename moves or replaces what's name."""
        me = trio.lowlevel.current_task()
        while True:
            path = what.path if isinstance(what, SmbHandle) else what
            gate = next((g for src, dst, task, g in self._moving
                         if task is not me and _overlaps(path, src, dst)), None)
            if gate is None:
                return
            await gate.wait()

    @contextlib.asynccontextmanager
    async def _renaming(self, src: str, dst: str) -> AsyncIterator[None]:
        """The name-level critical section of a rename of src to dst.

        SMB servers refuse to rename a directory while a file below it is open (Samba
        when its own process, i.e. the same channel, has one open; Windows for any open)
        and to replace a file that is open. So meanwhile new work below src or on dst
        waits (_io, close), the work in flight there finishes, cached idle handles there
        close, and the handles the user holds open below src are closed on the server,
        to be reopened at their new path by their next request (HandleTable.park, .fid).
        """
        entry = (src, dst, trio.lowlevel.current_task(), trio.Event())
        self._moving.append(entry)
        try:
            while any(_overlaps(w.path if isinstance(w, SmbHandle) else w, src, dst)
                      for w in self._inflight.values()):
                if self._settled is None:
                    self._settled = trio.Event()
                await self._settled.wait()
            if self._handles.sweeping():
                await self._run(self._handles.evict_idle, (src, dst))
            below = [h for h in self._handles.open if not h.closed and h.path.startswith(src + "/")]
            if below:
                await self._run(self._handles.park, below)
            yield
        finally:
            self._moving.remove(entry)
            entry[3].set()

    def _channel(self) -> Channel:
        return self._channels[next(self._next_channel)]

    async def connect(self) -> None:
        """Connect every channel now (fail fast at mount); otherwise the first request does."""
        for channel in self._channels:
            await self._run(channel.ensure)

    @property
    def transport(self) -> str:
        return self.negotiated or "SMB 3 (not connected yet)"

    @property
    def negotiated(self) -> str:
        """What channel 0 negotiated, e.g. "SMB 3.1.1, cipher AES-256-GCM, ..." (after connect)."""
        return self._channels[0].info

    # -- files -------------------------------------------------------------------------------
    async def open(self, path: str, *, write: bool = False, create: bool = False,
                   exclusive: bool = False) -> SmbHandle:
        await self._handles.evict()  # expired cached handles only
        if self._moving:
            await self._wait_moves(path)
        if not (create and exclusive):
            cached = self._handles.take_idle(path, write)
            if cached is not None:
                self._handles.open.add(cached)
                return cached
        channel = self._channel()
        if create and exclusive:
            disposition = CreateDisposition.FILE_CREATE
        elif create:
            disposition = CreateDisposition.FILE_OPEN_IF
        else:
            disposition = CreateDisposition.FILE_OPEN
        access = WRITE_ACCESS if write else READ_ACCESS
        name = self._smb_path(path)

        def op() -> SmbHandle:
            resp = channel.call([create_msg(name, access, disposition,
                                            CreateOptions.FILE_NON_DIRECTORY_FILE)])[0]
            return SmbHandle(path, write, channel, parse_create(resp)["file_id"].get_value(),
                             channel.generation)

        try:
            handle = await self._io(path, channel.attempt, op, path,
                                    disposition != CreateDisposition.FILE_CREATE)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None
        self._handles.open.add(handle)
        return handle

    async def create_file(self, path: str, data: bytes) -> SmbHandle:
        """CREATE and WRITE in one related compound: one round trip per new file."""
        if not data or len(data) > self._channels[0].io_size(read=False):
            return await super().create_file(path, data)   # one request could not carry it
        await self._handles.evict()
        channel = self._channel()
        name = self._smb_path(path)
        payload = bytes(data)

        def op() -> SmbHandle:
            create, write = channel.send([
                create_msg(name, WRITE_ACCESS, CreateDisposition.FILE_CREATE,
                            CreateOptions.FILE_NON_DIRECTORY_FILE),
                write_msg(RELATED_FID, 0, payload)], True)
            try:
                fid = parse_create(channel.receive(create))["file_id"].get_value()
            except SMBResponseException:
                try:                                # the WRITE failed with it: drain it
                    channel.receive(write)
                except SMBResponseException:
                    pass
                raise
            handle = SmbHandle(path, True, channel, fid, channel.generation)
            handle.wrote = True
            try:
                check_written(channel.receive(write), len(payload), path)
            except BaseException:
                try:
                    channel.call([close_msg(fid)])
                except (SMBResponseException, ConnectionLost):
                    pass
                raise
            return handle

        try:
            handle = await self._io(path, channel.attempt, op, path, False)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None
        self._handles.open.add(handle)
        return handle

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        return (await self.read_many(handle, [(offset, size)]))[0]

    async def read_many(self, handle: Handle, reads: list[tuple[int, int]]) -> list[bytes]:
        return [b"".join(pieces) for pieces in await self.read_many_pieces(handle, reads)]

    async def read_many_pieces(self, handle: Handle,
                               reads: list[tuple[int, int]]) -> list[list[memoryview]]:
        """Pipelined READs on the handle's channel; when other reads of the same handle
        are in flight already, on a sibling on another channel (one stream per
        connection is what bounds a sequential reader: two receive threads, two smbd).
        Each result is views of the decrypted READ responses, not joined."""
        assert isinstance(handle, SmbHandle)
        if not reads:
            return []
        route = handle if not handle.reading else await self._handles.read_route(handle)
        route.reading += 1
        try:
            return await self._read_pieces_on(route, reads)
        except OSError:
            if route is handle:
                raise
            # e.g. its channel failed: the handle's own may not. Reads are idempotent.
            if route in handle.readers:
                handle.readers.remove(route)
            handle.spread = False
            await self._run(self._handles.close_now, route)
            return await self.read_many_pieces(handle, reads)
        finally:
            route.reading -= 1

    async def _read_pieces_on(self, handle: SmbHandle,
                              reads: list[tuple[int, int]]) -> list[list[memoryview]]:
        channel = handle.channel

        def op() -> list[list[memoryview]]:
            fid = self._handles.fid(handle)
            piece = channel.io_size(read=True)
            # Adjacent small reads (64 KiB chunks) become one request each io_size: the
            # per-message cost in Python, not the wire, is what limits small pieces.
            spans = merge_ranges(reads)
            msgs, layout = [], []
            for offset, size in spans:
                starts = range(offset, offset + size, piece)
                msgs.extend(read_msg(fid, start, min(piece, offset + size - start)) for start in starts)
                layout.append(len(starts))
            datas = channel.pipeline_reads(msgs)
            got: list[tuple[int, list[memoryview]]] = []
            k = 0
            for (offset, size), n in zip(spans, layout, strict=True):
                pieces = []
                for j in range(n):
                    pieces.append(datas[k + j])
                    if len(datas[k + j]) < min(piece, size - j * piece):
                        break  # end of file: later pieces of this span are past it
                got.append((offset, pieces))
                k += n
            return [cut_spans(got, offset, size) for offset, size in reads]

        return await self._io(handle, channel.attempt, op, handle.path, True)

    def untearable(self, start: int, end: int) -> bool:
        """A write() no larger than one WRITE request goes as one message, and the server
        applies a message whole or not at all (an encrypted message cut short by a dying
        client does not even decrypt)."""
        return 0 < end - start <= self._channels[0].io_size(read=False)

    async def write(self, handle: Handle, offset: int, data: bytes | memoryview) -> None:
        await self.write_many(handle, [(offset, data)])

    async def write_many(self, handle: Handle, writes: list[tuple[int, bytes]]) -> None:
        assert isinstance(handle, SmbHandle)
        if not writes:
            return
        channel = handle.channel

        def op() -> None:
            fid = self._handles.fid(handle)
            handle.wrote = True
            msgs = [GatheredWrite(fid, offset, segments) for offset, segments
                    in write_requests(writes, channel.io_size(read=False))]
            for resp, msg in zip(channel.pipeline(msgs), msgs, strict=True):
                check_written(resp, msg.length, handle.path)

        await self._io(handle, channel.attempt, op, handle.path, True)

    async def truncate(self, handle: Handle, size: int) -> None:
        assert isinstance(handle, SmbHandle)
        channel = handle.channel

        def op() -> None:
            info = FileEndOfFileInformation()
            info["end_of_file"] = size
            fid = self._handles.fid(handle)
            handle.wrote = True
            channel.call([setinfo_msg(fid, info)])

        await self._io(handle, channel.attempt, op, handle.path, True)

    async def fset_times(self, handle: Handle, atime_ns: int | None, mtime_ns: int) -> None:
        """Times set through the writing handle stick: later writes and the close on that
        handle no longer stamp their own write time (MS-FSA), unlike a path-based set."""
        assert isinstance(handle, SmbHandle)
        channel = handle.channel

        def op() -> None:
            channel.call([setinfo_msg(self._handles.fid(handle), times_info(atime_ns, mtime_ns))])

        await self._io(handle, channel.attempt, op, handle.path, True)

    async def rewrite_head(self, path: str, data: bytes, atime_ns: int, mtime_ns: int) -> None:
        """CREATE, WRITE, SET_INFO (times, through the handle: the close stamps nothing)
        and CLOSE in one compound."""
        await self._handles.evict(path)  # a deferred close would stamp its own write time afterwards
        name = self._smb_path(path)

        def msgs() -> list[Any]:
            return [create_msg(name, WRITE_ACCESS, CreateDisposition.FILE_OPEN,
                                CreateOptions.FILE_NON_DIRECTORY_FILE),
                    write_msg(RELATED_FID, 0, data),
                    setinfo_msg(RELATED_FID, times_info(atime_ns, mtime_ns)),
                    close_msg(RELATED_FID)]

        try:
            await self._run(self._path_op, path, msgs, True)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None

    async def flush(self, handle: Handle) -> None:
        assert isinstance(handle, SmbHandle)
        channel = handle.channel

        def op() -> None:
            msg = SMB2FlushRequest()
            msg["file_id"] = self._handles.fid(handle)
            channel.call([msg])

        await self._io(handle, channel.attempt, op, handle.path, True)

    async def close(self, handle: Handle) -> None:
        assert isinstance(handle, SmbHandle)
        if handle.closed:
            return
        if self._moving:
            await self._wait_moves(handle)   # not into the idle cache under a moving name
            if handle.closed:
                return
        if self._handles.put_idle(handle):
            return
        handle.closed = True
        await self._io(handle, self._handles.close_now, handle)   # a rename waits for this close

    async def fstat(self, handle: Handle) -> BackendStat:
        assert isinstance(handle, SmbHandle)
        channel = handle.channel

        def op() -> BackendStat:
            fid = self._handles.fid(handle)
            resps = channel.call(stat_queries(fid))
            return stat_from_infos(*[query_buffer(r) for r in resps])

        return await self._io(handle, channel.attempt, op, handle.path, True)

    # -- namespace ---------------------------------------------------------------------------------
    def _path_op(self, path: str, messages: Callable[[], list[Any]], idempotent: bool,
                 related: bool = True) -> list[Any]:
        channel = self._channels[0]
        return channel.attempt(lambda: channel.call(messages(), related=related), path, idempotent)

    async def stat(self, path: str) -> BackendStat:
        name = self._smb_path(path)

        def msgs() -> list[Any]:
            return [
                create_msg(name, Access.FILE_READ_ATTRIBUTES, CreateDisposition.FILE_OPEN,
                            CreateOptions.FILE_OPEN_REPARSE_POINT),
                *stat_queries(RELATED_FID),
                close_msg(RELATED_FID),
            ]

        try:
            resps = await self._run(self._path_op, path, msgs, True)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None
        return stat_from_infos(*[query_buffer(r) for r in resps[1:4]])

    async def read_head(self, path: str, size: int) -> tuple[bytes, BackendStat]:
        """CREATE, three QUERY_INFOs, READ and CLOSE in one compound: one round trip."""
        name = self._smb_path(path)
        channel = self._channels[0]

        def op() -> tuple[bytes, BackendStat]:
            fid = RELATED_FID
            msgs = [
                create_msg(name, READ_ACCESS, CreateDisposition.FILE_OPEN,
                           CreateOptions.FILE_NON_DIRECTORY_FILE),
                *stat_queries(fid),
                read_msg(fid, 0, size),
                close_msg(fid),
            ]
            # An empty file answers the READ with END_OF_FILE, which is no error here.
            resps = channel.call(msgs, related=True, tolerate={4: NtStatus.STATUS_END_OF_FILE})
            data = b""
            if resps[4] is not None:
                r = SMB2ReadResponse()
                r.unpack(resps[4]["data"].get_value())
                data = r["buffer"].get_value()
            return data, stat_from_infos(*[query_buffer(r) for r in resps[1:4]])

        try:
            return await self._run(channel.attempt, op, path, True)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None

    async def listdir(self, path: str) -> list[str]:
        return [name for name, _ in await self._scan(path)]

    async def scandir(self, path: str) -> list[tuple[str, BackendStat]]:
        """One QUERY_DIRECTORY pass gives names, sizes, times and file ids, but no link
        counts (nlink is None): SMB directory information classes have no such field."""
        return await self._scan(path)

    async def _scan(self, path: str) -> list[tuple[str, BackendStat]]:
        name = self._smb_path(path)
        channel = self._channels[0]

        def op() -> list[tuple[str, BackendStat]]:
            resp = channel.call([create_msg(name, DIR_LIST_ACCESS, CreateDisposition.FILE_OPEN,
                                             CreateOptions.FILE_DIRECTORY_FILE)])[0]
            fid = parse_create(resp)["file_id"].get_value()
            out: list[tuple[str, BackendStat]] = []
            try:
                flags = 0x01  # SMB2_RESTART_SCANS
                while True:
                    q = SMB2QueryDirectoryRequest()
                    q["file_information_class"] = FileInformationClass.FILE_ID_FULL_DIRECTORY_INFORMATION
                    q["flags"] = flags
                    q["file_id"] = fid
                    q["buffer"] = "*".encode("utf-16-le")
                    q["output_buffer_length"] = 65536
                    flags = 0
                    try:
                        r = channel.call([q])[0]
                    except SMBResponseException as exc:
                        if exc.status == NtStatus.STATUS_NO_MORE_FILES:
                            break
                        raise
                    qr = SMB2QueryDirectoryResponse()
                    qr.unpack(r["data"].get_value())
                    out.extend(parse_dir_entries(qr["buffer"].get_value()))
            finally:
                try:
                    channel.call([close_msg(fid)])
                except (SMBResponseException, ConnectionLost):
                    pass
            return out

        try:
            return await self._io(path, channel.attempt, op, path, True)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None

    async def make_root(self) -> None:
        parts = [p for p in self._base.split("\\") if p]
        for k in range(1, len(parts) + 1):
            name = "\\".join(parts[:k])

            def msgs(name: str = name) -> list[Any]:
                return [create_msg(name, Access.FILE_READ_ATTRIBUTES, CreateDisposition.FILE_OPEN_IF,
                                    CreateOptions.FILE_DIRECTORY_FILE), close_msg(RELATED_FID)]

            await self._run(self._path_op, name.replace("\\", "/"), msgs, True)

    async def mkdir(self, path: str) -> None:
        name = self._smb_path(path)

        def msgs() -> list[Any]:
            return [create_msg(name, Access.FILE_READ_ATTRIBUTES, CreateDisposition.FILE_CREATE,
                                CreateOptions.FILE_DIRECTORY_FILE), close_msg(RELATED_FID)]

        try:
            await self._run(self._path_op, path, msgs, False)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None

    async def rmdir(self, path: str) -> None:
        await self._handles.evict(path)
        await self._delete(path, CreateOptions.FILE_DIRECTORY_FILE)

    async def unlink(self, path: str) -> None:
        # Handles on this name are closed for real from now on (a close racing with this
        # unlink must not park one in the idle cache, where it would keep the name in
        # delete-pending state until it expires). Then every idle handle goes, not just
        # this path's: one on another hard link of the same file would do the same.
        for handle in list(self._handles.open):
            if handle.path == path:
                handle.unlinked = True
        if self._handles.sweeping():
            await self._run(self._handles.evict_idle, (), True)
        await self._delete(path,
                           CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_OPEN_REPARSE_POINT)

    async def _delete(self, path: str, options: int) -> None:
        name = self._smb_path(path)

        def msgs() -> list[Any]:
            disp = FileDispositionInformation()
            disp["delete_pending"] = True
            return [create_msg(name, Access.DELETE | Access.FILE_READ_ATTRIBUTES, CreateDisposition.FILE_OPEN,
                                options),
                    setinfo_msg(RELATED_FID, disp), close_msg(RELATED_FID)]

        try:
            await self._run(self._path_op, path, msgs, False)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None

    async def _renamed(self, src: str, dst: str, replace: bool, query: bool) -> list[Any]:
        """One compound: open src, rename it to dst, (query it,) close. FileExistsError
        names dst; a missing src is refined as for any path."""
        src_name, dst_name = self._smb_path(src), self._smb_path(dst)

        def msgs() -> list[Any]:
            info = FileRenameInformation()
            info["replace_if_exists"] = replace
            info["file_name"] = dst_name.encode("utf-16-le")
            return [create_msg(src_name, Access.DELETE | Access.FILE_READ_ATTRIBUTES,
                               CreateDisposition.FILE_OPEN, CreateOptions.FILE_OPEN_REPARSE_POINT),
                    setinfo_msg(RELATED_FID, info),
                    *(stat_queries(RELATED_FID) if query else []), close_msg(RELATED_FID)]

        try:
            return await self._run(self._path_op, src, msgs, False)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, src) from None
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
            raise

    async def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        async with self._renaming(src, dst):
            try:
                await self._renamed(src, dst, replace, query=False)
            except OSError as exc:
                if replace and exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EACCES):
                    await self._rename_over_dir(src, dst, exc)
                    return
                raise
            self._handles.follow_rename(src, dst)

    async def place_new(self, handle: Handle, src: str, dst: str) -> BackendStat:
        """The rename and the stat in one compound: open src, rename it, query it, close."""
        async with self._renaming(src, dst):
            resps = await self._renamed(src, dst, False, query=True)
            self._handles.follow_rename(src, dst)
        return stat_from_infos(*[query_buffer(r) for r in resps[2:5]])

    async def _rename_over_dir(self, src: str, dst: str, exc: OSError) -> None:
        """SMB will not replace a directory; POSIX replaces an empty one. Mirror POSIX."""
        try:
            dst_st = await self.stat(dst)
        except FileNotFoundError:
            raise exc from None
        if not dst_st.is_dir:
            raise exc
        src_st = await self.stat(src)
        if not src_st.is_dir:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), dst)
        if await self.listdir(dst):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), dst)
        await self.rmdir(dst)
        await self.rename(src, dst, replace=False)

    async def link(self, src: str, dst: str) -> None:
        if not self.capabilities.hard_links:
            raise PermissionError(errno.EPERM, "hard links are not supported by this SMB server", dst)
        src_name, dst_name = self._smb_path(src), self._smb_path(dst)

        def msgs() -> list[Any]:
            info = FileLinkInformation()
            info["replace_if_exists"] = False
            info["file_name"] = dst_name.encode("utf-16-le")
            return [create_msg(src_name, Access.FILE_READ_ATTRIBUTES, CreateDisposition.FILE_OPEN,
                                CreateOptions.FILE_NON_DIRECTORY_FILE),
                    setinfo_msg(RELATED_FID, info), close_msg(RELATED_FID)]

        try:
            await self._run(self._path_op, src, msgs, False)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, src) from None
        except IsADirectoryError:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), src) from None
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                raise PermissionError(errno.EPERM, "hard links are not supported by this SMB server",
                                      dst) from None
            raise

    async def set_times(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        await self._handles.evict(path)  # a deferred close would stamp its own write time afterwards
        name = self._smb_path(path)

        def msgs() -> list[Any]:
            info = times_info(atime_ns, mtime_ns)
            return [create_msg(name, Access.FILE_WRITE_ATTRIBUTES | Access.FILE_READ_ATTRIBUTES,
                                CreateDisposition.FILE_OPEN, CreateOptions.FILE_OPEN_REPARSE_POINT),
                    setinfo_msg(RELATED_FID, info), close_msg(RELATED_FID)]

        try:
            await self._run(self._path_op, path, msgs, True)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None

    async def statvfs(self) -> BackendStatvfs:
        name = self._smb_path("")

        def msgs() -> list[Any]:
            return [create_msg(name, Access.FILE_READ_ATTRIBUTES, CreateDisposition.FILE_OPEN,
                                CreateOptions.FILE_DIRECTORY_FILE),
                    query_msg(RELATED_FID, InfoType.SMB2_0_INFO_FILESYSTEM, 7, 32),    # FullSize
                    query_msg(RELATED_FID, InfoType.SMB2_0_INFO_FILESYSTEM, 5, 1024),  # Attribute
                    close_msg(RELATED_FID)]

        resps = await self._run(self._path_op, "", msgs, True)
        full = query_buffer(resps[1])
        total, caller_avail, actual_avail, sectors, sector_bytes = struct.unpack_from("<qqqII", full)
        attr = query_buffer(resps[2])
        max_name = struct.unpack_from("<i", attr, 4)[0] if len(attr) >= 8 else 255
        block = sectors * sector_bytes
        return BackendStatvfs(block_size=block, blocks=total, blocks_free=actual_avail,
                              blocks_available=caller_avail, files=0, files_free=0,
                              max_name_length=min(max_name, 255))

    async def aclose(self) -> None:
        await self._run(self._handles.evict_idle, (), True)
        for channel in self._channels:
            await self._run(channel.close)

    # -- errno fidelity on error paths only -------------------------------------------------------
    async def _refine_enoent(self, exc: FileNotFoundError, path: str) -> OSError:
        """SMB says "path not found" where POSIX says ENOTDIR (a parent is a file)."""
        if isinstance(exc, NameNotFound):
            return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        parts = path.split("/")
        prefix = ""
        for comp in parts[:-1]:
            prefix = f"{prefix}/{comp}" if prefix else comp
            try:
                st = await self.stat_quiet(prefix)
            except BackendError:
                break
            if st is None:
                break
            if not st.is_dir:
                return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)

    async def stat_quiet(self, path: str) -> BackendStat | None:
        try:
            return await self.stat(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
