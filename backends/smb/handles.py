"""The handles: open files on a channel, the backend's table of them, its cache of recently
closed ones, and reads spread over sibling handles on the other channels.

SMB keeps a name busy while a handle on it is open (a rename or delete of it, or of a
directory above it, is refused), so the table knows every open handle by the path it
would reopen by, and closes or parks them when a rename or an unlink needs the name.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileBasicInformation, FileInformationClass, InfoType
from smbprotocol.open import CreateDisposition, CreateOptions

from ..base import BackendError, Handle
from .channel import Channel, ConnectionLost
from .config import SmbSettings
from .messages import (
    READ_ACCESS,
    WRITE_ACCESS,
    change_mark,
    close_msg,
    create_msg,
    parse_create,
    query_buffer,
    query_msg,
    setinfo_msg,
)

log = logging.getLogger("sealfs.smb")

PARKED = 0   # SmbHandle.generation while closed for a rename: no live channel has it


class SmbHandle(Handle):
    """An open file on one channel; reopened by path if its channel reconnected.

    Reads that overlap (a reader's read-ahead) spread over the backend's channels: the
    handle lazily gains read-only siblings, the same file opened on the other channels,
    which live and die with it (closed with it, cached idle with it, renamed with it).
    """

    __slots__ = ("path", "writable", "channel", "fid", "generation", "closed", "unlinked",
                 "readers", "reading", "file_index", "spread", "wrote")

    def __init__(self, path: str, writable: bool, channel: Channel, fid: bytes, generation: int) -> None:
        self.path = path
        self.writable = writable
        self.channel = channel
        self.fid = fid
        self.generation = generation
        self.closed = False
        self.unlinked = False     # its name is gone: never cache it for a reopen by path
        self.readers: list[SmbHandle] = []   # read-only siblings on other channels
        self.reading = 0          # read_many calls in flight (counted on the event loop)
        self.file_index: int | None = None   # the server's file id, once asked
        self.spread = True        # False: a sibling could not be opened; don't try again
        self.wrote = False        # written through: its close would stamp the write time


class HandleTable:
    """The backend's open handles and its idle ones (closed by the caller, kept open on the
    server for a quick reopen of the same path).

    The blocking methods run in worker threads. ``io`` and ``run`` are the backend's ways to
    run blocking work from the event loop: ``io`` for work on a name, which waits for a
    rename that moves it; ``run`` for the rest.
    """

    def __init__(self, channels: list[Channel], settings: SmbSettings, smb_path: Callable[[str], str],
                 where: str, io: Callable[..., Awaitable[Any]], run: Callable[..., Awaitable[Any]]) -> None:
        self.channels = channels
        self.settings = settings
        self._smb_path = smb_path
        self._where = where
        self._io = io
        self._run = run
        self.open: weakref.WeakSet[SmbHandle] = weakref.WeakSet()
        self._idle: collections.OrderedDict[int, tuple[SmbHandle, float]] = collections.OrderedDict()
        self._idle_lock = threading.Lock()
        self._evict_lock = threading.Lock()   # held by a sweep until its closes are done
        self._reopen_lock = threading.Lock()

    # -- open handles ------------------------------------------------------------------------------
    def fid(self, handle: SmbHandle) -> bytes:
        """The handle's file id on the live channel, reopening it after a reconnect."""
        if handle.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF), handle.path)
        channel = handle.channel
        if handle.generation == channel.generation:
            return handle.fid
        with self._reopen_lock:  # two requests on one handle must not both reopen it
            if handle.generation == channel.generation:
                return handle.fid
            access = WRITE_ACCESS if handle.writable else READ_ACCESS
            resp = channel.call([create_msg(self._smb_path(handle.path), access, CreateDisposition.FILE_OPEN,
                                            CreateOptions.FILE_NON_DIRECTORY_FILE)])[0]
            handle.fid = parse_create(resp)["file_id"].get_value()
            parked = handle.generation == PARKED
            handle.generation = channel.generation
            handle.wrote = False
            if not parked:
                log.info("%s: reopened %s after reconnect", self._where, handle.path)
            return handle.fid

    def close_now(self, handle: SmbHandle) -> None:
        """Close on the server if the handle's connection is still the one it was opened on
        (and its siblings with it)."""
        handle.closed = True
        readers, handle.readers = handle.readers, []
        for reader in readers:
            self.close_now(reader)
        channel = handle.channel
        if handle.generation != channel.generation or channel.conn is None:
            return
        try:
            channel.call([close_msg(handle.fid)])
        except (SMBResponseException, ConnectionLost, BackendError):
            pass  # the server drops it with the connection anyway

    def park(self, handles: list[SmbHandle]) -> None:
        """Close open handles on the server; each reopens by path on its next request.
        Read-only siblings just close (new ones open when reads overlap again)."""
        for handle in handles:
            readers, handle.readers = handle.readers, []
            for reader in readers:
                self.close_now(reader)
            channel = handle.channel
            if handle.closed or handle.generation != channel.generation or channel.conn is None:
                continue    # closed, or its file id died with a connection: reopens anyway
            try:
                if handle.wrote:
                    self._pin_times(handle)
                channel.call([close_msg(handle.fid)])
            except (SMBResponseException, ConnectionLost, BackendError) as exc:
                log.debug("%s: closing before a rename: %s", handle.path, exc)
            handle.generation = PARKED

    def _pin_times(self, handle: SmbHandle) -> None:
        """A server stamps its own write time when a handle that wrote closes (MS-FSA);
        times set through the handle first stick, so the close changes nothing. The
        write time stays as it is now, the change mark moves (messages.py)."""
        resp = handle.channel.call([query_msg(handle.fid, InfoType.SMB2_0_INFO_FILE,
                                              FileInformationClass.FILE_BASIC_INFORMATION, 40)])[0]
        _ctime, _mark, mtime, _change, _attrs = struct.unpack_from("<QQQQI", query_buffer(resp))
        info = FileBasicInformation()
        info["creation_time"] = 0
        info["last_access_time"] = change_mark()
        info["last_write_time"] = mtime
        info["change_time"] = 0
        info["file_attributes"] = 0
        handle.channel.call([setinfo_msg(handle.fid, info)])

    def follow_rename(self, src: str, dst: str) -> None:
        """Open handles follow their file: a reconnect reopens, and a close caches, by path.
        One still on dst had its file replaced: that file has no name to reopen by now."""
        prefix = src + "/"
        for handle in list(self.open):
            if handle.path == dst:
                handle.unlinked = True
        for handle in list(self.open):
            if handle.path == src:
                handle.path = dst
            elif handle.path.startswith(prefix):
                handle.path = dst + handle.path[len(src):]

    # -- reads spread over channels -----------------------------------------------------------------
    async def read_route(self, handle: SmbHandle) -> SmbHandle:
        """The least busy of the handle and its siblings, opening one more if all are busy."""
        family = [handle, *handle.readers]
        best = min(family, key=lambda h: h.reading)
        if best.reading == 0 or not handle.spread or len(family) >= len(self.channels):
            return best
        reader = await self._open_reader(handle)
        return reader if reader is not None else best

    async def _open_reader(self, handle: SmbHandle) -> SmbHandle | None:
        """Open the handle's file read-only on a channel it has no sibling on yet. The
        path must still name the same file (another client may have renamed over it):
        the server's file ids are compared, and a mismatch ends spreading for the handle."""
        handle.spread = False                   # one open at a time; set again on success
        used = {h.channel.index for h in (handle, *handle.readers)}
        channel = next(c for c in self.channels if c.index not in used)
        internal = (InfoType.SMB2_0_INFO_FILE, FileInformationClass.FILE_INTERNAL_INFORMATION, 8)

        def own_index() -> int:
            resp = handle.channel.call([query_msg(self.fid(handle), *internal)])[0]
            return struct.unpack_from("<Q", query_buffer(resp))[0]

        def open_reader() -> tuple[SmbHandle, int]:
            name = self._smb_path(handle.path)
            resp = channel.call([create_msg(name, READ_ACCESS, CreateDisposition.FILE_OPEN,
                                            CreateOptions.FILE_NON_DIRECTORY_FILE)])[0]
            reader = SmbHandle(handle.path, False, channel, parse_create(resp)["file_id"].get_value(),
                               channel.generation)
            try:
                resp = channel.call([query_msg(reader.fid, *internal)])[0]
            except BaseException:
                self.close_now(reader)          # an open handle would keep the name busy
                raise
            return reader, struct.unpack_from("<Q", query_buffer(resp))[0]

        try:
            if handle.file_index is None:
                handle.file_index = await self._io(handle, handle.channel.attempt, own_index,
                                                   handle.path, True)
            reader, index = await self._io(handle, channel.attempt, open_reader, handle.path, True)
        except OSError as exc:
            log.debug("%s: no second reader: %s", handle.path, exc)
            return None
        reader.path = handle.path               # it may have been renamed meanwhile
        if index != handle.file_index or handle.closed or handle.unlinked:
            await self._run(self.close_now, reader)
            return None
        reader.unlinked = handle.unlinked
        handle.readers.append(reader)
        self.open.add(reader)                   # renamed and unlinked along with the handle
        handle.spread = True
        return reader

    # -- idle handle cache -------------------------------------------------------------------------
    def put_idle(self, handle: SmbHandle) -> bool:
        if self.settings.handle_cache <= 0 or self.settings.handle_cache_ttl <= 0 or handle.unlinked:
            return False
        if handle.generation != handle.channel.generation:
            return False
        with self._idle_lock:
            if len(self._idle) >= self.settings.handle_cache:
                return False
            self._idle[id(handle)] = (handle, time.monotonic())
        return True

    def take_idle(self, path: str, write: bool) -> SmbHandle | None:
        now = time.monotonic()
        with self._idle_lock:
            for key, (h, since) in self._idle.items():
                if h.path == path and h.writable == write and now - since < self.settings.handle_cache_ttl \
                        and h.generation == h.channel.generation and not h.unlinked:
                    del self._idle[key]
                    return h
        return None

    def evict_idle(self, paths: Iterable[str] = (), everything: bool = False, wait: bool = True) -> None:
        """Close cached handles under paths (or all / expired): SMB keeps an open name busy.

        When it returns, no handle it was asked for is open on the server, not even one
        that a concurrent sweep took out of the cache first: sweeps run one at a time
        (a rename that found the cache empty would otherwise race that sweep's CLOSE;
        this was the mkdir EACCES: ACCESS_DENIED renaming sealfs.tmp.* while its
        sealfs.dir was still being closed). A sweep for expired handles only (wait
        unset) leaves them to a sweep already under way."""
        if not self._evict_lock.acquire(blocking=wait):
            return
        try:
            now = time.monotonic()
            prefixes = [p for p in paths]
            victims = []
            with self._idle_lock:
                for key, (h, since) in list(self._idle.items()):
                    hit = everything or now - since >= self.settings.handle_cache_ttl or any(
                        not p or h.path == p or h.path.startswith(p + "/") for p in prefixes)
                    if hit:
                        del self._idle[key]
                        victims.append(h)
            for h in victims:
                self.close_now(h)
        finally:
            self._evict_lock.release()

    def sweeping(self) -> bool:
        """Cached handles to close, or a sweep closing some right now."""
        return bool(self._idle) or self._evict_lock.locked()

    async def evict(self, *paths: str) -> None:
        """Close cached handles under paths, and any past their TTL."""
        if self.sweeping() if paths else self._idle:
            await self._run(self.evict_idle, paths, False, bool(paths))
