"""`sealfs bench` end to end with tiny sizes: every output exists, one row per
(chunk size, workload) for sealfs and per workload for the plain peer, all positive."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(90)]

SEALFS_WORKLOADS = {"seq_write", "seq_read", "cold_read", "rand_read_4k", "rand_write_4k",
                    "create", "stat", "delete", "overhead_large", "overhead_small"}


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                    reason="needs /dev/fuse and fusermount3")
def test_bench_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-m", "sealfs.fs.cli", "bench", "--size", "8", "--files", "30",
         "--seconds", "1", "--chunk-sizes", "4K,64K", "--repeats", "1", "--peers", "plain",
         "--out", str(out), "--workdir", str(work)],
        capture_output=True, text=True, timeout=85)
    assert result.returncode == 0, result.stderr[-3000:]

    for name in ("results.json", "results.csv", "results.md", "throughput.png", "iops.png",
                 "overhead.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((out / "results.json").read_text())
    assert data["errors"] == []
    rows = data["rows"]
    sealfs = [r for r in rows if r["kind"] == "sealfs"]
    keys = [(r["chunk_size"], r["workload"]) for r in sealfs]
    assert len(keys) == len(set(keys)), "one row per (chunk size, workload)"
    assert set(keys) == {(cs, w) for cs in ("4K", "64K") for w in SEALFS_WORKLOADS}
    plain = {r["workload"] for r in rows if r["target"] == "plain"}
    assert {"seq_write", "seq_read", "cold_read", "rand_read_4k", "create"} <= plain
    for r in rows:
        assert r["median"] > 0 and r["min"] > 0 and r["max"] >= r["median"] >= r["min"], r
        assert r["n"] == 1

    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert all(float(r["median"]) > 0 for r in csv_rows)

    md = (out / "results.md").read_text()
    assert "sealfs-local-4K" in md and "sealfs-local-64K" in md and "| seq_write |" in md
    # nothing left mounted or behind in the work directory
    assert not any(os.path.ismount(p) for p in work.rglob("mnt"))
    assert list(work.iterdir()) == [] or all(not any(p.iterdir()) for p in work.iterdir())
