"""Cold lookups answered from one listing of their directory.

A program that stats names it never listed (a backup reading a manifest, `stat` of a
list of paths) sends the kernel's LOOKUPs one name at a time, and each cold one costs a
header read. When a run of them falls in one directory, one listing of that directory
and one batched read of its headers (HeaderCache.prefetch) answer the rest. The listed
stats are kept no longer than the kernel's own entry timeout (fs/fuse/tuning.py
ENTRY_TIMEOUT), for which it would keep these same answers itself, and only while this
volume changes nothing: any local change drops them all (HeaderCache forgets, the
write paths of Volume and OpenFiles), so a lookup after our own create, write, chmod,
rename or unlink never sees a listing taken before it. A name missing from a listing is
looked up as usual: the cache never answers that a name does not exist.
"""

from __future__ import annotations

import time

from ...backends.base import BackendStat

#: Seconds a listing answers lookups: at most the kernel's entry timeout, so that a
#: listed stat is never older than an answer the kernel could still be giving itself.
LISTING_LIFETIME = 1.0
#: The listings kept at once (the most recent ones), and the largest listed.
MAX_LISTINGS = 32
MAX_ENTRIES = 20_000
#: A directory's headers are read in one batch once the cold lookups in it reach this
#: share of its files: the batch then costs at most this many header reads per lookup
#: already paid, however few names of a large directory are looked up.
BATCH_RATIO = 8


class ColdListings:
    """Recent listings of directories whose names are being looked up cold, by their
    storage: when each was taken and the stat of each of their entries."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        #: storage -> (when listed, entry -> its stat, its files, headers fetched)
        self._listings: dict[str, tuple[float, dict[str, BackendStat],
                                        list[tuple[str, BackendStat]], bool]] = {}
        #: storage -> (cold lookups in the current run, when the last one was)
        self._colds: dict[str, tuple[int, float]] = {}
        #: bumped by every clear(): a listing asked for before a change is not kept
        self.generation = 0

    def stat_of(self, storage: str, entry: str) -> BackendStat | None:
        """The listed stat of entry if its directory was listed (and its headers fetched)
        within the lifetime and nothing changed here since; None otherwise."""
        listing = self._listings.get(storage)
        if listing is None or not listing[3]:
            return None
        if self._clock() - listing[0] > LISTING_LIFETIME:
            del self._listings[storage]
            return None
        return listing[1].get(entry)

    def note_cold(self, storage: str) -> None:
        """Count a cold lookup in this directory that found a file (a lookup of a name
        about to be created finds nothing: a run of creates never lists)."""
        run = self.run(storage)
        if len(self._colds) > 4 * MAX_LISTINGS and storage not in self._colds:
            self._colds.clear()
        self._colds[storage] = (run + 1, self._clock())

    def run(self, storage: str) -> int:
        """How many cold lookups found a file here in the current run (one without a gap
        longer than the lifetime)."""
        count, last = self._colds.get(storage, (0, 0.0))
        return count if self._clock() - last <= LISTING_LIFETIME else 0

    def listed(self, storage: str) -> tuple[float, dict[str, BackendStat],
                                            list[tuple[str, BackendStat]]] | None:
        """When a listing of this storage still within its lifetime was taken, its
        entries and its files."""
        listing = self._listings.get(storage)
        if listing is None or self._clock() - listing[0] > LISTING_LIFETIME:
            return None
        return listing[0], listing[1], listing[2]

    def keep(self, storage: str, entries: dict[str, BackendStat],
             files: list[tuple[str, BackendStat]], taken: float, generation: int,
             fetched: bool) -> None:
        """Keep a listing taken at time taken (a clock() reading from before the listing
        was asked for, when the generation was this); fetched once its files' headers
        were read. Not kept if anything changed here since it was asked for."""
        if generation != self.generation or len(entries) > MAX_ENTRIES:
            return
        self._listings.pop(storage, None)
        while len(self._listings) >= MAX_LISTINGS:
            del self._listings[next(iter(self._listings))]
        self._listings[storage] = (taken, entries, files, fetched)

    def now(self) -> float:
        return self._clock()

    def clear(self) -> None:
        """Something changed on this volume: no listing taken before may answer, and a
        run of cold lookups starts again (creates, each after a lookup, never list)."""
        self.generation += 1
        self._listings.clear()
        self._colds.clear()

    def end_run(self, storage: str) -> None:
        """A lookup here found nothing (a name about to be created): the run is over."""
        self._colds.pop(storage, None)
