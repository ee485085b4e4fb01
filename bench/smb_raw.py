"""Raw SmbBackend throughput against a throwaway local smbd (no crypto above the backend).

    python -m sealfs.bench.smb_raw [--size-mib 256] [--io-mib 1] [--batch-mib 8] [--connections 2]

Writes SIZE sequentially through write_many in BATCH pieces (as the volume's write-back
would), flushes, then reads it back with read_many. Needs root, smbd (apt-get install samba).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import trio

MiB = 1024 * 1024


async def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from servers.samba import SambaServer, new_store

    with SambaServer() as server:
        store = new_store(server)
        backend = store.backend(smb_io_size=int(args.io_mib * MiB), smb_connections=args.connections)
        await backend.connect()
        print(f"negotiated: {backend.negotiated}")
        chunk = int(args.chunk_kib * 1024)
        data = os.urandom(chunk)
        batch = int(args.batch_mib * MiB) // chunk
        total = args.size_mib * MiB
        offsets = list(range(0, total, chunk))
        files = [await backend.open(f"bench{i}", write=True, create=True) for i in range(args.files)]

        async def writer(h, part):
            for i in range(0, len(part), batch):
                await backend.write_many(h, [(off, data) for off in part[i:i + batch]])

        async def reader(h, part):
            for i in range(0, len(part), batch):
                await backend.read_many(h, [(off, chunk) for off in part[i:i + batch]])

        part = offsets[: len(offsets) // args.files]  # each file gets SIZE / files bytes
        t0 = time.perf_counter()
        async with trio.open_nursery() as n:
            for h in files:
                n.start_soon(writer, h, part)
        for h in files:
            await backend.flush(h)
        t1 = time.perf_counter()
        async with trio.open_nursery() as n:
            for h in files:
                n.start_soon(reader, h, part)
        t2 = time.perf_counter()
        for h in files:
            await backend.close(h)
        await backend.aclose()
        print(f"{args.size_mib} MiB, chunk {args.chunk_kib} KiB, batch {args.batch_mib} MiB, io {args.io_mib} MiB,"
              f" {args.connections} conn, {args.files} file(s): write {total / MiB / (t1 - t0):.0f} MiB/s,"
              f" read {total / MiB / (t2 - t1):.0f} MiB/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--chunk-kib", type=float, default=1024)
    p.add_argument("--batch-mib", type=float, default=8)
    p.add_argument("--io-mib", type=float, default=1)
    p.add_argument("--connections", type=int, default=2)
    p.add_argument("--files", type=int, default=1)
    trio.run(run, p.parse_args())


if __name__ == "__main__":
    main()
