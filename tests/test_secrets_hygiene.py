"""The client's own secrets: locked and zeroed keys, hardened processes, secret files that
only their owner can read, a daemon whose environment holds no secret, a private log."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import time
from pathlib import Path

import pytest

from sealfs.crypto.format.config import VolumeConfig
from sealfs.crypto.keys.broker import KeyBroker, wrap_new_dek
from sealfs.crypto.keys.kms import KeySecrets
from sealfs.crypto.keys.kms_local import KeyfileKek
from sealfs.crypto.keys.secret_files import SecretFileModeError
from sealfs.fs.cli.keysource import smb_password_source
from tests.conftest import SEALFS_CMD, run_sealfs
from tests.fuse.conftest import (  # noqa: F401 (fixtures)
    azfiles_process,
    backend_kind,
    chunk_size,
    mount_env,
    mounted,
)

PASSPHRASE = "correct horse battery staple"


def _status(pid: int | str, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _vmlck_kb(pid: int | str = "self") -> int:
    return int(_status(pid, "VmLck").split()[0])


def _core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4]                 # the soft limit
    raise AssertionError("no core limit line")


def _allow_cores() -> None:
    """The child starts with cores allowed, as on a developer's machine."""
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


# -- keys in locked memory, zeroed on expiry and close ---------------------------------------

def test_cached_dek_is_locked_and_every_handed_out_copy_is_zero_after_ttl(keyfile: Path) -> None:
    provider = KeyfileKek(keyfile)
    wrapped, plain = wrap_new_dek(provider, 1)
    config = VolumeConfig.new(65536, provider.config_entry(), wrapped)
    now = [1000.0]
    broker = KeyBroker(provider, config, ttl=60, clock=lambda: now[0])
    key = broker.dek_sync(1)
    assert bytes(key) == bytes(plain)
    assert _vmlck_kb() > 0, "the key cache is not mlock()ed"
    now[0] += 61
    assert broker.evict_expired() == 1
    assert bytes(key) == bytes(32), "a copy of the DEK outlived its TTL"
    broker.close()


async def test_volume_and_file_keys_are_zeroed_on_close(make_volume, open_volume) -> None:
    vol = await open_volume(await make_volume())
    f = await vol.create("/f")
    await f.write(0, b"secret")
    file_key = f.state._file_key          # white-box: the per-file key sealfs holds
    dir_key = vol.paths._dir_key
    assert any(bytes(file_key)) and any(bytes(dir_key))
    await f.close()
    assert bytes(file_key) == bytes(len(file_key)), "the file key outlived the open file"
    await vol.close()
    assert bytes(dir_key) == bytes(len(dir_key)), "the directory key outlived the volume"


# -- every command that loads keys is hardened -------------------------------------------------

@pytest.fixture
def pass_store(tmp_path: Path) -> tuple[Path, Path]:
    """A passphrase volume holding /f, and a local file and directory to copy with."""
    store = tmp_path / "pstore"
    pf = tmp_path / "pass.txt"
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)
    assert run_sealfs("init", store, "--passphrase-file", pf, "--scrypt-n", "1024").code == 0
    (tmp_path / "local").write_bytes(b"plaintext")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a")
    (tmp_path / "dst").mkdir()
    assert run_sealfs("put", store, tmp_path / "local", "/f", "--passphrase-file", pf).code == 0
    return store, tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("command", ["put", "get", "sync", "restore"])
def test_one_shot_commands_run_without_core_dumps(pass_store, command: str) -> None:
    """The passphrase comes through a FIFO, so the command waits, keys not yet loaded, while
    we read its limits; then it gets the passphrase and finishes normally."""
    store, tmp = pass_store
    fifo = tmp / "pass.fifo"
    os.mkfifo(fifo, 0o600)
    args = {"put": ["put", store, tmp / "local", "/g"], "get": ["get", store, "/f", tmp / "out"],
            "sync": ["sync", tmp / "src", store], "restore": ["restore", store, tmp / "dst"]}[command]
    proc = subprocess.Popen([*SEALFS_CMD, *map(str, args), "--passphrase-file", str(fifo)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_allow_cores)
    try:
        deadline = time.monotonic() + 60
        while True:           # a FIFO opens for writing only once its reader has it open
            try:
                wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                assert exc.errno == errno.ENXIO and proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.01)
        limit = _core_limit(proc.pid)
        os.write(wfd, (PASSPHRASE + "\n").encode())
        os.close(wfd)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert limit == "0", f"sealfs {command} may dump core (soft limit {limit})"


def test_the_mount_holds_its_keys_locked_and_dumps_no_core(mounted) -> None:
    pid = mounted.proc.pid
    (mounted.mountpoint / "f").write_bytes(b"x")      # a file key was derived too
    assert _vmlck_kb(pid) > 0, "the mount's keys are not mlock()ed"
    assert _core_limit(pid) == "0"


# -- one rule for every secret file -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_keyfile_others_or_the_group_can_read_is_refused(tmp_path, keyfile, mode) -> None:
    store = tmp_path / "s"
    assert run_sealfs("init", store, "--keyfile", keyfile, "--chunk-size", "4K").code == 0
    keyfile.chmod(mode)
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert res.code == 2, res.err
    assert res.err_lines == [f"sealfs: error: keyfile {keyfile} is readable by "
                             f"{'group' if mode & 0o040 else 'others'}: run `chmod 600 {keyfile}`"]


def test_a_passphrase_file_the_group_can_read_is_refused(tmp_path) -> None:
    pf = tmp_path / "pass.txt"
    pf.write_text(PASSPHRASE)
    pf.chmod(0o640)
    res = run_sealfs("init", tmp_path / "s", "--passphrase-file", pf, "--scrypt-n", "1024")
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    assert f"passphrase file {pf} is readable by group" in res.err and f"chmod 600 {pf}" in res.err
    assert not (tmp_path / "s" / "sealfs.json").exists()


def test_an_smb_password_file_the_group_can_read_is_refused(tmp_path) -> None:
    pw = tmp_path / "smb-password"
    pw.write_text("hunter2\n")
    pw.chmod(0o640)
    with pytest.raises(SecretFileModeError, match=r"SMB password file .* readable by group.*chmod 600"):
        smb_password_source(str(pw))()
    pw.chmod(0o600)
    assert smb_password_source(str(pw))() == "hunter2"


def test_a_pin_file_the_group_can_read_is_refused(tmp_path) -> None:
    from sealfs.crypto.keys.kms_pkcs11 import Pkcs11Uri, _read_pin
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o640)
    ref = Pkcs11Uri.parse(f"pkcs11:token=t;object=k?module-path=/x.so&pin-source=file:{pin}")
    with pytest.raises(SecretFileModeError, match=r"PIN file .* readable by group.*chmod 600"):
        _read_pin(ref, KeySecrets())
    pin.chmod(0o600)
    assert _read_pin(ref, KeySecrets()) == b"1234"


# -- the daemon: no secret in its environment, a private log ---------------------------------

def _daemon_pid(run_dir: Path) -> int:
    locks = list(run_dir.glob("*.lock"))
    assert len(locks) == 1, locks
    return int(locks[0].read_text().split()[0])


def test_a_daemon_mount_has_no_secret_in_its_environment(request, tmp_path, mount_env) -> None:
    from tests.servers.samba import new_store
    smb = new_store(request.getfixturevalue("samba"))
    password = smb.server.password
    env = dict(mount_env, SEALFS_SMB_PASSWORD=password, SEALFS_PASSPHRASE=PASSPHRASE)
    res = run_sealfs("init", smb.url, "--scrypt-n", "1024", "--chunk-size", "64K", env=env)
    assert res.code == 0, res.err
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = run_sealfs("mount", smb.url, mnt, "--daemon", env=env)
    assert res.code == 0, res.err
    try:
        (mnt / "f").write_bytes(b"through the daemon")
        environ = Path(f"/proc/{_daemon_pid(Path(mount_env['SEALFS_RUN_DIR']))}/environ").read_bytes()
    finally:
        run_sealfs("umount", mnt, env=env)
    for secret in (b"SEALFS_SMB_PASSWORD", password.encode(), b"SEALFS_PASSPHRASE", PASSPHRASE.encode()):
        assert secret not in environ
    assert run_sealfs("cat", smb.url, "/f", env=env).out == b"through the daemon"


def test_the_daemon_log_is_private_and_never_written_through_a_link(tmp_path, keyfile, mount_env) -> None:
    store, mnt = tmp_path / "s", tmp_path / "mnt"
    mnt.mkdir()
    assert run_sealfs("init", store, "--keyfile", keyfile, env=mount_env).code == 0
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "linked.log"
    link.symlink_to(victim)
    log = tmp_path / "mount.log"
    try:
        res = run_sealfs("mount", store, mnt, "--keyfile", keyfile, "--daemon", "--log-file", link,
                         env=mount_env)
        assert res.code == 2 and "symbolic link" in res.err, res.err
        assert victim.read_bytes() == b"untouched" and not os.path.ismount(mnt)
        res = run_sealfs("mount", store, mnt, "--keyfile", keyfile, "--daemon", "--log-file", log,
                         env=mount_env)
        assert res.code == 0, res.err
    finally:
        if os.path.ismount(mnt):
            run_sealfs("umount", mnt, env=mount_env)
    assert log.stat().st_mode & 0o777 == 0o600
