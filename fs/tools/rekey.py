"""Key lifecycle on a volume: DEK usage, add-dek, KEK rotation, re-sealing old files.

KEK rotation and add-dek touch only sealfs.json (re-wrapping is cheap and no data
moves); `rekey` re-seals the files still under older DEKs, each into a new file that
replaces the old one by rename, so an interrupted run leaves every file whole and a
rerun simply continues.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ...crypto.format.config import WrappedDek
from ...crypto.format.header import Kind
from ...crypto.keys.kms import KekProvider
from ..core.volume import Attr, ListingProblem, Volume

log = logging.getLogger("sealfs.rekey")

#: rekey's temporaries: sealfs.tmp.rekey.<random>, a reserved backend name no user's
#: file can have (a plaintext prefix like ".sealfs-rekey." would take users' files for
#: leftovers and delete them)
TEMP_TAG = "rekey."
COPY_BLOCK = 4 * 1024 * 1024


@dataclass
class DekUsage:
    """How many files each DEK seals, and the entries that could not be read: while there
    are problems the counts are a lower bound, and no DEK may be taken for unused."""

    files: Counter[int] = field(default_factory=Counter)
    problems: list[ListingProblem] = field(default_factory=list)


async def dek_usage(volume: Volume) -> DekUsage:
    """How many files each DEK seals (read from the public part of every header)."""
    listing = await volume.walk()
    usage = DekUsage(problems=list(listing.problems))
    for path, attr in listing:
        if attr.kind != Kind.DIRECTORY:
            usage.files[await volume.file_dek_id(path)] += 1
    return usage


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
    #: entries that failed authentication: not re-sealed, so their DEK may still be in use
    problems: list[ListingProblem] = field(default_factory=list)


async def rekey(volume: Volume, progress: Callable[[str], None] | None = None) -> RekeyResult:
    """Re-seal every file that is not under the current DEK."""
    current = volume.config.current_dek_id
    listing = await volume.walk()
    result = RekeyResult(problems=list(listing.problems))
    for directory in ["", *(path for path, attr in listing if attr.is_dir)]:
        await volume.remove_temps(directory, TEMP_TAG)    # left by an interrupted run
    for path, attr in listing:
        if attr.kind == Kind.DIRECTORY:
            continue
        if await volume.file_dek_id(path) == current:
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


async def _reseal(volume: Volume, path: str, attr: Attr) -> None:
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    source = await volume.open(path)
    try:
        target, temp = await volume.create_temp(parent, attr.mode, attr.uid, attr.gid,
                                                tag=TEMP_TAG, kind=attr.kind, rdev=attr.rdev)
        try:
            try:
                offset = 0
                while block := await source.read(offset, COPY_BLOCK):
                    await target.write(offset, block)
                    offset += len(block)
                await volume.setattr(path, atime_ns=attr.atime_ns, mtime_ns=attr.mtime_ns,
                                     handle=target)
                await target.fsync()
            finally:
                await target.close()
        except BaseException:
            with trio.CancelScope(shield=True):
                await volume.discard_temp(temp)
            raise
    finally:
        await source.close()
    await volume.place_temp(temp, path)
