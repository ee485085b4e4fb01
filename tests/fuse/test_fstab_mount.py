"""The fstab path: `mount -t fuse.sealfs STORE MNT -o keyfile=...` through the mount helper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.mounting import init_store, sealfs

HELPER_LINK = Path("/sbin/mount.fuse.sealfs")


def test_mount_t_fuse_sealfs_mounts_through_the_helper(tmp_path: Path, keyfile: Path, mount_env: dict):
    helper = Path(sys.executable).parent / "mount.fuse.sealfs"
    assert helper.exists(), "pip install created no mount.fuse.sealfs script"
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    init_store(store, keyfile, env=mount_env)
    mnt.mkdir()
    existed = HELPER_LINK.exists() or HELPER_LINK.is_symlink()
    if not existed:
        HELPER_LINK.symlink_to(helper)
    try:
        env = dict(mount_env, PATH=f"{helper.parent}:{os.environ['PATH']}")
        result = subprocess.run(["mount", "-t", "fuse.sealfs", str(store), str(mnt),
                                 "-o", f"keyfile={keyfile},_netdev"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        try:
            assert os.path.ismount(mnt)
            (mnt / "via-fstab").write_text("hello")
            assert f"{keyfile}" not in Path("/proc/mounts").read_text()
        finally:
            sealfs("umount", str(mnt), env=env)
        assert sealfs("cat", str(store), "/via-fstab", "--keyfile", str(keyfile),
                      env=env).stdout == b"hello"
    finally:
        if not existed:
            HELPER_LINK.unlink()
