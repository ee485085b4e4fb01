"""A pass-through pyfuse3 filesystem with no encryption: the bench's "pyfuse3" peer.

It answers every request with the matching syscall on a backing directory, inline on
the event loop (no worker threads, no chunking, no crypto), mounted with the options
sealfs uses (same pyfuse3 and trio, same attribute timeouts, the same 1 MiB read-ahead
window). What it reaches is what the Python FUSE binding itself costs on this machine,
so a row where sealfs is close to it is bound by the binding, not by sealfs's own work.

Run as: python -m sealfs.bench.passthrough STORE MOUNTPOINT (foreground; fusermount3 -u
ends it).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pyfuse3
import trio

from ..fs.fuse.tuning import ATTR_TIMEOUT, ENTRY_TIMEOUT, widen_readahead

# The kernel has already applied these; O_DIRECT would demand aligned buffers of pread.
_NOT_PASSED = os.O_CREAT | os.O_DIRECT


def _fuse_errors(fn):
    """OSError from the backing syscall becomes the same errno for the caller."""
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    wrapper.__name__ = fn.__name__
    return wrapper


class Passthrough(pyfuse3.Operations):
    """Inodes are the backing files' inode numbers; each remembers the path it was seen at."""

    enable_writeback_cache = False

    def __init__(self, root: Path, mountpoint: Path) -> None:
        super().__init__()
        self.root = str(root)
        self.mountpoint = mountpoint
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: self.root}
        self.lookups: dict[int, int] = {}

    def init(self) -> None:
        trio.lowlevel.current_trio_token().run_sync_soon(widen_readahead, self.mountpoint)

    # -- names and attributes --------------------------------------------------------------
    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _attrs(self, path: str, fd: int | None = None) -> pyfuse3.EntryAttributes:
        st = os.fstat(fd) if fd is not None else os.lstat(path)
        ino = pyfuse3.ROOT_INODE if path == self.root else st.st_ino
        entry = pyfuse3.EntryAttributes()
        for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                      "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(entry, field, getattr(st, field))
        entry.st_ino = ino
        entry.st_blksize = st.st_blksize
        entry.st_blocks = st.st_blocks
        entry.attr_timeout = ATTR_TIMEOUT
        entry.entry_timeout = ENTRY_TIMEOUT
        return entry

    def _entry(self, path: str, fd: int | None = None) -> pyfuse3.EntryAttributes:
        """Attributes of a name the kernel will now hold a lookup reference to."""
        entry = self._attrs(path, fd)
        if entry.st_ino != pyfuse3.ROOT_INODE:
            self.paths[entry.st_ino] = path
            self.lookups[entry.st_ino] = self.lookups.get(entry.st_ino, 0) + 1
        return entry

    @_fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(self._child(parent_inode, name))

    async def forget(self, inode_list):
        for inode, count in inode_list:
            left = self.lookups.get(inode, 0) - count
            if left > 0:
                self.lookups[inode] = left
            else:
                self.lookups.pop(inode, None)
                self.paths.pop(inode, None)

    @_fuse_errors
    async def getattr(self, inode, ctx=None):
        return self._attrs(self._path(inode))

    # Extended attributes pass through: without them the kernel stops asking after the
    # first ENOSYS, and `ls -l` (security.selinux and the access ACL of every entry)
    # would cost this peer no request at all, where sealfs and gocryptfs answer two.
    # Off (--no-xattrs), it stands for a filesystem without xattrs (tests).
    xattrs = True

    @_fuse_errors
    async def getxattr(self, inode, name, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return os.getxattr(self._path(inode), name, follow_symlinks=False)

    @_fuse_errors
    async def listxattr(self, inode, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return [os.fsencode(n) for n in os.listxattr(self._path(inode), follow_symlinks=False)]

    @_fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        if fields.update_size:
            if fh is not None:
                os.ftruncate(fh, attr.st_size)
            else:
                os.truncate(path, attr.st_size)
        if fields.update_mode:
            os.chmod(path, attr.st_mode & 0o7777)
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                     follow_symlinks=False)
        return self._attrs(path)

    @_fuse_errors
    async def readlink(self, inode, ctx):
        return os.fsencode(os.readlink(self._path(inode)))

    async def statfs(self, ctx):
        st = os.statvfs(self.root)
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(st, field))
        return out

    # -- directories -----------------------------------------------------------------------
    @_fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        os.mkdir(path, mode)
        return self._entry(path)

    @_fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        os.rmdir(self._child(parent_inode, name))

    @_fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        os.unlink(self._child(parent_inode, name))

    @_fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name)
        os.symlink(os.fsdecode(target), path)
        return self._entry(path)

    @_fuse_errors
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._child(parent_old, name_old), self._child(parent_new, name_new)
        os.rename(old, new)
        ino = os.lstat(new).st_ino
        if ino in self.paths:
            self.paths[ino] = new

    @_fuse_errors
    async def opendir(self, inode, ctx):
        return inode

    @_fuse_errors
    async def readdir(self, fh, start_id, token):
        path = self._path(fh)
        entries = sorted((e.inode(), e.name) for e in os.scandir(path))
        for ino, name in entries:
            if ino <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name),
                                         self._entry(os.path.join(path, name)), ino):
                break

    async def releasedir(self, fh):
        pass

    # -- files -----------------------------------------------------------------------------
    @_fuse_errors
    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=os.open(self._path(inode), flags & ~_NOT_PASSED))

    @_fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        fd = os.open(path, (flags & ~_NOT_PASSED) | os.O_CREAT | os.O_TRUNC, mode)
        return pyfuse3.FileInfo(fh=fd), self._entry(path, fd)

    @_fuse_errors
    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    @_fuse_errors
    async def write(self, fh, off, buf):
        return os.pwrite(fh, buf, off)

    async def flush(self, fh):
        pass

    @_fuse_errors
    async def fsync(self, fh, datasync):
        (os.fdatasync if datasync else os.fsync)(fh)

    async def release(self, fh):
        os.close(fh)


def main() -> None:
    args = sys.argv[1:]
    xattrs = "--no-xattrs" not in args
    args = [a for a in args if a != "--no-xattrs"]
    if len(args) != 2:
        sys.exit("usage: python -m sealfs.bench.passthrough [--no-xattrs] STORE MOUNTPOINT")
    root, mountpoint = Path(args[0]).resolve(), Path(args[1]).resolve()
    options = set(pyfuse3.default_options) | {"fsname=passthrough", "subtype=passthrough"}
    if os.getuid() == 0:
        options.add("allow_other")
    operations = Passthrough(root, mountpoint)
    operations.xattrs = xattrs
    pyfuse3.init(operations, str(mountpoint), options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
