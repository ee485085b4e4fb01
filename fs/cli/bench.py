"""`sealfs bench`: chunk sizes x backends, against plain / gocryptfs / securefs / rclone crypt / cryfs and,
for smb, the raw SMB backend and rclone crypt over rclone's smb client.

The options are parsed here; the bench itself (bench/) is imported only when the command
runs, through its one entry point bench.cli.run."""

from __future__ import annotations

import os
from pathlib import Path

import click

DEFAULT_PEERS = ("plain,pyfuse3,gocryptfs,securefs,rclone,cryfs,"
                 "smb-raw,smbprotocol,smbprotocol-reuse,smbclient,rclone-smb,azfiles-sdk,azfiles-raw")
BACKENDS = ("local", "smb", "azfiles", "gateway")


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def register(cli, Context, key_options, opened_volume, run) -> None:  # every cli module's signature
    @cli.command(name="bench")
    @click.option("--chunk-sizes", default="4K,16K,64K,256K,1M,4M", show_default=True,
                  help="Comma-separated sealfs chunk sizes (each a fresh volume).")
    @click.option("--backends", default="local", show_default=True,
                  help="local, smb, azfiles and/or gateway (smb starts a throwaway encrypted smbd unless "
                       "--smb-url, azfiles the Azure Files test server of a source checkout unless "
                       "--azfiles-url; gateway: smbclient put/get through `sealfs gateway` (root), against "
                       "the same smbd configuration on a plain directory and the local mount used directly).")
    @click.option("--smb-url", default=None, metavar="URL",
                  help="smb://USER@HOST[:PORT]/SHARE[/DIR] to bench against (password: SEALFS_SMB_PASSWORD).")
    @click.option("--azfiles-url", default=None, metavar="URL",
                  help="https://ACCOUNT.file.core.windows.net/SHARE[/DIR] to bench against (credential: "
                       "SEALFS_AZURE_SAS, SEALFS_AZURE_ACCOUNT_KEY or Entra ID, as for mount).")
    @click.option("--latency-ms", type=float, default=0, show_default=True,
                  help="Round-trip time to add in front of the smb and azfiles servers (a delaying TCP "
                       "proxy, half each way), as over a WAN.")
    @click.option("--size", "size_mib", type=int, default=256, show_default=True,
                  help="MiB for the sequential write/read/cold-read test (1 MiB I/O); 0 skips.")
    @click.option("--seconds", type=float, default=5, show_default=True,
                  help="Seconds each for random 4 KiB read and write IOPS (fio psync); 0 skips.")
    @click.option("--direct/--buffered", default=True, show_default=True,
                  help="Random 4 KiB I/O with O_DIRECT (reaches the filesystem) or buffered.")
    @click.option("--files", type=int, default=1000, show_default=True,
                  help="Small 4 KiB files to create/stat/delete; 0 skips.")
    @click.option("--tree-files", type=int, default=0, show_default=True,
                  help="Files of a tree (100 to a directory) listed cold with `ls -lR` and "
                       "`find` after a remount each; 0 skips.")
    @click.option("--tarball/--no-tarball", default=False, show_default=True,
                  help="Extract, read and delete a tarball of a Python package.")
    @click.option("--repeats", type=int, default=1, show_default=True,
                  help="Runs per target (reported as median, min, max).")
    @click.option("--peers", default=DEFAULT_PEERS, show_default=True,
                  help="Reference filesystems measured in the same run (skipped if not installed); "
                       "pyfuse3 is a pass-through over sealfs's own FUSE stack without crypto; "
                       "smb-raw (the SMB backend alone), smbprotocol (the library's file API; "
                       "-reuse: with glibc reusing its buffers), "
                       "smbclient (Samba's C client), all sequential only, and rclone-smb (rclone "
                       "crypt over rclone's smb client) run on the same share when smb is benched; "
                       "azfiles-sdk (the azure-storage-file-share SDK's upload_file/download_file) and "
                       "azfiles-raw (the Azure Files backend alone), sequential only, when azfiles is.")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench-results",
                  show_default=True, help="Directory for results.json/.csv/.md and PNG charts.")
    @click.option("--workdir", type=click.Path(file_okay=False), default=None,
                  help="Where stores and mount points go (default: system temp dir).")
    def bench(chunk_sizes: str, backends: str, smb_url: str | None, azfiles_url: str | None,
              latency_ms: float, size_mib: int, seconds: float, files: int, tree_files: int,
              direct: bool, tarball: bool, repeats: int, peers: str, out_dir: str,
              workdir: str | None) -> None:
        """Benchmark sealfs mounts per chunk size and backend against peer filesystems."""
        from rich.console import Console

        from ...bench.cli import run as run_bench
        from .units import format_size, parse_size

        try:
            sizes = [format_size(parse_size(s)) for s in _csv(chunk_sizes)]
        except ValueError as exc:
            raise click.UsageError(f"--chunk-sizes: {exc}") from None
        backend_list = _csv(backends)
        bad = [b for b in backend_list if b not in BACKENDS]
        if bad:
            raise click.UsageError(f"--backends: unknown {', '.join(bad)} ({', '.join(BACKENDS)})")
        if repeats < 1:
            raise click.UsageError("--repeats must be at least 1")
        if smb_url and "smb" not in backend_list:
            backend_list.append("smb")
        if azfiles_url and "azfiles" not in backend_list:
            backend_list.append("azfiles")
        if latency_ms < 0:
            raise click.UsageError("--latency-ms must not be negative")
        if latency_ms and azfiles_url:
            raise click.UsageError("--latency-ms cannot go in front of a real share (its TLS name is "
                                   "not this machine's); a real share has real latency")
        errors = run_bench(chunk_sizes=sizes, backends=backend_list, peers=_csv(peers),
                           size_mib=size_mib, seconds=seconds, files=files, direct=direct,
                           tarball=tarball, repeats=repeats, out=Path(out_dir), smb_url=smb_url,
                           smb_password=os.environ.get("SEALFS_SMB_PASSWORD"),
                           workdir=Path(workdir) if workdir else None, console=Console(stderr=True),
                           azfiles_url=azfiles_url, latency_ms=latency_ms, tree_files=tree_files)
        if errors:
            raise click.ClickException(f"{len(errors)} target run(s) failed: " + "; ".join(errors)[:2000])
