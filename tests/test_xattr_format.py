"""The sealed xattr blob (docs/FORMAT.md section 12) and the flags byte of the sealed
metadata (section 7.2), byte for byte."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealfs.crypto.format import header as hdr
from sealfs.crypto.format.kdf import locator_key, xattr_key
from sealfs.crypto.format.locator import locator
from sealfs.crypto.format.xattrs import (
    KIND_DIR,
    KIND_FILE,
    blob_path,
    open_xattrs,
    pack_entries,
    seal_xattrs,
    xattr_locator,
)
from sealfs.errors import IntegrityError

DEK = bytes(range(32))
KEY = xattr_key(DEK)
FID = bytes(range(16, 32))
NONCE = bytes(12)


def test_layout_is_as_documented():
    entries = {b"user.b": b"2", b"user.a": b""}
    blob = seal_xattrs(KEY, KIND_FILE, FID, entries, NONCE)
    assert blob[:8] == b"SEALFS\x02X" and blob[8:20] == NONCE
    payload = b"\x06user.a" + struct.pack(">I", 0) + b"\x06user.b" + struct.pack(">I", 1) + b"2"
    assert pack_entries(entries) == payload
    aad = b"sealfs.xattr" + blob[:8] + b"f" + FID
    assert AESGCM(KEY).decrypt(NONCE, blob[20:], aad) == payload
    assert open_xattrs(KEY, KIND_FILE, FID, blob) == entries


def test_locator_is_keyed_and_never_a_storage_locator():
    lk = locator_key(DEK)
    loc = xattr_locator(lk, KIND_DIR, FID)
    assert blob_path(loc) == f"x/{loc[:2]}/{loc[2:]}" and len(loc) == 32
    assert loc != locator(lk, FID)
    assert loc != xattr_locator(lk, KIND_FILE, FID)


def test_blob_of_another_inode_or_altered_fails():
    blob = seal_xattrs(KEY, KIND_FILE, FID, {b"user.k": b"v"})
    with pytest.raises(IntegrityError):
        open_xattrs(KEY, KIND_FILE, bytes(16), blob)        # moved to another file
    with pytest.raises(IntegrityError):
        open_xattrs(KEY, KIND_DIR, FID, blob)               # a directory of the same id
    for i in (0, 7, 10, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 1
        with pytest.raises(IntegrityError):
            open_xattrs(KEY, KIND_FILE, FID, bytes(bad))
    with pytest.raises(IntegrityError):
        open_xattrs(KEY, KIND_FILE, FID, blob[:-1])


def test_limits():
    pack_entries({b"user." + b"n" * 250: b"v" * 65536})
    with pytest.raises(ValueError):
        pack_entries({b"user." + b"n" * 251: b""})
    with pytest.raises(ValueError):
        pack_entries({b"user.a": b"v" * 65537})
    pack_entries({f"user.{i}".encode(): b"v" * 65536 for i in range(5)})   # 320 KiB
    with pytest.raises(ValueError):
        pack_entries({f"user.{i}".encode(): b"v" * 65536 for i in range(6)})


def test_metadata_flags_byte():
    meta = hdr.Metadata(hdr.Kind.REGULAR, 0o644, 1, 2, flags=1)
    raw = hdr.seal_header(KEY, hdr.FileHeader(1, FID, meta), NONCE)
    plain = AESGCM(KEY).decrypt(NONCE, raw[40:], raw[:28])
    assert plain[1] == 1 and plain[2:4] == b"\0\0"
    assert hdr.open_header(KEY, raw).meta.has_xattrs
    forged = bytearray(plain)
    forged[1] = 2                                           # an unknown flag
    sealed = raw[:40] + AESGCM(KEY).encrypt(NONCE, bytes(forged), raw[:28])
    with pytest.raises(IntegrityError):
        hdr.open_header(KEY, sealed)
