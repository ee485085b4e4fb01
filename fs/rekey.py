"""Key lifecycle on a volume: DEK usage, add-dek, KEK rotation, re-sealing old files.

KEK rotation and add-dek touch only sealfs.json (re-wrapping is cheap and no data
moves); `rekey` re-seals the files still under older DEKs, each into a new file that
replaces the old one by rename, so an interrupted run leaves every file whole and a
rerun simply continues.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import trio

from ..crypto.config import WrappedDek
from ..crypto.header import HEADER_SIZE, Kind, read_header_public
from ..crypto.kms import KekProvider
from .volume import Volume

log = logging.getLogger("sealfs.rekey")

REKEY_TEMP_PREFIX = ".sealfs-rekey."
COPY_BLOCK = 4 * 1024 * 1024


async def dek_usage(volume: Volume) -> Counter[int]:
    """How many files each DEK seals (read from the public part of every header)."""
    usage: Counter[int] = Counter()
    for path, attr in await volume.walk():
        if attr.kind != Kind.DIRECTORY:
            usage[await file_dek_id(volume, path)] += 1
    return usage


async def file_dek_id(volume: Volume, path: str) -> int:
    _parent, _name, bpath, _long = await volume._entry(path)
    handle = await volume.backend.open(bpath)
    try:
        raw = await volume.backend.read(handle, 0, HEADER_SIZE)
    finally:
        await volume.backend.close(handle)
    return read_header_public(raw)[0]


async def add_dek(volume: Volume) -> WrappedDek:
    """A new DEK under the current KEK; new files use it from now on."""
    wrapped, _plain = await trio.to_thread.run_sync(volume.broker.wrap_new_dek)
    volume.config.deks.append(wrapped)
    volume.config.current_dek_id = wrapped.id
    await volume.save_config()
    return wrapped


async def rotate_kek(volume: Volume, new_provider: KekProvider, allow_purgeable: bool = False) -> None:
    """Re-wrap every DEK under new_provider; no file is re-encrypted."""
    await trio.to_thread.run_sync(new_provider.check, allow_purgeable)
    new_deks = await trio.to_thread.run_sync(volume.broker.rewrap_all, new_provider)
    volume.broker.adopt(new_provider, new_deks)
    await volume.save_config()


@dataclass
class RekeyResult:
    resealed: int = 0
    skipped_links: int = 0
    already_current: int = 0


async def rekey(volume: Volume, progress: Callable[[str], None] | None = None) -> RekeyResult:
    """Re-seal every file that is not under the current DEK."""
    current = volume.config.current_dek_id
    result = RekeyResult()
    for path, attr in await volume.walk():
        name = path.rsplit("/", 1)[-1]
        if name.startswith(REKEY_TEMP_PREFIX):
            await volume.unlink(path)          # left by an interrupted run
            continue
        if attr.kind == Kind.DIRECTORY:
            continue
        if await file_dek_id(volume, path) == current:
            result.already_current += 1
            continue
        if attr.nlink > 1:
            log.warning("/%s has %d hard links: not re-sealed (a copy would split the links)",
                        path, attr.nlink)
            result.skipped_links += 1
            continue
        await _reseal(volume, path, attr)
        result.resealed += 1
        if progress is not None:
            progress(path)
    return result


async def _reseal(volume: Volume, path: str, attr) -> None:
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    temp = (parent + "/" if parent else "") + REKEY_TEMP_PREFIX + os.urandom(6).hex()
    source = await volume.open(path)
    try:
        target = await volume.create(temp, attr.mode, attr.uid, attr.gid, kind=attr.kind,
                                     rdev=attr.rdev)
        try:
            offset = 0
            while block := await source.read(offset, COPY_BLOCK):
                await target.write(offset, block)
                offset += len(block)
            await target.fsync()
        finally:
            await target.close()
    finally:
        await source.close()
    await volume.setattr(temp, atime_ns=attr.atime_ns, mtime_ns=attr.mtime_ns)
    await volume.rename(temp, path)
