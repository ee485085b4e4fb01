"""Name codec: AES-SIV over zero-padded names, parent directory id as associated data.

Lowercase base32 (not base64) so names stay distinct on case-insensitive servers
(Azure Files, most SMB shares). Padding to 16 bytes hides exact name lengths.
Encodings longer than a component allows take the long-name form: a hash of the
full encoding as the entry name, the full encoding in a sidecar file.
"""

from __future__ import annotations

import base64
import errno
import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from ...errors import IntegrityError
from .constants import (
    LONGNAME_PREFIX,
    LONGNAME_SIDECAR_SUFFIX,
    MAX_NAME_BYTES,
    MAX_SHORT_ENCODED_NAME,
    NAME_PAD,
    RESERVED_PREFIX,
)


def b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


# base32 (a-z2-7) to base32hex (0-9a-v), which int() parses in C: the pure-Python
# base64.b32decode was a third of a cold listing's name work.
_TO_B32HEX = str.maketrans("abcdefghijklmnopqrstuvwxyz234567", "0123456789abcdefghijklmnopqrstuv")
_B32_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_TAIL_BITS = {0: 0, 2: 2, 4: 4, 5: 1, 7: 3}     # len % 8 -> bits past the last whole byte


def b32decode_canonical(text: str) -> bytes | None:
    """b32decode of the one canonical spelling of some bytes (what b32encode gives:
    lowercase, no padding, zero trailing bits); None for any other text."""
    tail = _TAIL_BITS.get(len(text) % 8)
    if tail is None or not text or not _B32_CHARS.issuperset(text):
        return None
    value = int(text.translate(_TO_B32HEX), 32)
    if value & ((1 << tail) - 1):
        return None
    return (value >> tail).to_bytes(len(text) * 5 // 8, "big")


def b32decode(text: str) -> bytes:
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        return base64.b32decode(padded)
    except (ValueError, base64.binascii.Error):
        raise IntegrityError(f"entry {text!r} is not a valid encrypted name") from None


def pad_name(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % NAME_PAD)


def check_name(name: str) -> bytes:
    """Validate a plaintext path component; ENAMETOOLONG beyond 255 bytes as ext4 does."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw or name in (".", "..") or "/" in name or "\0" in name:
        raise OSError(errno.EINVAL, f"invalid file name {name!r}")
    if len(raw) > MAX_NAME_BYTES:
        raise OSError(errno.ENAMETOOLONG, "File name too long")
    return raw


def long_name_entry(encoded: str) -> str:
    digest = hashlib.sha256(encoded.encode("ascii")).digest()
    return LONGNAME_PREFIX + b32encode(digest)


def is_long_name_entry(entry: str) -> bool:
    return entry.startswith(LONGNAME_PREFIX) and "." not in entry[len(LONGNAME_PREFIX):]


def is_sidecar(entry: str) -> bool:
    return entry.startswith(LONGNAME_PREFIX) and entry.endswith(LONGNAME_SIDECAR_SUFFIX) \
        and "." not in entry[len(LONGNAME_PREFIX):-len(LONGNAME_SIDECAR_SUFFIX)]


def entry_of_sidecar(sidecar: str) -> str:
    return sidecar[:-len(LONGNAME_SIDECAR_SUFFIX)]


def sidecar_of(entry: str) -> str:
    return entry + LONGNAME_SIDECAR_SUFFIX


def is_reserved(entry: str) -> bool:
    """Backend entries that are not plain encrypted names (config, dir meta, long names, temps)."""
    return entry.startswith(RESERVED_PREFIX)


# Name encodings remembered per volume (~200 bytes each).
_ENTRY_CACHE = 8192


class NameCipher:
    """Encrypts path components for one volume (one name key)."""

    def __init__(self, name_key: bytes) -> None:
        # The long-name threshold is part of the format (255), never the backend's limit:
        # otherwise the same store would name entries differently through another backend.
        self._siv = AESSIV(name_key)
        self._max_component = MAX_SHORT_ENCODED_NAME
        # (name, dir id) -> entry_for(): the encoding is deterministic, and one file
        # operation often encodes the same name twice (FUSE lookup, then create or unlink;
        # readdir, then lookup of each entry).
        self._entries: dict[tuple[str, bytes], tuple[str, str | None]] = {}

    def encode(self, name: str, dir_id: bytes) -> str:
        """The full encoding (which may be too long for one backend component)."""
        raw = check_name(name)
        return b32encode(self._siv.encrypt(pad_name(raw), [dir_id]))

    def entry_for(self, name: str, dir_id: bytes) -> tuple[str, str | None]:
        """(backend entry name, full encoding if it needs a long-name sidecar else None)."""
        key = (name, dir_id)
        found = self._entries.get(key)
        if found is not None:
            return found
        encoded = self.encode(name, dir_id)
        if len(encoded) <= self._max_component:
            found = (encoded, None)
        else:
            found = (long_name_entry(encoded), encoded)
        self._remember(key, found)
        return found

    def _remember(self, key: tuple[str, bytes], entry: tuple[str, str | None]) -> None:
        if len(self._entries) >= _ENTRY_CACHE:
            del self._entries[next(iter(self._entries))]     # the oldest
        self._entries[key] = entry

    def decode(self, encoded: str, dir_id: bytes) -> str:
        raw = b32decode_canonical(encoded)
        if raw is None:
            # Only the canonical spelling is accepted, so no second entry can decode to
            # the same name (uppercase, or non-zero trailing bits).
            raise IntegrityError(f"entry {encoded[:24]}... is not a canonical encrypted name")
        try:
            padded = self._siv.decrypt(raw, [dir_id])
        except InvalidTag:
            raise IntegrityError(f"name {encoded[:24]}... does not belong in this directory "
                                 "or was modified") from None
        raw = padded.rstrip(b"\0")
        if not raw or b"/" in raw or b"\0" in raw:
            raise IntegrityError("decrypted name is malformed")
        name = raw.decode("utf-8", "surrogateescape")
        if len(encoded) <= self._max_component and name not in (".", ".."):
            self._remember((name, dir_id), (encoded, None))
        return name
