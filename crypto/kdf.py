"""The key hierarchy below a DEK: HKDF-SHA256 derivations, one per purpose."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .constants import INFO_CONFIG, INFO_DIRS, INFO_FILE, INFO_NAMES, INFO_PIN


def hkdf(key: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def file_key(dek: bytes, file_id: bytes) -> bytes:
    """Per-file key: the GCM random-nonce bound (2^32 seals) then holds per file, not per volume."""
    return hkdf(dek, INFO_FILE, 32, salt=file_id)


def name_key(dek: bytes) -> bytes:
    """64 bytes: AES-SIV with AES-256 needs two 256-bit keys."""
    return hkdf(dek, INFO_NAMES, 64)


def config_mac_key(dek: bytes) -> bytes:
    return hkdf(dek, INFO_CONFIG, 32)


def dir_meta_key(dek: bytes) -> bytes:
    return hkdf(dek, INFO_DIRS, 32)


def pin_fingerprint(dek: bytes) -> str:
    """What clients pin: commits to the config key without revealing anything usable."""
    return hashlib.sha256(hkdf(dek, INFO_PIN, 32)).hexdigest()
