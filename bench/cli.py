"""The bench's one entry point for the product CLI: `sealfs bench` parses its options
(fs/cli/bench.py) and hands them to run(), imported only when the command runs, so that
the shipped filesystem never loads the bench and the bench may change without it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .report import write_all
from .runner import BenchConfig, run_bench


def run(*, chunk_sizes: list[str], backends: list[str], peers: list[str], size_mib: int,
        seconds: float, files: int, direct: bool, tarball: bool, repeats: int, out: Path,
        smb_url: str | None, smb_password: str | None, workdir: Path | None,
        console: Console, azfiles_url: str | None = None, latency_ms: float = 0,
        tree_files: int = 0) -> list[str]:
    """Bench every (target, repeat), write results.json/.csv/.md and charts into out, and
    return the target runs that failed (each one line); the others are still written."""
    cfg = BenchConfig(chunk_sizes=chunk_sizes, backends=backends, peers=peers, size_mib=size_mib,
                      seconds=seconds, files=files, direct=direct, tarball=tarball, repeats=repeats,
                      out=out, smb_url=smb_url, smb_password=smb_password, workdir=workdir,
                      azfiles_url=azfiles_url, latency_ms=latency_ms, tree_files=tree_files)
    if cfg.workdir:
        cfg.workdir.mkdir(parents=True, exist_ok=True)
    results = run_bench(cfg, console)
    paths = write_all(results, cfg.out)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return results.errors
