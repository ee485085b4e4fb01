"""Chunk codec: AES-256-GCM per chunk, AAD binding file id, index and final flag.

The final flag (the STREAM construction) makes a file cut at a chunk boundary fail
to authenticate, which gocryptfs and rclone crypt cannot detect.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import IntegrityError
from .constants import CHUNK_AAD_PREFIX, CHUNK_OVERHEAD, FILE_FORMAT_VERSION, NONCE_SIZE

_INDEX_FINAL = struct.Struct(">QB")


def chunk_aad(file_id: bytes, index: int, final: bool) -> bytes:
    return (CHUNK_AAD_PREFIX + bytes([FILE_FORMAT_VERSION]) + file_id
            + _INDEX_FINAL.pack(index, 1 if final else 0))


class ChunkCipher:
    """Seals and opens the chunks of one file (one file key, one file id)."""

    __slots__ = ("_aead", "file_id")

    def __init__(self, file_key: bytes, file_id: bytes) -> None:
        self._aead = AESGCM(file_key)
        self.file_id = file_id

    def seal(self, index: int, plaintext: bytes | memoryview, final: bool,
             nonce: bytes | None = None) -> bytes:
        """nonce is for test vectors only; normal sealing draws 12 random bytes."""
        nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, bytes(plaintext), chunk_aad(self.file_id, index, final))

    def seal_into(self, index: int, plaintext: bytes | bytearray | memoryview, final: bool,
                  out: memoryview) -> None:
        """Seal straight into out (exactly len(plaintext) + 28 bytes): no copies on the
        write path, where whole runs of chunks go to the backend as one buffer."""
        nonce = os.urandom(NONCE_SIZE)
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plaintext, chunk_aad(self.file_id, index, final),
                                out[NONCE_SIZE:])

    def open(self, index: int, sealed: bytes | memoryview, final: bool) -> bytes:
        if len(sealed) < CHUNK_OVERHEAD:
            raise IntegrityError(f"chunk {index} is truncated ({len(sealed)} bytes)")
        sealed = memoryview(sealed)
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:],
                                      chunk_aad(self.file_id, index, final))
        except InvalidTag:
            raise IntegrityError(f"chunk {index} failed authentication") from None

    def verifies(self, index: int, sealed: bytes | memoryview, final: bool) -> bool:
        try:
            self.open(index, sealed, final)
            return True
        except IntegrityError:
            return False
