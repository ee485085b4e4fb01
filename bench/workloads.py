"""Workloads run inside a target's mount point; each returns {workload: value}.

Units: throughput in MB/s (10^6 bytes/s), IOPS and file ops in operations/s,
tarball steps in seconds, storage overhead as backend bytes / logical bytes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from .targets import Target, quiesce_disk

MiB = 1024 * 1024
BS = 1 * MiB

# workload -> (unit, higher is better)
WORKLOADS: dict[str, tuple[str, bool]] = {
    "seq_write": ("MB/s", True),
    "seq_read": ("MB/s", True),
    "cold_read": ("MB/s", True),
    "rand_read_4k": ("IOPS", True),
    "rand_write_4k": ("IOPS", True),
    "create": ("files/s", True),
    "stat": ("files/s", True),
    "delete": ("files/s", True),
    "ls_lR": ("files/s", True),
    "find": ("files/s", True),
    "tar_extract": ("s", False),
    "tar_read": ("s", False),
    "tar_delete": ("s", False),
    "peak_rss": ("MiB", False),
    "cpu_write": ("CPU s/GiB", False),      # the server's processes (the gateway bench)
    "cpu_read": ("CPU s/GiB", False),
    "cpu_cold_read": ("CPU s/GiB", False),
    "overhead_large": ("x", False),
    "overhead_small": ("x", False),
}


def _pattern() -> bytes:
    return os.urandom(BS)


def sequential(target: Target, size_mib: int) -> dict[str, float]:
    """Write SIZE MiB in 1 MiB writes (+fsync, close, until on the storage), read it back,
    remount, read it cold."""
    out: dict[str, float] = {}
    path = target.mountpoint / "seq.dat"
    buf = _pattern()
    nbytes = size_mib * MiB
    base = target.storage_bytes()
    quiesce_disk()
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size_mib):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    target.settle(path, nbytes)
    out["seq_write"] = nbytes / 1e6 / (time.perf_counter() - t0)
    out["seq_read"] = _read_all(path, nbytes)
    rss = target.peak_rss()
    if rss is not None:
        out["peak_rss"] = rss / MiB
    target.remount()
    after = target.storage_bytes()
    if base is not None and after is not None:
        out["overhead_large"] = (after - base) / nbytes
    out["cold_read"] = _read_all(path, nbytes)
    os.unlink(path)
    return out


def _read_all(path: Path, expect: int) -> float:
    t0 = time.perf_counter()
    got = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            chunk = os.read(fd, BS)
            if not chunk:
                break
            got += len(chunk)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    if got != expect:
        raise RuntimeError(f"read {got} bytes from {path}, expected {expect}")
    return got / 1e6 / elapsed


def random_io(target: Target, file_mib: int, seconds: float, direct: bool = True) -> dict[str, float]:
    """Random 4 KiB reads, then writes, over a FILE_MIB file for SECONDS each (fio psync).

    direct (O_DIRECT) bypasses the kernel page cache above the mount, so every request
    reaches the filesystem; buffered reads would mostly measure the page cache.
    """
    path = target.mountpoint / "rand.dat"
    buf = _pattern()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(file_mib):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    target.remount()
    out = {}
    if shutil.which("fio"):
        out["rand_read_4k"] = _fio(path, "randread", file_mib, seconds, direct)
        out["rand_write_4k"] = _fio(path, "randwrite", file_mib, seconds, direct)
    else:
        out["rand_read_4k"] = _py_random(path, False, file_mib, seconds)
        out["rand_write_4k"] = _py_random(path, True, file_mib, seconds)
    os.unlink(path)
    return out


class Unsupported(Exception):
    """The target cannot run this workload as asked: a note in the results, not a failure."""


def _fio(path: Path, rw: str, file_mib: int, seconds: float, direct: bool) -> float:
    cmd = ["fio", "--name=bench", f"--filename={path}", f"--size={file_mib}M", "--bs=4k",
           f"--rw={rw}", "--ioengine=psync", f"--direct={int(direct)}", "--time_based",
           f"--runtime={max(1, int(round(seconds)))}", "--fallocate=none", "--invalidate=0",
           "--randrepeat=0", "--norandommap", "--output-format=json"]
    if rw == "randwrite":
        cmd.append("--end_fsync=1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 300)
    if result.returncode != 0:
        if direct and "does not support direct" in result.stderr + result.stdout:
            raise Unsupported("the filesystem refuses O_DIRECT (--buffered measures it "
                              "through the page cache)")
        raise RuntimeError(f"fio {rw} failed: {result.stderr.strip()[-500:]}")
    data = json.loads(result.stdout[result.stdout.index("{"):])
    job = data["jobs"][0]
    side = job["read"] if rw == "randread" else job["write"]
    # iops counts only the timed phase; end_fsync time is included in job runtime for writes
    ios = side["total_ios"]
    runtime_s = max(job.get("job_runtime", side["runtime"]), 1) / 1000
    return ios / runtime_s


def _py_random(path: Path, write: bool, file_mib: int, seconds: float) -> float:
    blocks = file_mib * MiB // 4096
    buf = os.urandom(4096)
    rng = random.Random()
    fd = os.open(path, os.O_RDWR)
    n = 0
    try:
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            for _ in range(64):
                off = rng.randrange(blocks) * 4096
                if write:
                    os.pwrite(fd, buf, off)
                else:
                    os.pread(fd, 4096, off)
                n += 1
            if time.perf_counter() >= deadline:
                break
        if write:
            os.fsync(fd)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    return n / elapsed


def small_files(target: Target, count: int) -> dict[str, float]:
    """Create COUNT 4 KiB files, remount, stat them all, then delete them."""
    d = target.mountpoint / "small"
    d.mkdir()
    payload = os.urandom(4096)
    base = target.storage_bytes()
    names = [str(d / f"f{i:06d}") for i in range(count)]
    t0 = time.perf_counter()
    for name in names:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
    out = {"create": count / (time.perf_counter() - t0)}
    target.remount()
    after = target.storage_bytes()
    if base is not None and after is not None:
        out["overhead_small"] = (after - base) / (count * 4096)
    t0 = time.perf_counter()
    for name in names:
        os.stat(name)
    out["stat"] = count / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for name in names:
        os.unlink(name)
    os.rmdir(d)
    out["delete"] = count / (time.perf_counter() - t0)
    return out


def tree(target: Target, count: int, per_dir: int = 100) -> dict[str, float]:
    """A tree of COUNT small files, PER_DIR to a directory (two levels); after a remount
    each, `ls -lR` (names and every attribute) and `find` (names only) of all of it, cold:
    backups, rsync and `ls -l` live on this row. Files per second of wall time."""
    d = target.mountpoint / "tree"
    d.mkdir()
    payload = b"x" * 100
    dirs = max(1, count // per_dir)
    for i in range(dirs):
        sub = d / f"g{i // 10:03d}" / f"d{i:05d}"
        sub.mkdir(parents=True)
        for j in range(per_dir):
            with open(sub / f"file{j:04d}.txt", "wb") as f:
                f.write(payload)
    out = {}
    for name, argv in (("ls_lR", ["ls", "-lR", str(d)]), ("find", ["find", str(d)])):
        target.remount()
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        out[name] = dirs * per_dir / (time.perf_counter() - t0)
    shutil.rmtree(d)
    return out


def make_tarball(dest: Path) -> Path:
    """An uncompressed tarball of a Python package directory (made once per run)."""
    import rich  # a dependency: hundreds of small and medium .py files
    src = Path(rich.__file__).parent
    path = dest / "pkg.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(src, arcname="pkg", filter=lambda ti: None if "__pycache__" in ti.name else ti)
    return path


def tarball(target: Target, tar_path: Path) -> dict[str, float]:
    """Extract the tarball, remount, read every file, delete the tree (seconds each)."""
    d = target.mountpoint / "tar"
    d.mkdir()
    t0 = time.perf_counter()
    with tarfile.open(tar_path) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(d, filter="data")
        else:
            tar.extractall(d)
    out = {"tar_extract": time.perf_counter() - t0}
    target.remount()
    t0 = time.perf_counter()
    for dirpath, _dirs, files in os.walk(d):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(BS):
                    pass
    out["tar_read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shutil.rmtree(d)
    out["tar_delete"] = time.perf_counter() - t0
    return out
