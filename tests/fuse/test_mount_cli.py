"""`sealfs mount` / `sealfs umount`: refusals, signals, daemon mode, the per-volume lock."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.mounting import SEALFS, Mount, init_store, sealfs


def _stderr(result) -> str:
    return result.stderr.decode(errors="replace").strip()


def test_mount_over_a_non_empty_directory_is_refused(tmp_path, keyfile, mount_env):
    init_store(tmp_path / "s", keyfile, env=mount_env)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "existing").write_text("x")
    result = sealfs("mount", str(tmp_path / "s"), str(tmp_path / "mnt"), "--keyfile", str(keyfile),
                    env=mount_env, check=False)
    assert result.returncode == 2
    assert _stderr(result).count("\n") == 0 and "not empty" in _stderr(result)


def test_mount_with_a_wrong_key_fails_with_one_line_and_mounts_nothing(tmp_path, keyfile, mount_env):
    init_store(tmp_path / "s", keyfile, env=mount_env)
    (tmp_path / "mnt").mkdir()
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)  # secret files: owner only (or they are refused)
    for extra in ((), ("--daemon",)):
        result = sealfs("mount", str(tmp_path / "s"), str(tmp_path / "mnt"), "--keyfile", str(wrong),
                        *extra, env=mount_env, check=False)
        assert result.returncode == 5, _stderr(result)
        assert "wrong keyfile" in _stderr(result) and _stderr(result).count("\n") == 0
        assert not os.path.ismount(tmp_path / "mnt")


def test_mount_on_an_already_mounted_directory_and_a_second_mount_of_the_volume(
        mounted, tmp_path, keyfile, mount_env):
    again = sealfs("mount", str(mounted.store), str(mounted.mountpoint), "--keyfile", str(keyfile),
                   env=mount_env, check=False)
    assert again.returncode == 2 and "already a mount point" in _stderr(again)
    other = tmp_path / "other"
    other.mkdir()
    second = sealfs("mount", str(mounted.store), str(other), "--keyfile", str(keyfile),
                    env=mount_env, check=False)
    assert second.returncode == 2 and "already mounted on this host" in _stderr(second)
    assert not os.path.ismount(other)


def test_missing_dev_fuse_is_reported(tmp_path, keyfile, mount_env):
    """Run the mount in a private mount namespace where /dev/fuse is hidden."""
    init_store(tmp_path / "s", keyfile, env=mount_env)
    (tmp_path / "mnt").mkdir()
    script = (f"mount -t tmpfs none /dev && exec {' '.join(SEALFS)} mount {tmp_path / 's'} "
              f"{tmp_path / 'mnt'} --keyfile {keyfile}")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, env=mount_env)
    assert result.returncode == 2
    assert "/dev/fuse is missing" in _stderr(result)


def test_sigterm_flushes_everything_and_unmounts(tmp_path, keyfile, mount_env):
    init_store(tmp_path / "s", keyfile, env=mount_env)
    mount = Mount(tmp_path / "s", tmp_path / "mnt", keyfile, env=mount_env).start()
    data = os.urandom(300_000)
    fd = os.open(mount.mountpoint / "f", os.O_CREAT | os.O_WRONLY)
    os.write(fd, data)
    os.close(fd)
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(30) == 0
    mount.proc = None
    assert not os.path.ismount(mount.mountpoint)
    assert sealfs("cat", str(tmp_path / "s"), "/f", "--keyfile", str(keyfile), env=mount_env).stdout == data


def test_daemon_returns_once_live_and_umount_waits_for_the_flush(tmp_path, keyfile, mount_env):
    init_store(tmp_path / "s", keyfile, env=mount_env)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sealfs("mount", str(tmp_path / "s"), str(mnt), "--keyfile", str(keyfile), "--daemon",
           env=mount_env)
    try:
        assert os.path.ismount(mnt)
        payload = os.urandom(5 * 1024 * 1024)
        (mnt / "big").write_bytes(payload)
    finally:
        sealfs("umount", str(mnt), env=mount_env)
    assert not os.path.ismount(mnt)
    out = sealfs("cat", str(tmp_path / "s"), "/big", "--keyfile", str(keyfile), env=mount_env)
    assert out.stdout == payload


def test_umount_of_something_not_mounted_is_an_error(tmp_path, mount_env):
    result = sealfs("umount", str(tmp_path), env=mount_env, check=False)
    assert result.returncode == 2 and "not mounted" in _stderr(result)


def test_mount_from_a_config_file(tmp_path, keyfile, mount_env):
    init_store(tmp_path / "s", keyfile, env=mount_env)
    (tmp_path / "mnt").mkdir()
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "vol.toml").write_text(f'store = "{tmp_path / "s"}"\nmountpoint = "{tmp_path / "mnt"}"\n'
                                   f'keyfile = "{keyfile}"\n')
    env = dict(mount_env, SEALFS_CONFIG_DIR=str(conf))
    sealfs("mount", "--config", "vol", "--daemon", env=env)
    try:
        (tmp_path / "mnt" / "x").write_text("via config")
    finally:
        sealfs("umount", "--config", "vol", env=env)
    assert sealfs("cat", "--config", "vol", "/x", env=env).stdout == b"via config"


def test_a_dead_mount_is_cleared_on_the_next_mount(tmp_path, keyfile, mount_env):
    init_store(tmp_path / "s", keyfile, env=mount_env)
    mount = Mount(tmp_path / "s", tmp_path / "mnt", keyfile, env=mount_env).start()
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(10)
    mount.proc = None
    time.sleep(0.1)
    mount.start()
    (mount.mountpoint / "alive").write_text("yes")
    mount.stop()


@pytest.mark.hard_links
def test_rekey_leaves_hard_links_whole_on_every_backend(mounted):
    """rekey finds hard links by the link counts a directory walk reports; SMB listings carry
    none, and re-sealing a linked file by copy would split its names into separate files."""
    m = mounted.mountpoint
    (m / "d").mkdir()
    (m / "a").write_bytes(b"linked")
    os.link(m / "a", m / "d" / "b")
    (m / "solo").write_bytes(b"alone")
    mounted.stop()
    key = ("--keyfile", str(mounted.keyfile))
    sealfs("keys", "add-dek", str(mounted.store), *key, env=mounted.env)
    out = sealfs("rekey", str(mounted.store), *key, env=mounted.env).stdout.decode()
    assert "re-sealed 1 files" in out and "2 hard-linked files skipped" in out, out  # per name
    mounted.start()
    assert os.path.samefile(m / "a", m / "d" / "b") and (m / "d" / "b").stat().st_nlink == 2
    assert (m / "d" / "b").read_bytes() == b"linked" and (m / "solo").read_bytes() == b"alone"
