"""POSIX ACLs in their xattr form (system.posix_acl_access / _default), and the rules a
filesystem that stores them must apply itself: the kernel enforces an ACL it is given
(FUSE_POSIX_ACL with default_permissions), but leaves to the filesystem the mode bits an
ACL implies, the ACL a chmod implies, and the ACLs a new entry inherits (fs/fuse/acl.c,
"Fuse userspace is responsible for updating access permissions in the inode").
"""

from __future__ import annotations

import errno
import struct

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"

USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_VERSION = 2
_HEAD = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_NO_ID = 0xFFFFFFFF

Entry = tuple[int, int, int]          # (tag, perm, id)


def parse(value: bytes) -> list[Entry]:
    """The entries of an ACL xattr, checked as the kernel's posix_acl_valid does: EINVAL
    for anything else."""
    if len(value) < _HEAD.size or (len(value) - _HEAD.size) % _ENTRY.size \
            or _HEAD.unpack_from(value)[0] != _VERSION:
        raise OSError(errno.EINVAL, "not a POSIX ACL")
    entries = [_ENTRY.unpack_from(value, off)
               for off in range(_HEAD.size, len(value), _ENTRY.size)]
    tags = [tag for tag, _perm, _id in entries]
    order = {USER_OBJ: 0, USER: 1, GROUP_OBJ: 2, GROUP: 3, MASK: 4, OTHER: 5}
    if any(tag not in order or perm & ~7 for tag, perm, _id in entries) \
            or [order[t] for t in tags] != sorted(order[t] for t in tags) \
            or any(tags.count(t) != 1 for t in (USER_OBJ, GROUP_OBJ, OTHER)) \
            or tags.count(MASK) > 1 \
            or (tags.count(MASK) == 0 and (USER in tags or GROUP in tags)):
        raise OSError(errno.EINVAL, "invalid POSIX ACL")
    for tag in (USER, GROUP):
        ids = [i for t, _p, i in entries if t == tag]
        if len(ids) != len(set(ids)):
            raise OSError(errno.EINVAL, "invalid POSIX ACL")
    return [(t, p, i if t in (USER, GROUP) else _NO_ID) for t, p, i in entries]


def pack(entries: list[Entry]) -> bytes:
    return _HEAD.pack(_VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def is_minimal(entries: list[Entry]) -> bool:
    """Whether the ACL says no more than the mode bits (it is then not stored, as ext4)."""
    return len(entries) == 3


def _perm(entries: list[Entry], tag: int) -> int | None:
    return next((p for t, p, _i in entries if t == tag), None)


def mode_of(entries: list[Entry], mode: int) -> int:
    """The mode an access ACL implies: owner from USER_OBJ, group class from MASK (or
    GROUP_OBJ without one), other from OTHER; the other bits of mode kept."""
    group = _perm(entries, MASK)
    if group is None:
        group = _perm(entries, GROUP_OBJ)
    return (mode & ~0o777) | _perm(entries, USER_OBJ) << 6 | group << 3 | _perm(entries, OTHER)


def chmod(entries: list[Entry], mode: int) -> list[Entry]:
    """The access ACL after a chmod (the kernel's posix_acl_chmod): owner, group class
    (the mask if there is one) and other take the new mode's bits."""
    has_mask = any(t == MASK for t, _p, _i in entries)
    group_tag = MASK if has_mask else GROUP_OBJ
    new = {USER_OBJ: mode >> 6 & 7, group_tag: mode >> 3 & 7, OTHER: mode & 7}
    return [(t, new.get(t, p), i) for t, p, i in entries]


def inherit(default: list[Entry], mode: int) -> tuple[list[Entry], int]:
    """(access ACL, mode) of a new entry in a directory with this default ACL (the
    kernel's posix_acl_create): the ACL's owner, group class and other are limited by
    mode, and mode by them."""
    out = []
    for tag, perm, ident in default:
        if tag == USER_OBJ:
            perm &= mode >> 6 & 7
        elif tag == OTHER:
            perm &= mode & 7
        out.append((tag, perm, ident))
    group_tag = MASK if any(t == MASK for t, _p, _i in out) else GROUP_OBJ
    out = [(t, p & (mode >> 3 & 7) if t == group_tag else p, i) for t, p, i in out]
    return out, mode_of(out, mode)
