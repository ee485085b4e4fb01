"""A full store: the writer is told (ENOSPC), nothing committed is lost, and space coming
back makes the mount usable again. The store is a real size-capped tmpfs, so the error
comes from the kernel under sealfs, in the background write-back or in a flush."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.mounting import Mount, init_store, sealfs

MiB = 1024 * 1024


@pytest.fixture
def small_store(tmp_path: Path):
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "sealfs-full-test", str(store)],
                   check=True)
    try:
        yield store
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


def _write_stream(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), MiB):
            os.write(fd, data[off:off + MiB])
        os.fsync(fd)
    finally:
        os.close(fd)


def test_full_store_fails_the_writer_and_keeps_every_committed_byte(
        small_store, tmp_path, keyfile, mount_env):
    init_store(small_store, keyfile, env=mount_env)
    keep = os.urandom(4 * MiB)
    big = os.urandom(48 * MiB)
    with Mount(small_store, tmp_path / "mnt", keyfile, env=mount_env) as mount:
        mnt = mount.mountpoint
        (mnt / "keep").write_bytes(keep)
        with pytest.raises(OSError) as raised:
            _write_stream(mnt / "big", big)
        assert raised.value.errno == errno.ENOSPC
        assert (mnt / "keep").read_bytes() == keep
        # What reached the store before it filled up reads back intact (never EIO), and
        # is a prefix of what was written.
        landed = (mnt / "big").read_bytes()
        assert big.startswith(landed)
        os.unlink(mnt / "big")
        again = os.urandom(8 * MiB)
        _write_stream(mnt / "again", again)
        assert (mnt / "again").read_bytes() == again
    assert "Traceback" not in mount.log_text()
    check = sealfs("fsck", str(small_store), "--keyfile", str(keyfile), env=mount_env, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    out = sealfs("cat", str(small_store), "/keep", "--keyfile", str(keyfile), env=mount_env)
    assert out.stdout == keep
