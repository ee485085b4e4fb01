"""The `smb-raw` peer: sequential throughput of SmbBackend itself, no crypto and no FUSE above it.

It is the ceiling a sealfs-smb mount is measured against in the same run (the goal: the
mount reaches 80% of it). It writes the way the mount's write-back does: write_many
batches of 1 MiB pieces (each batch the size of a file's dirty limit, its WRITEs
pipelined), then flush and close; it reads back with read_many batches of the same
size; then reconnects, evicts the share file from the server's page cache (when the
share is local) and reads it cold. Connection settings are SmbBackend's defaults, the
same as `sealfs mount` without options.

    python -m sealfs.bench.smb_raw [--size-mib 256] [--batch-mib 8] [--connections 2]

runs it alone against a throwaway smbd (needs root and smbd).
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from pathlib import Path
from typing import Any

import trio

from ..backends.registry import BackendOptions, open_backend
from ..backends.smb import SmbBackend
from ..fs.core.files import FileTuning
from .samba import SmbShare
from .targets import DirectTarget, drop_file_cache, quiesce_disk

MiB = 1024 * 1024
PIECE = MiB                                   # one write()/read() of the mount workloads
BATCH = FileTuning.file_dirty_limit           # what one write-back flush hands write_many


class SmbRawTarget(DirectTarget):
    """SmbBackend against the share the smb backend is benched on."""

    name = "smb-raw"
    backend = "smb"

    def __init__(self, work: Path, share: SmbShare, batch: int = BATCH,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(work)
        self.share = share
        self.batch = max(PIECE, batch // PIECE * PIECE)
        self.extra = dict(extra or {})          # smb_* settings; empty = the mount's defaults
        self.storage = share.local
        self.notes["pattern"] = (f"write_many of {self.batch // MiB} x 1 MiB pieces per call, then "
                                 f"flush + close; read_many of {self.batch // MiB} x 1 MiB per call")

    def _backend(self) -> SmbBackend:
        password = self.share.password
        backend = open_backend(self.share.url, BackendOptions(smb_password=lambda: password,
                                                              extra=self.extra))
        assert isinstance(backend, SmbBackend)
        return backend

    def sequential(self, size_mib: int) -> dict[str, float]:
        return trio.run(self._sequential, size_mib * MiB)

    async def _sequential(self, nbytes: int) -> dict[str, float]:
        name = f"smb-raw-{secrets.token_hex(4)}.dat"
        out: dict[str, float] = {}
        backend = self._backend()
        try:
            await backend.connect()
            self.notes["negotiated"] = backend.negotiated
            quiesce_disk()
            t0 = time.perf_counter()
            await self._write(backend, name, nbytes)
            out["seq_write"] = nbytes / 1e6 / (time.perf_counter() - t0)
            out["seq_read"] = await self._timed_read(backend, name, nbytes)
        finally:
            await backend.aclose()
        if self.share.local is not None:
            drop_file_cache(self.share.local / name)
        backend = self._backend()
        try:
            await backend.connect()
            out["cold_read"] = await self._timed_read(backend, name, nbytes)
            await backend.unlink(name)
        finally:
            await backend.aclose()
        return out

    async def _write(self, backend: SmbBackend, name: str, nbytes: int) -> None:
        data = os.urandom(PIECE)
        handle = await backend.open(name, write=True, create=True)
        try:
            for start in range(0, nbytes, self.batch):
                end = min(start + self.batch, nbytes)
                await backend.write_many(handle, [(off, data[:min(PIECE, end - off)])
                                                  for off in range(start, end, PIECE)])
            await backend.flush(handle)
        finally:
            await backend.close(handle)

    async def _timed_read(self, backend: SmbBackend, name: str, nbytes: int) -> float:
        t0 = time.perf_counter()
        handle = await backend.open(name)
        got = 0
        try:
            for start in range(0, nbytes, self.batch):
                end = min(start + self.batch, nbytes)
                blobs = await backend.read_many(handle, [(off, min(PIECE, end - off))
                                                         for off in range(start, end, PIECE)])
                got += sum(len(b) for b in blobs)
        finally:
            await backend.close(handle)
        elapsed = time.perf_counter() - t0
        if got != nbytes:
            raise RuntimeError(f"smb-raw read {got} bytes of {name}, expected {nbytes}")
        return nbytes / 1e6 / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--batch-mib", type=int, default=BATCH // MiB)
    p.add_argument("--io-mib", type=float, default=None, help="smb_io_size (default: the backend's)")
    p.add_argument("--connections", type=int, default=None, help="smb_connections (default: the backend's)")
    args = p.parse_args()
    extra: dict[str, Any] = {}
    if args.io_mib is not None:
        extra["smb_io_size"] = int(args.io_mib * MiB)
    if args.connections is not None:
        extra["smb_connections"] = args.connections
    import tempfile

    from .samba import BenchSamba
    with BenchSamba() as server, tempfile.TemporaryDirectory(prefix="sealfs-smb-raw-") as work:
        with SmbRawTarget(Path(work), server.share(), args.batch_mib * MiB, extra) as target:
            values = target.sequential(args.size_mib)
        print(target.notes["negotiated"])
        print(", ".join(f"{k} {v:.0f} MB/s" for k, v in values.items()))


if __name__ == "__main__":
    main()
