"""The mount's peak memory stays bounded while a 1 GiB file streams through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.mounting import Mount, init_store

pytestmark = pytest.mark.fuse

LIMIT = 300 * 1024 * 1024
TOTAL = 1024 * 1024 * 1024
BLOCK = 1024 * 1024


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_peak_rss_under_300_mib_writing_1_gib(tmp_path: Path, keyfile: Path, mount_env: dict):
    store = tmp_path / "store"
    init_store(store, keyfile, "64K", env=mount_env)
    mount = Mount(store, tmp_path / "mnt", keyfile, env=mount_env).start()
    try:
        pid = mount.proc.pid
        block = os.urandom(BLOCK)
        peak = 0
        fd = os.open(mount.mountpoint / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(TOTAL // BLOCK):
                assert os.write(fd, block) == BLOCK
                if i % 64 == 0:
                    peak = max(peak, vm_hwm(pid))
                    assert peak < LIMIT, f"VmHWM {peak >> 20} MiB after {i} MiB written"
            os.fsync(fd)
        finally:
            os.close(fd)
        peak = max(peak, vm_hwm(pid))
        assert os.stat(mount.mountpoint / "big").st_size == TOTAL
        assert peak < LIMIT, f"VmHWM {peak >> 20} MiB"
        with open(mount.mountpoint / "big", "rb") as f:       # spot-check the data
            f.seek(TOTAL - BLOCK)
            assert f.read() == block
        mount.stop()
    finally:
        if mount.proc is not None:
            mount.kill()
