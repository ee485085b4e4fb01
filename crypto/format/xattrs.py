"""Extended attributes at rest: one sealed blob per inode (docs/FORMAT.md, section 12).

All of an inode's attributes are sealed together, under one AEAD whose associated data
names the inode (kind and id): a blob copied to another inode fails to open, and no
single attribute can be moved, dropped or swapped without breaking the tag. The blob
lives at a keyed locator of the inode's id, never of a path, so hard links share it and
a rename keeps it; without the key nobody can tell whose blob it is.
"""

from __future__ import annotations

import base64
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import IntegrityError
from .constants import (
    DIR_ID_SIZE,
    FILE_ID_SIZE,
    LOCATOR_CHARS,
    LOCATOR_SPLIT,
    MAGIC,
    NONCE_SIZE,
    TAG_SIZE,
    XATTR_AAD_PREFIX,
    XATTR_BLOB_VERSION,
    XATTR_DIR,
    XATTR_NAME_MAX,
    XATTR_TOTAL_MAX,
    XATTR_VALUE_MAX,
)

KIND_FILE = b"f"        # the inode is a file (any non-directory): id = its file id
KIND_DIR = b"d"         # the inode is a directory: id = its directory id

_PUBLIC = struct.Struct(">6sBc")               # magic, version, b"X"
PUBLIC_SIZE = _PUBLIC.size
#: The largest blob a reader accepts: the largest payload, sealed.
BLOB_MAX = PUBLIC_SIZE + NONCE_SIZE + XATTR_TOTAL_MAX + TAG_SIZE


def _check_owner(kind: bytes, ident: bytes) -> None:
    size = {KIND_FILE: FILE_ID_SIZE, KIND_DIR: DIR_ID_SIZE}.get(kind)
    if size is None or len(ident) != size:
        raise ValueError("an xattr blob belongs to a file (b'f') or directory (b'd') id")


def xattr_locator(key: bytes | bytearray | memoryview, kind: bytes, ident: bytes) -> str:
    """L = base32(HMAC-SHA256(locator key, b"x" || kind || id))[:32], lower case. The
    b"x" prefix makes the input 18 bytes, never a 16-byte directory id: no blob shares
    a locator with a storage."""
    _check_owner(kind, ident)
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(b"x" + kind + ident)
    return base64.b32encode(h.finalize()).decode("ascii").lower()[:LOCATOR_CHARS]


def blob_path(loc: str) -> str:
    """The backend path of the blob whose locator is loc: x/<2 chars>/<30 chars>."""
    return f"{XATTR_DIR}/{loc[:LOCATOR_SPLIT]}/{loc[LOCATOR_SPLIT:]}"


def is_blob_path(bpath: str) -> bool:
    """Whether bpath has the shape of a blob path (fsck walks x/ with it)."""
    parts = bpath.split("/")
    alphabet = set("abcdefghijklmnopqrstuvwxyz234567")
    return (len(parts) == 3 and parts[0] == XATTR_DIR and len(parts[1]) == LOCATOR_SPLIT
            and len(parts[2]) == LOCATOR_CHARS - LOCATOR_SPLIT
            and set(parts[1] + parts[2]) <= alphabet)


def pack_entries(entries: dict[bytes, bytes]) -> bytes:
    """Entries sorted by name: u8 name length, name, u32 value length, value. Sorted, so
    the same attributes always make the same payload (test vectors pin it)."""
    out = bytearray()
    for name in sorted(entries):
        value = entries[name]
        if not 0 < len(name) <= XATTR_NAME_MAX or b"\0" in name:
            raise ValueError(f"bad xattr name {name!r}")
        if len(value) > XATTR_VALUE_MAX:
            raise ValueError("an xattr value is at most 64 KiB")
        out += bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    if len(out) > XATTR_TOTAL_MAX:
        raise ValueError("the xattrs of one inode exceed their limit")
    return bytes(out)


def unpack_entries(payload: bytes) -> dict[bytes, bytes]:
    """The inverse of pack_entries; anything it would not write is an IntegrityError
    (the payload authenticated, so only a writer bug or a forged key gets here)."""
    entries: dict[bytes, bytes] = {}
    pos, last = 0, b""
    while pos < len(payload):
        n = payload[pos]
        name = payload[pos + 1:pos + 1 + n]
        pos += 1 + n
        if n == 0 or len(name) != n or b"\0" in name or (entries and name <= last):
            raise IntegrityError("xattr blob has a bad or unsorted name")
        if pos + 4 > len(payload):
            raise IntegrityError("xattr blob is truncated")
        (size,) = struct.unpack_from(">I", payload, pos)
        pos += 4
        if size > XATTR_VALUE_MAX or pos + size > len(payload):
            raise IntegrityError("xattr blob has a bad value length")
        entries[name] = payload[pos:pos + size]
        pos += size
        last = name
    return entries


def _aad(public: bytes, kind: bytes, ident: bytes) -> bytes:
    return XATTR_AAD_PREFIX + public + kind + ident


def seal_xattrs(key: bytes | bytearray | memoryview, kind: bytes, ident: bytes,
                entries: dict[bytes, bytes], nonce: bytes | None = None) -> bytes:
    """b"SEALFS" u8(2) b"X" || nonce || GCM(key, nonce, payload, aad) (ciphertext || tag),
    aad = b"sealfs.xattr" || bytes[0:8] || kind || id."""
    _check_owner(kind, ident)
    public = _PUBLIC.pack(MAGIC, XATTR_BLOB_VERSION, b"X")
    nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(nonce, pack_entries(entries), _aad(public, kind, ident))
    return public + nonce + sealed


def open_xattrs(key: bytes | bytearray | memoryview, kind: bytes, ident: bytes,
                raw: bytes) -> dict[bytes, bytes]:
    """The attributes of the inode (kind, ident) from its blob; IntegrityError when the
    blob is malformed, of another inode, or altered."""
    _check_owner(kind, ident)
    if not PUBLIC_SIZE + NONCE_SIZE + TAG_SIZE <= len(raw) <= BLOB_MAX:
        raise IntegrityError("xattr blob has a bad size")
    magic, version, tag = _PUBLIC.unpack_from(raw)
    if magic != MAGIC or tag != b"X" or version != XATTR_BLOB_VERSION:
        raise IntegrityError("xattr blob has a bad magic or version")
    public = raw[:PUBLIC_SIZE]
    nonce = raw[PUBLIC_SIZE:PUBLIC_SIZE + NONCE_SIZE]
    try:
        payload = AESGCM(key).decrypt(nonce, raw[PUBLIC_SIZE + NONCE_SIZE:],
                                             _aad(public, kind, ident))
    except InvalidTag:
        raise IntegrityError("xattr blob failed authentication (altered, or another "
                             "inode's)") from None
    return unpack_entries(payload)
