"""pyfuse3 glue: inodes, file handles and errno mapping onto the Volume library.

This module translates; fs/core/volume.py decides. Inodes are keyed by identity (file id
or directory id), so hard links share one inode, and each inode remembers the
plaintext paths it is known by.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat as stat_module
import time
from dataclasses import dataclass, field

import pyfuse3
import trio

from ...crypto.format.header import Kind
from ...errors import IntegrityError, errno_of, first_error
from ..core.attrs import IFMT_TO_KIND, Attr, Listing
from ..core.paths import split_path
from ..core.volume import OpenFile, Volume
from .pagecache import PageCacheGuard
from .tuning import ATTR_TIMEOUT, ENTRY_TIMEOUT

log = logging.getLogger("sealfs.fuse")

BLOCK = 4096
RENAME_WHITEOUT = 1 << 2     # renameat2(2); pyfuse3 names only EXCHANGE and NOREPLACE


@dataclass
class Node:
    inode: int
    identity: bytes
    paths: set[str] = field(default_factory=set)
    lookups: int = 0
    handles: list[OpenFile] = field(default_factory=list)
    #: whether it has extended attributes, as its attributes last sent to the kernel said,
    #: and until when (time.monotonic) that answer is as fresh as the kernel's copy of
    #: those attributes (see SealfsOperations._xattrs_known)
    xattrs: bool = True
    fresh_until: float = 0.0

    @property
    def path(self) -> str | None:
        return min(self.paths, key=len) if self.paths else None


def _no_entry() -> pyfuse3.EntryAttributes:
    """The reply to a lookup of a name that does not exist: as ENOENT (an entry timeout of
    zero: the kernel keeps no negative entry), but without raising through every layer."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = 0
    entry.entry_timeout = 0
    return entry


_NO_ENTRY = _no_entry()


def fuse_op(fn):
    """Map every failure to an errno; integrity failures get one log line naming the file."""
    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except Exception as raised:
            exc = first_error(raised)
            if isinstance(exc, (pyfuse3.FUSEError, trio.Cancelled, KeyboardInterrupt)):
                raise exc from None
            if isinstance(exc, IntegrityError):
                log.error("integrity failure in %s(%s): %s", fn.__name__,
                          self._describe(fn.__name__, args), exc)
                raise pyfuse3.FUSEError(errno.EIO) from None
            if isinstance(exc, OSError):
                if exc.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR,
                                     errno.EISDIR, errno.EINVAL, errno.ENAMETOOLONG, errno.EPERM,
                                     errno.EACCES, errno.EXDEV, errno.ENODATA,
                                     errno.EOPNOTSUPP, errno.ERANGE, errno.E2BIG):
                    log.warning("%s(%s): %s", fn.__name__, self._describe(fn.__name__, args), exc)
                raise pyfuse3.FUSEError(errno_of(exc)) from None
            log.exception("unexpected error in %s(%s)", fn.__name__,
                          self._describe(fn.__name__, args))
            raise pyfuse3.FUSEError(errno_of(exc)) from None
    return wrapper


class SealfsOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    # The kernel enforces POSIX ACLs (FUSE_POSIX_ACL, with default_permissions); Volume
    # keeps the mode bits, chmod and inheritance in step with them (fs/core/acl.py).
    enable_acl = True

    def __init__(self, volume: Volume) -> None:
        super().__init__()
        self.volume = volume
        self._nodes: dict[int, Node] = {}
        self._by_identity: dict[bytes, Node] = {}
        #: plaintext path -> the nodes known by it (by inode): an unlink finds them without
        #: a pass over every inode the kernel holds (thousands after a large listing)
        self._at_path: dict[str, dict[int, Node]] = {}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, tuple[OpenFile, Node]] = {}
        self._dir_handles: dict[int, tuple[Node, list[tuple[str, Attr]] | None]] = {}
        self._next_fh = 1
        self._root: Node | None = None
        self._pages = PageCacheGuard(volume._spawn, pyfuse3.invalidate_inode)

    #: called (on the trio loop) right after the kernel has taken the INIT reply
    after_init = None

    def init(self) -> None:
        if self.after_init is not None:
            trio.lowlevel.current_trio_token().run_sync_soon(self.after_init)

    async def prepare(self) -> None:
        attr = await self.volume.stat("")
        root = Node(pyfuse3.ROOT_INODE, attr.identity, {""}, lookups=1)
        self._nodes[root.inode] = root
        self._by_identity[attr.identity] = root
        self._at_path[""] = {root.inode: root}
        self._root = root

    # -- inode table ---------------------------------------------------------------------
    _FH_OPS = frozenset({"read", "write", "flush", "fsync", "release"})

    def _describe(self, op: str, args) -> str:
        """The plaintext path(s) a request was about, for one log line (never its data)."""
        if op in self._FH_OPS:
            entry = self._handles.get(args[0]) if args else None
            return "/" + (entry[1].path or "<unlinked>") if entry else "?"
        parts = []
        for a in args[:3]:
            if isinstance(a, int) and a in self._nodes:
                parts.append("/" + (self._nodes[a].path or "<unlinked>"))
            elif isinstance(a, bytes) and len(a) <= 255:
                parts.append(os.fsdecode(a))
        return ", ".join(parts)

    def _node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _path_of(self, inode: int) -> str:
        path = self._node(inode).path
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path

    def _child(self, parent_inode: int, name: bytes) -> str:
        parent = self._path_of(parent_inode)
        text = os.fsdecode(name)
        return f"{parent}/{text}" if parent else text

    def _remember(self, path: str, attr: Attr, lookup: bool = True) -> Node:
        node = self._by_identity.get(attr.identity)
        if node is None:
            node = Node(self._next_inode, attr.identity)
            self._next_inode += 1
            self._nodes[node.inode] = node
            self._by_identity[attr.identity] = node
        if path not in node.paths:
            node.paths.add(path)
            self._at_path.setdefault(path, {})[node.inode] = node
        if lookup:
            node.lookups += 1
        return node

    def _entry(self, node: Node, attr: Attr) -> pyfuse3.EntryAttributes:
        node.xattrs = attr.xattrs
        node.fresh_until = time.monotonic() + ATTR_TIMEOUT
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.inode
        entry.generation = 0
        entry.entry_timeout = ENTRY_TIMEOUT
        entry.attr_timeout = ATTR_TIMEOUT
        entry.st_mode = attr.st_mode
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = attr.rdev
        entry.st_size = attr.size
        entry.st_blksize = BLOCK
        entry.st_blocks = -(-attr.size // 512)
        entry.st_atime_ns = attr.atime_ns
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.ctime_ns
        return entry

    async def _settled_entry(self, node: Node, attr: Attr) -> pyfuse3.EntryAttributes:
        """An entry for a reply that refreshes the kernel's attributes of node: only once
        the pages a raced write left stale are gone (see fs/fuse/pagecache.py)."""
        await self._pages.settled(node.inode)
        return self._entry(node, attr)

    def _drop_path(self, path: str) -> None:
        for node in self._at_path.pop(path, {}).values():
            node.paths.discard(path)

    def _move_paths(self, old: str, new: str) -> None:
        prefix = old + "/"
        moved = [(p, self._at_path[p]) for p in list(self._at_path)
                 if p == old or p.startswith(prefix)]
        for p, _nodes in moved:
            del self._at_path[p]
        for p, nodes in moved:
            q = new + p[len(old):]
            at_q = self._at_path.setdefault(q, {})
            for node in nodes.values():
                node.paths.discard(p)
                node.paths.add(q)
                at_q[node.inode] = node

    def _maybe_forget(self, node: Node) -> None:
        if node.lookups <= 0 and not node.handles and node.inode != pyfuse3.ROOT_INODE:
            self._nodes.pop(node.inode, None)
            for path in node.paths:
                nodes = self._at_path.get(path)
                if nodes is not None and nodes.get(node.inode) is node:
                    del nodes[node.inode]
                    if not nodes:
                        del self._at_path[path]
            self._pages.forget(node.inode)
            if self._by_identity.get(node.identity) is node:
                del self._by_identity[node.identity]

    # -- lookups and attributes ------------------------------------------------------------
    @fuse_op
    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            node = self._node(parent_inode)
            attr = await self.volume.stat(self._path_of(parent_inode))
            node.lookups += 1
            return await self._settled_entry(node, attr)
        if name == b"..":
            parent = self._path_of(parent_inode)
            path = "/".join(split_path(parent)[:-1])
        else:
            path = self._child(parent_inode, name)
        attr = await self.volume.lookup(path)
        if attr is None:
            return _NO_ENTRY
        return await self._settled_entry(self._remember(path, attr), attr)

    async def forget(self, inode_list):
        for inode, nlookup in inode_list:
            node = self._nodes.get(inode)
            if node is not None:
                node.lookups -= nlookup
                self._maybe_forget(node)

    async def _attr(self, node: Node) -> Attr:
        if node.handles:
            return await node.handles[0].stat()
        path = node.path
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.volume.stat(path)

    @fuse_op
    async def getattr(self, inode, ctx=None):
        node = self._node(inode)
        return await self._settled_entry(node, await self._attr(node))

    @fuse_op
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        handle = self._handles[fh][0] if fh is not None and fh in self._handles else None
        if handle is None:
            handle = next((h for h in node.handles if h.writable), None)
        kwargs = {}
        if fields.update_mode:
            kwargs["mode"] = stat_module.S_IMODE(attr.st_mode)
        if fields.update_uid:
            kwargs["uid"] = attr.st_uid
        if fields.update_gid:
            kwargs["gid"] = attr.st_gid
        if fields.update_size:
            kwargs["size"] = attr.st_size
        if fields.update_atime:
            kwargs["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kwargs["mtime_ns"] = attr.st_mtime_ns
        if handle is not None and handle.state.meta.kind == Kind.REGULAR:
            if "size" in kwargs and not handle.writable:
                raise pyfuse3.FUSEError(errno.EBADF)
            result = await self.volume.setattr(node.path or "", handle=handle, **kwargs)
        else:
            result = await self.volume.setattr(self._path_of(inode), **kwargs)
        return await self._settled_entry(node, result)

    @fuse_op
    async def readlink(self, inode, ctx):
        return os.fsencode(await self.volume.readlink(self._path_of(inode)))

    # -- namespace -------------------------------------------------------------------------
    # A new entry belongs to the caller; Volume applies the setgid rule of its directory.
    @fuse_op
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        attr = await self.volume.mkdir(path, stat_module.S_IMODE(mode), ctx.uid, ctx.gid)
        return self._entry(self._remember(path, attr), attr)

    @fuse_op
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        path = self._child(parent_inode, name)
        kind = IFMT_TO_KIND.get(stat_module.S_IFMT(mode), Kind.REGULAR)
        if kind == Kind.DIRECTORY:
            raise pyfuse3.FUSEError(errno.EINVAL)
        attr = await self.volume.mknod(path, kind, stat_module.S_IMODE(mode), rdev, ctx.uid,
                                       ctx.gid)
        return self._entry(self._remember(path, attr), attr)

    @fuse_op
    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name)
        attr = await self.volume.symlink(path, os.fsdecode(target), ctx.uid, ctx.gid)
        return self._entry(self._remember(path, attr), attr)

    @fuse_op
    async def unlink(self, parent_inode, name, ctx):
        path = self._child(parent_inode, name)
        await self.volume.unlink(path)
        self._drop_path(path)

    @fuse_op
    async def rmdir(self, parent_inode, name, ctx):
        path = self._child(parent_inode, name)
        await self.volume.rmdir(path)
        self._drop_path(path)

    @fuse_op
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags & (pyfuse3.RENAME_EXCHANGE | RENAME_WHITEOUT):
            raise pyfuse3.FUSEError(errno.EINVAL)
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        await self.volume.rename(old, new, noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))
        self._drop_path(new)
        self._move_paths(old, new)

    @fuse_op
    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self._child(new_parent_inode, new_name)
        attr = await self.volume.link(self._path_of(inode), path)
        return await self._settled_entry(self._remember(path, attr), attr)

    # -- files -----------------------------------------------------------------------------
    def _add_handle(self, handle: OpenFile, node: Node) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (handle, node)
        node.handles.append(handle)
        return fh

    @fuse_op
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        write = bool(flags & (os.O_WRONLY | os.O_RDWR))
        path = node.path
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        handle = await self.volume.open(path, write=write, truncate=bool(flags & os.O_TRUNC),
                                        append=bool(flags & os.O_APPEND))
        # Close-to-open consistency as NFS gives it: pages the kernel cached for this
        # inode stay valid only if nobody else changed the file since we last had it open.
        return pyfuse3.FileInfo(fh=self._add_handle(handle, node),
                                keep_cache=handle.content_unchanged)

    @fuse_op
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        handle = await self.volume.create(path, stat_module.S_IMODE(mode), ctx.uid, ctx.gid,
                                          append=bool(flags & os.O_APPEND))
        attr = await handle.stat()
        node = self._remember(path, attr)
        return pyfuse3.FileInfo(fh=self._add_handle(handle, node)), self._entry(node, attr)

    @fuse_op
    async def read(self, fh, off, size):
        handle, node = self._handles[fh]
        data = await handle.read(off, size)
        self._pages.note_read(node.inode, off, len(data))
        return data

    @fuse_op
    async def write(self, fh, off, buf):
        handle, node = self._handles[fh]
        written = await handle.write(off, buf)
        self._pages.note_write(node.inode, off, written)
        return written

    @fuse_op
    async def flush(self, fh):
        await self._handles[fh][0].flush()

    @fuse_op
    async def fsync(self, fh, datasync):
        await self._handles[fh][0].fsync()

    @fuse_op
    async def release(self, fh):
        handle, node = self._handles.pop(fh)
        node.handles.remove(handle)
        try:
            await handle.close()
        finally:
            self._maybe_forget(node)

    # -- directories -----------------------------------------------------------------------
    @fuse_op
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        self._path_of(inode)
        fh = self._next_fh
        self._next_fh += 1
        self._dir_handles[fh] = (node, None)
        return fh

    @fuse_op
    async def readdir(self, fh, start_id, token):
        node, listing = self._dir_handles[fh]
        if listing is None or start_id == 0:
            # One snapshot per pass: every entry appears once even if the directory
            # changes while it is being read (as ext4 guarantees for existing entries).
            listing = self._with_unreadable(await self.volume.listdir(self._path_of(node.inode)))
            self._dir_handles[fh] = (node, listing)
        base = self._path_of(node.inode)
        for index in range(start_id, len(listing)):
            name, attr = listing[index]
            path = f"{base}/{name}" if base else name
            entry_node = self._remember(path, attr, lookup=False)
            entry = await self._settled_entry(entry_node, attr)
            if not attr.nlink_known:
                entry.attr_timeout = 0     # a stat asks again, and the volume counts
            if attr.unreadable:
                # no cached entry or attributes: every stat and open asks again (and fails)
                entry.entry_timeout = entry.attr_timeout = 0
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry,
                                         index + 1):
                self._maybe_forget(entry_node)
                return
            entry_node.lookups += 1

    def _with_unreadable(self, listing: Listing) -> list[tuple[str, Attr]]:
        """The entries to show, sorted: those that authenticated, and the names whose
        header or sealfs.dir did not (stat and open of those fail with EIO, as for any
        damaged object). A name that does not decrypt cannot be shown under any name:
        each problem gets an ERROR line naming the ciphertext path."""
        entries = list(listing)
        for problem in listing.problems:
            log.error("integrity failure in readdir: %s", self.volume.describe(problem))
            if problem.name is not None:
                entries.append((problem.name, problem.placeholder()))
        return sorted(entries, key=lambda entry: entry[0])

    async def releasedir(self, fh):
        self._dir_handles.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        await self.volume.flush_all()

    @fuse_op
    async def statfs(self, ctx):
        st = await self.volume.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.block_size
        out.f_frsize = st.block_size
        out.f_blocks = st.blocks
        out.f_bfree = st.blocks_free
        out.f_bavail = st.blocks_available
        out.f_files = st.files
        out.f_ffree = st.files_free
        out.f_favail = st.files_free
        out.f_namemax = 255
        return out

    # -- extended attributes: Volume decides (fs/core/xattrs.py) ----------------------
    def _xattr_target(self, inode: int) -> tuple[str, OpenFile | None]:
        """The path of inode and, if it is open, a handle: the flag that says whether
        it has attributes is then in memory (the kernel's security.capability check
        before every write costs no round trip)."""
        node = self._node(inode)
        handle = node.handles[0] if node.handles else None
        path = node.path
        if path is None:
            if handle is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            path = handle.path
        return path, handle

    def _xattrs_known(self, inode: int) -> bool | None:
        """Whether inode has extended attributes, from the attributes this mount sent the
        kernel less than ATTR_TIMEOUT ago; None when those are older (or changed here since).

        `ls -l` asks every entry for security.selinux and its access ACL, and a file
        without attributes (nearly all) can answer both without a round trip to the
        store: within ATTR_TIMEOUT the kernel shows the mode and owner from that same
        reading, so a change by another client shows in both after the same delay."""
        node = self._nodes.get(inode)
        if node is None or time.monotonic() >= node.fresh_until:
            return None
        return node.xattrs

    def _xattrs_changing(self, inode: int) -> None:
        """A set or remove starts: until the next reply carries the inode's attributes,
        the store answers for them."""
        node = self._nodes.get(inode)
        if node is not None:
            node.fresh_until = 0.0

    @fuse_op
    async def getxattr(self, inode, name, ctx):
        path, handle = self._xattr_target(inode)
        return await self.volume.getxattr(path, name, uid=ctx.uid, handle=handle,
                                          has_xattrs=self._xattrs_known(inode))

    @fuse_op
    async def listxattr(self, inode, ctx):
        path, handle = self._xattr_target(inode)
        return await self.volume.listxattr(path, uid=ctx.uid, handle=handle,
                                           has_xattrs=self._xattrs_known(inode))

    @fuse_op
    async def setxattr(self, inode, name, value, ctx):
        # pyfuse3 checks XATTR_CREATE / XATTR_REPLACE with a getxattr before calling this
        path, handle = self._xattr_target(inode)
        self._xattrs_changing(inode)
        await self.volume.setxattr(path, name, value, uid=ctx.uid, handle=handle)

    @fuse_op
    async def removexattr(self, inode, name, ctx):
        path, handle = self._xattr_target(inode)
        self._xattrs_changing(inode)
        await self.volume.removexattr(path, name, uid=ctx.uid, handle=handle)


async def periodic_writeback(volume: Volume, interval: float = 5.0) -> None:
    """Dirty data reaches the backend within `interval` seconds even if nobody flushes."""
    while True:
        await trio.sleep(interval)
        try:
            await volume.flush_all()
        except Exception as exc:  # noqa: BLE001 - logged; the next flush or fsync reports it to the app
            log.warning("background write-back failed: %s", exc)
