"""smbprotocol's file API in a process of its own, for the bench's smbprotocol peers.

A process of its own because the baseline moved with the bench process's allocator:
smbprotocol builds every 1 MiB message from fresh megabyte bytes objects, whose page
faults dominate its write path, and what those faults cost varied threefold within one
day on the same code (docs/PERFORMANCE.md, "Numbers behind the code"). `--reuse-buffers`
applies the glibc settings sealfs's own one-shot commands use (fs/cli/malloc.py), which
take the faults out: that is the stricter baseline, `smbprotocol-reuse`.

The session is set up before the clock starts; the time printed covers open, the
1 MiB writes or reads, and close. A write ends with an SMB FLUSH before the close, the
same work as the mount's fsync and smb-raw's flush (Samba's `strict sync` makes it an
fsync on the server). The password comes from SEALFS_SMB_PASSWORD, never argv.

    python -m sealfs.bench.smbprotocol_client write|read|remove HOST PORT USER SHARE_PATH [--mib N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MiB = 1024 * 1024


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="smbprotocol_client")
    p.add_argument("op", choices=("write", "read", "remove"))
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("user")
    p.add_argument("path", help=r"\\HOST\SHARE\DIR\NAME")
    p.add_argument("--mib", type=int, default=0, help="MiB to write")
    p.add_argument("--reuse-buffers", action="store_true")
    return p.parse_args(argv)


def _transfer(smbclient, args: argparse.Namespace) -> dict[str, float]:
    t0 = time.perf_counter()
    moved = 0
    if args.op == "write":
        data = os.urandom(MiB)
        with smbclient.open_file(args.path, mode="wb", buffering=0, port=args.port) as f:
            for _ in range(args.mib):
                moved += f.write(data)
            f.flush()            # an SMB FLUSH, as the mount's fsync and smb-raw send

    elif args.op == "read":
        with smbclient.open_file(args.path, mode="rb", port=args.port) as f:
            while block := f.read(MiB):
                moved += len(block)
    else:
        smbclient.remove(args.path, port=args.port)
    return {"seconds": time.perf_counter() - t0, "bytes": moved}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.reuse_buffers:
        from ..fs.cli.malloc import reuse_large_buffers
        reuse_large_buffers()
    import smbclient
    try:
        smbclient.register_session(args.host, username=args.user,
                                   password=os.environ.get("SEALFS_SMB_PASSWORD"),
                                   port=args.port, encrypt=True)
        print(json.dumps(_transfer(smbclient, args)))
    except Exception as e:  # noqa: BLE001 (one line for the bench's TargetError, never a traceback)
        print(f"smbprotocol {args.op} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 1
    finally:
        smbclient.reset_connection_cache(fail_on_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
