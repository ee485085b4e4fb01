"""Extended attributes and POSIX ACLs of a volume: a part of Volume (a mixin).

Each inode's attributes are one sealed blob (crypto/format/xattrs.py) at a keyed
locator of the inode's id, so hard links share it and a rename keeps it. Whether an
inode has a blob is a flag in its sealed metadata: the kernel asks for
security.capability before every write, and an inode without attributes answers that
from memory. Order of the steps, so that a crash leaves the old state or the new one:
set = the blob (temporary, renamed over), then the flag; removing the last attribute =
the flag off, then the blob. A blob whose flag is off is an orphan (fsck reports it).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

import trio

from ...backends.base import Backend, join, parent_of
from ...crypto.format.constants import (
    META_FLAG_XATTRS,
    TEMP_PREFIX,
    XATTR_DIR,
    XATTR_NAME_MAX,
    XATTR_VALUE_MAX,
)
from ...crypto.format.header import Kind, Metadata
from ...crypto.format.xattrs import (
    BLOB_MAX,
    KIND_DIR,
    KIND_FILE,
    blob_path,
    open_xattrs,
    pack_entries,
    seal_xattrs,
    xattr_locator,
)
from ...crypto.secmem import SecretBuffer
from ...errors import IntegrityError
from . import acl
from .files import FileState
from .headers import HeaderCache
from .openfiles import OpenFile, OpenFiles
from .paths import DirInfo, PathResolver, split_path
from .storeio import read_small, remove_quietly

XATTR_CREATE, XATTR_REPLACE = 1, 2          # setxattr(2) flags
_NAMESPACES = (b"user.", b"trusted.", b"security.")


class XattrBlobs:
    """Reads, replaces and deletes the blobs of one volume; owns their key and the
    locator key (locked memory, zeroed by close())."""

    def __init__(self, backend: Backend, key: SecretBuffer, locator_key: SecretBuffer) -> None:
        self.backend = backend
        self._secrets = (key, locator_key)
        self._key = key.readonly()
        self._locator_key = locator_key.readonly()

    def close(self) -> None:
        self._key = self._locator_key = b""
        for s in self._secrets:
            s.wipe()

    def path(self, kind: bytes, ident: bytes) -> str:
        return blob_path(xattr_locator(self._locator_key, kind, ident))

    async def read(self, kind: bytes, ident: bytes) -> dict[bytes, bytes]:
        """The attributes of an inode whose flag says it has a blob: a missing blob is
        damage (deleted, or rolled back apart from its inode)."""
        bpath = self.path(kind, ident)
        try:
            raw = await read_small(self.backend, bpath, BLOB_MAX + 1)
        except FileNotFoundError:
            raise IntegrityError(f"{bpath}: the inode's xattr blob is missing") from None
        try:
            return open_xattrs(self._key, kind, ident, raw)
        except IntegrityError as exc:
            raise IntegrityError(f"{bpath}: {exc}") from None

    async def write(self, kind: bytes, ident: bytes, entries: dict[bytes, bytes]) -> None:
        """Replace the blob whole: a temporary beside it, renamed over it."""
        bpath = self.path(kind, ident)
        data = seal_xattrs(self._key, kind, ident, entries)
        tmp = join(parent_of(bpath), TEMP_PREFIX + os.urandom(8).hex())
        try:
            handle = await self.backend.create_file(tmp, data)
        except FileNotFoundError:
            for above in (XATTR_DIR, parent_of(bpath)):
                try:
                    await self.backend.mkdir(above)
                except FileExistsError:
                    pass
            handle = await self.backend.create_file(tmp, data)
        try:
            await self.backend.flush(handle)
        finally:
            await self.backend.close(handle)
        try:
            await self.backend.rename(tmp, bpath, replace=True)
        except BaseException:
            with trio.CancelScope(shield=True):
                await remove_quietly(self.backend, tmp)
            raise

    async def delete(self, kind: bytes, ident: bytes) -> None:
        await remove_quietly(self.backend, self.path(kind, ident))


@dataclass
class _Inode:
    """The inode an xattr request is about: (kind, id) names its blob; meta its flag."""

    kind: bytes
    ident: bytes
    meta: Metadata
    path: str
    info: DirInfo | None = None          # a directory's record
    handle: OpenFile | None = None       # an open file's handle, if the caller has one


def _check_name(name: bytes) -> None:
    if not name or len(name) > XATTR_NAME_MAX:
        raise OSError(errno.ERANGE, "bad xattr name length")
    if name in (acl.ACCESS, acl.DEFAULT):
        return
    if not any(name.startswith(ns) and len(name) > len(ns) for ns in _NAMESPACES):
        raise OSError(errno.EOPNOTSUPP, "unsupported xattr namespace")


def _hidden(name: bytes, uid: int | None) -> bool:
    """trusted.* exists only for root (as ext4: others neither see nor read it)."""
    return name.startswith(b"trusted.") and uid not in (None, 0)


def _user_ok(meta: Metadata) -> bool:
    return meta.kind in (Kind.REGULAR, Kind.DIRECTORY)


class XattrOps:
    """Volume's xattr operations (Volume provides backend, paths, headers, open_files,
    open(), _touch_dir(), xattrs). uid is the caller's (None: a trusted tool)."""

    backend: Backend
    paths: PathResolver
    headers: HeaderCache
    open_files: OpenFiles
    xattrs: XattrBlobs
    _xattr_lock: trio.Lock
    #: whether ACLs stored are enforced (the mount: FUSE_POSIX_ACL + default_permissions)
    acls_enforced: bool = True

    async def _inode(self, path: str, handle: OpenFile | None = None) -> _Inode:
        if handle is not None:
            state = handle.state
            return _Inode(KIND_FILE, state.file_id, state.meta, path, handle=handle)
        parts = split_path(path)
        if not parts:
            info = await self.paths.current([], await self.paths.root())
            return _Inode(KIND_DIR, info.dir_id, info.meta, path, info=info)
        _parent, _name, bpath, _long = await self.paths.entry(path)
        bstat = await self._bstat(bpath, path)
        if bstat.is_dir:
            info = await self._current_dir(parts, bpath, bstat)
            return _Inode(KIND_DIR, info.dir_id, info.meta, path, info=info)
        header, _size = await self.headers.header(bpath, bstat)
        state = self.open_files.get(header.file_id)
        meta = state.meta if state is not None else header.meta
        return _Inode(KIND_FILE, header.file_id, meta, path)

    def _open_state(self, kind: bytes, ident: bytes) -> FileState | None:
        return self.open_files.get(ident) if kind == KIND_FILE else None

    async def _entries(self, inode: _Inode) -> dict[bytes, bytes]:
        """The inode's attributes (a copy: callers change it): an open file's from memory
        once read, since sealfs wrote every change of them made while it is open."""
        if not inode.meta.has_xattrs:
            return {}
        return await self._read_blob(inode.kind, inode.ident)

    async def _read_blob(self, kind: bytes, ident: bytes) -> dict[bytes, bytes]:
        state = self._open_state(kind, ident)
        if state is not None and state.xattrs is not None:
            return dict(state.xattrs)
        entries = await self.xattrs.read(kind, ident)
        if state is not None and self._open_state(kind, ident) is state:
            state.xattrs = dict(entries)
        return entries

    async def _write_blob(self, kind: bytes, ident: bytes, entries: dict[bytes, bytes]) -> None:
        """Replace the blob; an open file's copy in memory follows (forgotten first, so a
        failed write leaves the next reader to read the blob)."""
        state = self._open_state(kind, ident)
        if state is not None:
            state.xattrs = None
        await self.xattrs.write(kind, ident, entries)
        if state is not None and self._open_state(kind, ident) is state:
            state.xattrs = dict(entries)

    async def getxattr(self, path: str, name: bytes, *, uid: int | None = None,
                       handle: OpenFile | None = None, has_xattrs: bool | None = None) -> bytes:
        """An attribute's value; ENODATA when it has none. An inode without attributes
        (the flag off) answers from memory when the caller holds it open, or when the
        caller read the flag recently enough to answer from it (has_xattrs False)."""
        _check_name(name)
        if has_xattrs is False:
            raise OSError(errno.ENODATA, "No data available", path)
        inode = await self._inode(path, handle)
        if _hidden(name, uid) or not inode.meta.has_xattrs:
            raise OSError(errno.ENODATA, "No data available", path)
        value = (await self._entries(inode)).get(name)
        if value is None:
            raise OSError(errno.ENODATA, "No data available", path)
        if name == acl.ACCESS:
            await self._roll_mode_forward(inode, value)
        return value

    async def _roll_mode_forward(self, inode: _Inode, value: bytes) -> None:
        """An access ACL whose bits the mode does not show: a chmod or setfacl crashed
        between its blob and its metadata (blob first), so the blob is the newer: the
        mode takes its bits, as the interrupted operation would have done."""
        mode = acl.mode_of(acl.parse(value), inode.meta.mode)
        if mode == inode.meta.mode:
            return
        async with self._xattr_lock:
            inode = await self._inode(inode.path, inode.handle)
            current = (await self._entries(inode)).get(acl.ACCESS)
            if current is None:
                return
            mode = acl.mode_of(acl.parse(current), inode.meta.mode)
            if mode != inode.meta.mode:
                try:
                    await self._rewrite_meta(inode, mode=mode)
                except OSError as exc:      # a read-only store: the next writer does it
                    if exc.errno != errno.EROFS:
                        raise

    async def listxattr(self, path: str, *, uid: int | None = None,
                        handle: OpenFile | None = None,
                        has_xattrs: bool | None = None) -> list[bytes]:
        if has_xattrs is False:     # see getxattr
            return []
        inode = await self._inode(path, handle)
        return [n for n in await self._entries(inode) if not _hidden(n, uid)]

    async def xattr_items(self, path: str, *, uid: int | None = None,
                          handle: OpenFile | None = None) -> dict[bytes, bytes]:
        """Every attribute and its value from one blob read (sync, restore, the CLI's
        dump), not one read per name."""
        inode = await self._inode(path, handle)
        return {n: v for n, v in (await self._entries(inode)).items() if not _hidden(n, uid)}

    async def setxattr(self, path: str, name: bytes, value: bytes, *, flags: int = 0,
                       uid: int | None = None, handle: OpenFile | None = None) -> None:
        """Set one attribute (XATTR_CREATE: EEXIST if it exists; XATTR_REPLACE: ENODATA if
        not). An access ACL that says no more than the mode bits only sets them (ext4)."""
        _check_name(name)
        if len(value) > XATTR_VALUE_MAX:
            raise OSError(errno.E2BIG, "xattr value too large", path)
        async with self._xattr_lock:
            inode = await self._inode(path, handle)
            self._may_set(inode, name, uid)
            entries = await self._entries(inode)
            if flags & XATTR_CREATE and name in entries:
                raise FileExistsError(errno.EEXIST, "File exists", path)
            if flags & XATTR_REPLACE and name not in entries:
                raise OSError(errno.ENODATA, "No data available", path)
            mode = None
            if name == acl.ACCESS:
                parsed = acl.parse(value)
                mode = acl.mode_of(parsed, inode.meta.mode)
                if acl.is_minimal(parsed):
                    entries.pop(name, None)
                else:
                    entries[name] = acl.pack(parsed)
            elif name == acl.DEFAULT:
                if value in (b"", acl.pack([])):
                    entries.pop(name, None)
                else:
                    entries[name] = acl.pack(acl.parse(value))
            else:
                entries[name] = value
            try:
                pack_entries(entries)
            except ValueError:
                raise OSError(errno.ENOSPC, "no room for more xattrs on this inode",
                              path) from None
            await self._store(inode, entries, mode)

    async def removexattr(self, path: str, name: bytes, *, uid: int | None = None,
                          handle: OpenFile | None = None) -> None:
        _check_name(name)
        async with self._xattr_lock:
            inode = await self._inode(path, handle)
            self._may_set(inode, name, uid)
            entries = await self._entries(inode)
            if name not in entries:
                raise OSError(errno.ENODATA, "No data available", path)
            del entries[name]
            await self._store(inode, entries, None)

    def _may_set(self, inode: _Inode, name: bytes, uid: int | None) -> None:
        """The namespace rules the kernel leaves to the filesystem, or that a caller
        without the kernel (the CLI, sync) must meet too."""
        path = inode.path
        if name.startswith(b"user.") and not _user_ok(inode.meta):
            raise PermissionError(errno.EPERM, "user.* only on files and directories", path)
        if name.startswith(b"trusted.") and uid not in (None, 0):
            raise PermissionError(errno.EPERM, "trusted.* is for root only", path)
        if name in (acl.ACCESS, acl.DEFAULT):
            if not self.acls_enforced:
                raise OSError(errno.EOPNOTSUPP, "ACLs are not enforced on this mount", path)
            if inode.meta.kind == Kind.SYMLINK:
                raise OSError(errno.EOPNOTSUPP, "symlinks have no ACLs", path)
            if uid not in (None, 0, inode.meta.uid):
                raise PermissionError(errno.EPERM, "only the owner sets ACLs", path)
            if name == acl.DEFAULT and inode.meta.kind != Kind.DIRECTORY:
                raise PermissionError(errno.EACCES, "default ACLs only on directories", path)

    async def _store(self, inode: _Inode, entries: dict[bytes, bytes], mode: int | None) -> None:
        """Blob, then flag (set); or flag, then blob (the last one removed). The metadata
        is rewritten either way: ctime moves, and an access ACL sets the mode."""
        if entries:
            await self._write_blob(inode.kind, inode.ident, entries)
        flags = inode.meta.flags | META_FLAG_XATTRS if entries \
            else inode.meta.flags & ~META_FLAG_XATTRS
        await self._rewrite_meta(inode, flags=flags,
                                 mode=inode.meta.mode if mode is None else mode)
        if not entries and inode.meta.has_xattrs:
            await self.xattrs.delete(inode.kind, inode.ident)
            state = self._open_state(inode.kind, inode.ident)
            if state is not None:
                state.xattrs = {}

    async def _rewrite_meta(self, inode: _Inode, **changes) -> None:
        if inode.info is not None:
            await self._touch_dir(inode.info, **changes)
            return
        opened = None
        handle = inode.handle
        if handle is None or not handle.state.writable:
            opened = handle = await self.open(inode.path, write=True)
        try:
            state = handle.state
            async with state.lock:
                await state.write_metadata(state.meta.with_(ctime_ns=time.time_ns(), **changes))
            self.headers.forget_file(state.file_id)
        finally:
            if opened is not None:
                await opened.close()

    async def xattr_blob_of(self, path: str) -> str:
        """Where the blob of path's inode is (or would be) in the store: fsck, tests."""
        inode = await self._inode(path)
        return self.xattrs.path(inode.kind, inode.ident)

    # -- hooks of other operations ------------------------------------------------------
    async def _acl_follow_mode(self, kind: bytes, ident: bytes, meta: Metadata,
                               mode: int) -> None:
        """A chmod to mode, before its metadata is written (the caller holds the xattr
        lock): a stored access ACL takes the new mode's bits (posix_acl_chmod). Blob
        first, as setxattr: a crash between leaves the ACL newer than the mode, which
        getxattr rolls forward (_roll_mode_forward)."""
        if not meta.has_xattrs:
            return
        entries = await self._read_blob(kind, ident)
        if acl.ACCESS in entries:
            old = entries[acl.ACCESS]
            entries[acl.ACCESS] = acl.pack(acl.chmod(acl.parse(old), mode))
            if entries[acl.ACCESS] != old:
                await self._write_blob(kind, ident, entries)

    async def _inherited(self, parent: DirInfo, mode: int,
                         directory: bool) -> tuple[int, dict[bytes, bytes]]:
        """(mode, attributes) of a new entry in parent: its default ACL, if it has one,
        becomes the entry's access ACL (and a directory's default ACL), limiting mode."""
        if not parent.meta.has_xattrs:
            return mode, {}
        default = (await self.xattrs.read(KIND_DIR, parent.dir_id)).get(acl.DEFAULT)
        if default is None:
            return mode, {}
        access, new_mode = acl.inherit(acl.parse(default), mode)
        entries = {} if acl.is_minimal(access) else {acl.ACCESS: acl.pack(access)}
        if directory:
            entries[acl.DEFAULT] = default
        return new_mode, entries

    async def _drop_blob(self, kind: bytes, ident: bytes, meta: Metadata) -> None:
        """The inode is gone (last link, rmdir): its blob goes too."""
        if meta.has_xattrs:
            await self.xattrs.delete(kind, ident)
