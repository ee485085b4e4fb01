"""The key hierarchy below a DEK: HKDF-SHA256 derivations, one per purpose."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...errors import KeyAccessError
from ..secmem import SecretBuffer, secret
from .constants import (
    INFO_CONFIG,
    INFO_DIRS,
    INFO_FILE,
    INFO_LOCATOR,
    INFO_NAMES,
    INFO_PIN,
    INFO_XATTRS,
)

KeyBytes = bytes | bytearray | memoryview


def _live(key: KeyBytes) -> KeyBytes:
    """An all-zero key is a wiped one: deriving from it would seal data under a public key."""
    if not any(key):
        raise KeyAccessError("a data key was used after it was zeroed (evicted from the cache)")
    return key


def hkdf(key: KeyBytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """RFC 5869 HKDF-SHA256, spelled out with HMAC: every cold stat derives a file key,
    and building cryptography's HKDF object costs several times the two HMACs."""
    prk = hmac.digest(salt if salt is not None else bytes(32), _live(key), "sha256")
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
    return out[:length]


def hkdf_secret(key: KeyBytes, info: bytes, length: int = 32, salt: bytes | None = None) -> SecretBuffer:
    """Like hkdf(), derived straight into locked memory: no Python copy of the result."""
    out = secret(length)
    HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive_into(_live(key), out.view)
    return out


def file_key(dek: KeyBytes, file_id: bytes) -> bytes:
    """Per-file key: the GCM random-nonce bound (2^32 seals) then holds per file, not per volume."""
    return hkdf(dek, INFO_FILE, 32, salt=file_id)


def file_key_secret(dek: KeyBytes, file_id: bytes) -> SecretBuffer:
    """file_key() in locked memory, for keys held while a file is open."""
    return hkdf_secret(dek, INFO_FILE, 32, salt=file_id)


def name_key(dek: KeyBytes) -> bytes:
    """64 bytes: AES-SIV with AES-256 needs two 256-bit keys."""
    return hkdf(dek, INFO_NAMES, 64)


def name_key_secret(dek: KeyBytes) -> SecretBuffer:
    """name_key() in locked memory, for the key a volume holds while open."""
    return hkdf_secret(dek, INFO_NAMES, 64)


def config_mac_key(dek: KeyBytes) -> bytes:
    return hkdf(dek, INFO_CONFIG, 32)


def dir_meta_key(dek: KeyBytes) -> bytes:
    return hkdf(dek, INFO_DIRS, 32)


def dir_meta_key_secret(dek: KeyBytes) -> SecretBuffer:
    """dir_meta_key() in locked memory, for the key a volume holds while open."""
    return hkdf_secret(dek, INFO_DIRS, 32)


def locator_key(dek: KeyBytes) -> bytes:
    """The key of directory locators (crypto/format/locator.py), from the names DEK."""
    return hkdf(dek, INFO_LOCATOR, 32)


def locator_key_secret(dek: KeyBytes) -> SecretBuffer:
    """locator_key() in locked memory, for the key a volume holds while open."""
    return hkdf_secret(dek, INFO_LOCATOR, 32)


def xattr_key(dek: KeyBytes) -> bytes:
    """The key of extended-attribute blobs (crypto/format/xattrs.py), from the names DEK."""
    return hkdf(dek, INFO_XATTRS, 32)


def xattr_key_secret(dek: KeyBytes) -> SecretBuffer:
    """xattr_key() in locked memory, for the key a volume holds while open."""
    return hkdf_secret(dek, INFO_XATTRS, 32)


def pin_fingerprint(dek: KeyBytes) -> str:
    """What clients pin: commits to the config key without revealing anything usable."""
    return hashlib.sha256(hkdf(dek, INFO_PIN, 32)).hexdigest()
