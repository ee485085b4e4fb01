"""Where a directory's children live in a format-2 store: its storage, named by a locator.

Every directory's children sit in one flat place, d/<L[0:2]>/<L[2:32]>, where L is a
keyed function of the directory's id (sealed in its record). So a store path is bounded
whatever the visible depth, and without the key nobody can tell which storage belongs to
which directory: the tree's shape is hidden, and renaming a directory moves no storage.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes, hmac

from .constants import DIR_ID_SIZE, LOCATOR_CHARS, LOCATOR_SPLIT, STORAGE_DIR


def locator(key: bytes | bytearray | memoryview, dir_id: bytes) -> str:
    """L = base32(HMAC-SHA256(locator key, dir id))[:32], lower case (a-z2-7, 160 bits)."""
    if len(dir_id) != DIR_ID_SIZE:
        raise ValueError("a directory id is 16 bytes")
    h = hmac.HMAC(key, hashes.SHA256())      # takes the key from locked memory as is
    h.update(dir_id)
    mac = h.finalize()
    return base64.b32encode(mac).decode("ascii").lower()[:LOCATOR_CHARS]


def storage_path(loc: str) -> str:
    """The backend path of the storage whose locator is loc: d/<2 chars>/<30 chars>."""
    return f"{STORAGE_DIR}/{loc[:LOCATOR_SPLIT]}/{loc[LOCATOR_SPLIT:]}"


def fanout_path(loc: str) -> str:
    """The directory above a storage (shared by the storages whose locators start alike)."""
    return f"{STORAGE_DIR}/{loc[:LOCATOR_SPLIT]}"


def is_storage_path(bpath: str) -> bool:
    """Whether bpath has the shape of a storage path (fsck looks for orphans with it)."""
    parts = bpath.split("/")
    alphabet = set("abcdefghijklmnopqrstuvwxyz234567")
    return (len(parts) == 3 and parts[0] == STORAGE_DIR and len(parts[1]) == LOCATOR_SPLIT
            and len(parts[2]) == LOCATOR_CHARS - LOCATOR_SPLIT
            and set(parts[1] + parts[2]) <= alphabet)
