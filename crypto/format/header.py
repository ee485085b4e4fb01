"""File header and directory metadata: fixed-size records with sealed POSIX metadata.

SMB and Azure Files keep no mode, uid, gid or file kind, so sealfs keeps them sealed
here and every backend shows the same POSIX view. The header also records the size
at the last commit, which is how a reader tells a crash mid-resize from tampering
(docs/FORMAT.md, "Crash ordering").
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import IntegrityError
from .constants import (
    DIR_AAD_PREFIX,
    DIR_ID_SIZE,
    DIR_RECORD_VERSION,
    FILE_FORMAT_VERSION,
    FILE_ID_SIZE,
    MAGIC,
    META_FLAG_XATTRS,
    NONCE_SIZE,
    TAG_SIZE,
)


class Kind(enum.IntEnum):
    REGULAR = 1
    SYMLINK = 2
    FIFO = 3
    CHAR = 4
    BLOCK = 5
    SOCKET = 6
    DIRECTORY = 7


@dataclass(frozen=True)
class Metadata:
    """POSIX metadata the backend cannot be trusted (or able) to keep."""

    kind: Kind
    mode: int          # permission bits only (07777)
    uid: int
    gid: int
    rdev: int = 0
    size: int = 0      # logical size at the last commit (files only)
    # The last change of this metadata or of the names linking to it (ns; 0: never
    # recorded). The backend's change time cannot be trusted to show it: SMB servers
    # report the write time there, and a directory's mode lives in sealfs.dir.
    ctime_ns: int = 0
    # META_FLAG_XATTRS: the inode has an xattr blob. Sealed here so that the kernel's
    # getxattr of security.capability before every write is answered from memory.
    flags: int = 0

    @property
    def has_xattrs(self) -> bool:
        return bool(self.flags & META_FLAG_XATTRS)

    def with_(self, **changes) -> Metadata:
        return replace(self, **changes)


_META = struct.Struct(">BB2xIIIQQQ")          # 40 bytes
_KNOWN_FLAGS = META_FLAG_XATTRS
_FILE_PUBLIC = struct.Struct(">6sBxI16s")    # magic, version, reserved, dek id, file id
_DIR_PUBLIC = struct.Struct(">6sBc")         # magic, version, b"D" (the dir id is sealed)

META_SIZE = _META.size
HEADER_PUBLIC_SIZE = _FILE_PUBLIC.size
HEADER_SIZE = HEADER_PUBLIC_SIZE + NONCE_SIZE + META_SIZE + TAG_SIZE
DIR_META_SIZE = _DIR_PUBLIC.size + NONCE_SIZE + DIR_ID_SIZE + META_SIZE + TAG_SIZE


def _pack_meta(meta: Metadata) -> bytes:
    return _META.pack(int(meta.kind), meta.flags, meta.mode & 0o7777, meta.uid, meta.gid, meta.rdev,
                      meta.size, meta.ctime_ns)


def _unpack_meta(raw: bytes) -> Metadata:
    kind, flags, mode, uid, gid, rdev, size, ctime_ns = _META.unpack(raw)
    try:
        kind = Kind(kind)
    except ValueError:
        raise IntegrityError(f"unknown file kind {kind}") from None
    if flags & ~_KNOWN_FLAGS:
        raise IntegrityError(f"unknown metadata flags {flags:#x}")
    return Metadata(kind, mode, uid, gid, rdev, size, ctime_ns, flags)


@dataclass(frozen=True)
class FileHeader:
    dek_id: int
    file_id: bytes
    meta: Metadata


def read_header_public(raw: bytes) -> tuple[int, bytes]:
    """(dek id, file id) from a header, before any key is known."""
    if len(raw) < HEADER_SIZE:
        raise IntegrityError("file header is truncated")
    magic, version, dek_id, file_id = _FILE_PUBLIC.unpack_from(raw)
    if magic != MAGIC:
        raise IntegrityError("file header has a bad magic")
    if version != FILE_FORMAT_VERSION:
        raise IntegrityError(f"file header has unsupported version {version}")
    return dek_id, file_id


def seal_header(file_key: bytes, header: FileHeader, nonce: bytes | None = None) -> bytes:
    public = _FILE_PUBLIC.pack(MAGIC, FILE_FORMAT_VERSION, header.dek_id, header.file_id)
    nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
    return public + nonce + AESGCM(file_key).encrypt(nonce, _pack_meta(header.meta), public)


def open_header(file_key: bytes, raw: bytes) -> FileHeader:
    dek_id, file_id = read_header_public(raw)
    public = raw[:HEADER_PUBLIC_SIZE]
    nonce = raw[HEADER_PUBLIC_SIZE:HEADER_PUBLIC_SIZE + NONCE_SIZE]
    try:
        meta = AESGCM(file_key).decrypt(nonce, raw[HEADER_PUBLIC_SIZE + NONCE_SIZE:HEADER_SIZE], public)
    except InvalidTag:
        raise IntegrityError("file header failed authentication") from None
    return FileHeader(dek_id, file_id, _unpack_meta(meta))


def new_file_id() -> bytes:
    return os.urandom(FILE_ID_SIZE)


def new_dir_id() -> bytes:
    return os.urandom(DIR_ID_SIZE)


def seal_dir_meta(dir_key: bytes, dir_id: bytes, meta: Metadata, nonce: bytes | None = None) -> bytes:
    """A format-2 directory record: the dir id is sealed with the metadata, so the store
    does not say which storage (d/<locator of the id>) holds a directory's children."""
    if len(dir_id) != DIR_ID_SIZE:
        raise ValueError("a directory id is 16 bytes")
    public = _DIR_PUBLIC.pack(MAGIC, DIR_RECORD_VERSION, b"D")
    nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
    aad = DIR_AAD_PREFIX + public
    return public + nonce + AESGCM(dir_key).encrypt(nonce, dir_id + _pack_meta(meta), aad)


def open_dir_meta(dir_key: bytes, raw: bytes) -> tuple[bytes, Metadata]:
    """(dir id, metadata) of a directory record; IntegrityError for anything else (a
    format-1 record included: its version byte is 1)."""
    if len(raw) != DIR_META_SIZE:
        raise IntegrityError("directory metadata has the wrong size")
    magic, version, tag = _DIR_PUBLIC.unpack_from(raw)
    if magic != MAGIC or tag != b"D" or version != DIR_RECORD_VERSION:
        raise IntegrityError("directory metadata has a bad magic or version")
    public = raw[:_DIR_PUBLIC.size]
    nonce = raw[_DIR_PUBLIC.size:_DIR_PUBLIC.size + NONCE_SIZE]
    try:
        plain = AESGCM(dir_key).decrypt(nonce, raw[_DIR_PUBLIC.size + NONCE_SIZE:],
                                        DIR_AAD_PREFIX + public)
    except InvalidTag:
        raise IntegrityError("directory metadata failed authentication") from None
    meta = _unpack_meta(plain[DIR_ID_SIZE:])
    if meta.kind != Kind.DIRECTORY:
        raise IntegrityError("directory metadata is not of a directory")
    return plain[:DIR_ID_SIZE], meta
