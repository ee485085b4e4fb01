"""Extended attributes and POSIX ACLs for `sync` and `restore` (as `rsync -X -A`, `tar
--xattrs --acls`): every name the caller can read, ACLs as their system.posix_acl_* xattrs.

The copy is exact: the target ends with the source's set (extra names removed), except
security.selinux on a local target, which the LSM gives every new file. A name the
target refuses (trusted.* for a non-root user, security.capability without CAP_SETFCAP, an
ACL on a mount that cannot enforce it) and a file whose attributes cannot be read are
counted warnings, never errors: the content still lands. A filesystem without xattr
support is one warning (per device), not one per file.

Local side: regular files through their own descriptor; symlinks and files already in
place through /proc/self/fd/DIRFD/NAME without following the last component, so a symlink
swapped into the destination is never followed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from ..core.volume import Attr, OpenFile, Volume

#: the errors that say "this filesystem has no xattrs", not "this name is refused"
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)
#: set by the LSM on every new local file; never removed for being absent from the volume
LSM_LABELS = frozenset({b"security.selinux"})

Local = str | int          # a path (never followed) or an open descriptor


class XattrCopier:
    """One run's xattr copying: warnings go to warn(text) and are counted."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self._warn = warn
        self.warnings = 0
        self._unsupported: set[int] = set()

    def warn(self, text: str) -> None:
        self.warnings += 1
        self._warn(text)

    def _failed(self, where: str, what: str, exc: OSError, device: int | None) -> None:
        if exc.errno in _UNSUPPORTED and device is not None:
            if device not in self._unsupported:
                self._unsupported.add(device)
                self.warn(f"{where}: its filesystem has no extended attributes; "
                          f"none are {what} there")
            return
        self.warn(f"{where}: xattrs not {what}: {exc.strerror or exc}")

    # -- local files ------------------------------------------------------------------------
    def read_local(self, target: Local, where: str) -> dict[bytes, bytes] | None:
        """The local attributes (names the caller can see), or None when unreadable."""
        try:
            return read_local(target)
        except OSError as exc:
            self._failed(where, "kept", exc, _device(target))
            return None

    def write_local(self, target: Local, where: str, want: dict[bytes, bytes]) -> bool:
        """Make target's attributes want; False when some name was refused (warned)."""
        try:
            have = read_local(target)
        except OSError as exc:
            if want:
                self._failed(where, "restored", exc, _device(target))
            return not want
        ok = True
        follow = isinstance(target, int)
        for name in sorted(set(have) - set(want) - LSM_LABELS):
            try:
                os.removexattr(target, name, follow_symlinks=follow)
            except OSError as exc:
                ok = False
                self._failed(where, f"restored ({name.decode(errors='replace')})", exc, None)
        for name, value in sorted(want.items()):
            if have.get(name) == value:
                continue
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as exc:
                ok = False
                self._failed(where, f"restored ({name.decode(errors='replace')})", exc, None)
        return ok

    # -- volume files -----------------------------------------------------------------------
    async def write_volume(self, vol: Volume, path: str, want: dict[bytes, bytes],
                           have: dict[bytes, bytes], handle: OpenFile | None = None) -> None:
        """Make the volume entry's attributes want, through the same Volume calls (and
        rules) as the mount's setxattr and removexattr."""
        for name in sorted(set(have) - set(want)):
            try:
                await vol.removexattr(path, name, handle=handle)
            except OSError as exc:
                self._failed(path, f"kept ({name.decode(errors='replace')})", exc, None)
        for name, value in sorted(want.items(), key=_acl_last):
            if have.get(name) == value:
                continue
            try:
                await vol.setxattr(path, name, value, handle=handle)
            except OSError as exc:
                self._failed(path, f"kept ({name.decode(errors='replace')})", exc, None)

    # -- whole entries ----------------------------------------------------------------------
    async def entry_to_volume(self, vol: Volume, local: str, path: str, attr: Attr,
                              dry_run: bool = False) -> bool:
        """Make a volume entry's attributes the local file's; whether they differed. A
        source whose attributes cannot be read leaves the volume's alone (warned)."""
        want = self.read_local(local, local)
        if want is None or (not want and not attr.xattrs):
            return False
        have = {n: v for n, v in (await volume_xattrs(vol, path, attr.xattrs)).items()
                if not unseen(n)}
        if have == want:
            return False
        if not dry_run:
            await self.write_volume(vol, path, want, have)
        return True

    async def entry_to_local(self, vol: Volume, vpath: str, attr: Attr, dir_fd: int,
                             name: str, where: str) -> bool:
        """A local file already in place gets the volume's attributes; whether they
        differed."""
        target = at(dir_fd, name)
        have = self.read_local(target, where)
        if have is None or (not have and not attr.xattrs):
            return False
        want = await volume_xattrs(vol, vpath, attr.xattrs)
        if local_matches(have, want):
            return False
        self.write_local(target, where, want)
        return True


def _acl_last(item: tuple[bytes, bytes]) -> tuple[bool, bytes]:
    """The access ACL sets the mode bits: applied after the others, in a stable order."""
    return item[0].startswith(b"system."), item[0]


async def volume_xattrs(vol: Volume, path: str, flagged: bool,
                        handle: OpenFile | None = None) -> dict[bytes, bytes]:
    """A volume entry's attributes; no store read when its flag says it has none."""
    if not flagged:
        return {}
    return await vol.xattr_items(path, handle=handle)


def unseen(name: bytes) -> bool:
    """trusted.* is invisible locally to all but root: a non-root run that cannot see it
    in the source must not take it for removed (as rsync, which leaves it alone)."""
    return name.startswith(b"trusted.") and os.geteuid() != 0


def local_matches(have: dict[bytes, bytes], want: dict[bytes, bytes]) -> bool:
    """Whether a local file already has want (an LSM label the volume lacks ignored)."""
    return {n: v for n, v in have.items() if n in want or n not in LSM_LABELS} == want


def read_local(target: Local) -> dict[bytes, bytes]:
    """Every attribute of a local file the caller can see (a path's symlink not followed).
    OSError ENOTSUP when the filesystem has none."""
    follow = isinstance(target, int)
    out: dict[bytes, bytes] = {}
    for name in os.listxattr(target, follow_symlinks=follow):
        key = os.fsencode(name)
        try:
            out[key] = os.getxattr(target, key, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:     # removed since it was listed: gone
                raise
    return out


def at(dir_fd: int, name: str) -> str:
    """A path to name in the directory dir_fd that resolves through the descriptor (no
    symlink above it is followed; callers never follow the last component)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def _device(target: Local) -> int | None:
    try:
        return (os.fstat(target) if isinstance(target, int)
                else os.stat(target, follow_symlinks=False)).st_dev
    except OSError:
        return None
