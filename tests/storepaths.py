"""Where a plaintext path's objects are in a format-2 store, found with the volume's key.

Tests that damage or inspect the store name what they touch through these helpers rather
than by hard-coded layout: an entry (a file, or a directory's stub holding its record) is
in its parent directory's storage, and a directory's children are in its own storage
(fs/core/paths.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.constants import DIR_META_NAME
from sealfs.crypto.keys.kms import KeySecrets
from sealfs.fs.core.paths import split_path
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume


async def entry_of(vol: Volume, path: str) -> str:
    """The backend path of a path's entry: a file, or a directory's stub."""
    return (await vol.paths.entry(path))[2]


async def storage_of(vol: Volume, path: str) -> str:
    """The backend path of a directory's storage, where its children's entries are."""
    return (await vol.paths.directory(split_path(path))).storage


async def record_of(vol: Volume, path: str) -> str:
    """The backend path of a directory's record (the root's is at the store root)."""
    info = await vol.paths.directory(split_path(path))
    return f"{info.stub}/{DIR_META_NAME}" if info.stub else DIR_META_NAME


async def _offline(store: Path, keyfile: Path, path: str, what) -> Path:
    vol = await Volume.load(LocalBackend(str(store)), KeySecrets(keyfile=keyfile),
                            pins=PinStore())
    try:
        return store / await what(vol, path)
    finally:
        await vol.close()


def _run(store: Path, keyfile: Path, path: str, what) -> Path:
    """In a thread of its own, so that async tests (already inside trio.run) can call it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(trio.run, _offline, Path(store), keyfile, path, what).result()


def entry_path(store: Path, keyfile: Path, path: str) -> Path:
    """entry_of() of a local store, opening it with keyfile (no volume needed)."""
    return _run(store, keyfile, path, entry_of)


def storage_path(store: Path, keyfile: Path, path: str) -> Path:
    """storage_of() of a local store, opening it with keyfile."""
    return _run(store, keyfile, path, storage_of)


def record_path(store: Path, keyfile: Path, path: str) -> Path:
    """record_of() of a local store, opening it with keyfile."""
    return _run(store, keyfile, path, record_of)


def longest_store_path(root: Path) -> int:
    """The longest backend path in a local store, in characters, relative to its root."""
    return max(len(str(p.relative_to(root))) for p in Path(root).rglob("*"))


def store_depth(root: Path) -> int:
    """The deepest backend path in a local store, in components below its root."""
    return max(len(p.relative_to(root).parts) for p in Path(root).rglob("*"))


async def xattr_blob_of(vol: Volume, path: str) -> str:
    """The backend path of the sealed xattr blob of path's inode."""
    return await vol.xattr_blob_of(path)


def xattr_blob_path(store: Path, keyfile: Path, path: str) -> Path:
    """xattr_blob_of() of a local store, opening it with keyfile."""
    return _run(store, keyfile, path, xattr_blob_of)
