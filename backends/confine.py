"""Path resolution that cannot leave a local store or follow anything planted in it.

The threat model puts the attacker in the storage: whoever can write the store directory
can plant a symlink (to /etc/shadow, to a directory elsewhere) or a FIFO under any name
sealfs uses. Every path is therefore resolved relative to one directory fd of the store
root, never by string, and no component may be a symlink:

  - openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) where the kernel has it (Linux 5.6+):
    one syscall per path, the kernel refuses symlinks and escapes in every component;
  - otherwise a walk, one openat(O_PATH | O_DIRECTORY | O_NOFOLLOW) per directory.

Files are opened O_NOFOLLOW | O_NONBLOCK | O_NOCTTY (a FIFO cannot block the event loop,
a tty cannot become the controlling terminal) and refused unless fstat says S_ISREG.
Namespace calls run *at() against the confined parent and never follow the last
component (unlinkat, renameat, linkat without AT_SYMLINK_FOLLOW, fstatat and
utimensat with AT_SYMLINK_NOFOLLOW).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from .base import ForeignEntryError, describe_foreign

O_PATH = getattr(os, "O_PATH", 0o10000000)
# A directory on the way: a handle for *at() calls only, never a symlink.
DIR_PATH = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A directory to list.
DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Every file open: a FIFO or device planted under a file's name must not block or attach.
FILE_BASE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# sealfs's own reads (headers, chunks, listings) are no access by a user: they must not
# move the store's atime (a sealfs mount is noatime). Not for O_PATH opens (openat2 refuses
# other flags there).
O_NOATIME = getattr(os, "O_NOATIME", 0o1000000)

_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437        # the same on every architecture with the unified syscall table
_UNIFIED_TABLE = {"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "ppc64", "s390x",
                  "loongarch64", "i386", "i686", "armv7l", "armv6l", "armv8l"}
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                     ctypes.c_size_t]
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.restype = ctypes.c_int
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]

_HOW_SIZE = ctypes.sizeof(_OpenHow)
_hows: dict[tuple[int, int], tuple[_OpenHow, object]] = {}


def _how(flags: int, mode: int):
    """A pointer to the open_how for these flags, built once (a handful of combinations)."""
    entry = _hows.get((flags, mode))
    if entry is None:
        # openat2 refuses a mode without O_CREAT; flags are unsigned to it.
        how = _OpenHow(flags & 0xFFFFFFFF, mode if flags & os.O_CREAT else 0,
                       _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
        entry = _hows[(flags, mode)] = (how, ctypes.byref(how))
    return entry[1]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: ELOOP on any symlink, EXDEV on
    any way out of dirfd."""
    encoded = os.fsencode(path)
    how = _how(flags, mode)
    for _ in range(8):
        fd = _syscall(_SYS_OPENAT2, dirfd, encoded, how, _HOW_SIZE)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):    # EAGAIN: a racing rename, retry
            break
    raise OSError(err, os.strerror(err), path)


def openat2_works(dirfd: int) -> bool:
    """Whether this kernel (and any seccomp filter around us) gives openat2."""
    if platform.machine() not in _UNIFIED_TABLE:
        return False
    try:
        os.close(openat2(dirfd, ".", DIR_PATH))
    except OSError:
        return False
    return True


def check_component(name: str, path: str) -> None:
    """Paths come from sealfs, which never forms these; refuse rather than resolve them."""
    if name in ("", ".", ".."):
        raise OSError(errno.EINVAL, f"invalid store path component {name!r}", path)


def classify(dirfd: int, name: str) -> str | None:
    """What a name that sealfs cannot use is, if it is something sealfs never writes."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return None
    return describe_foreign(st.st_mode)


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE); link+unlink (never following) where the kernel lacks it."""
    if _renameat2 is not None:
        if _renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    os.unlink(src, dir_fd=src_dir)


__all__ = ["ForeignEntryError", "openat2", "openat2_works", "check_component", "classify",
           "rename_noreplace", "DIR_PATH", "DIR_READ", "FILE_BASE", "O_NOATIME", "O_PATH"]
