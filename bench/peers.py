"""The reference filesystems a sealfs mount is measured against (targets.py says what a
target is), and the registry runner.py picks them from: PEERS run on a local directory,
SMB_PEERS on the share the smb backend is benched on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .azfiles import AzShare
from .samba import SmbShare
from .targets import ProcessTarget, Target, TargetError, drop_file_cache, lazy_unmount, run_tool, wait_live

SEALFS = [sys.executable, "-m", "sealfs.fs.cli"]

class PlainTarget(Target):
    """The directory itself: the ceiling every FUSE filesystem is measured against."""

    name = "plain"

    def setup(self) -> None:
        self.mountpoint.mkdir()
        self.storage = self.mountpoint

    def mount(self) -> None:
        pass

    def unmount(self) -> None:
        os.sync()

    def remount(self) -> None:
        os.sync()
        drop_file_cache(self.storage)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class SealfsTarget(ProcessTarget):
    """`sealfs mount` of a fresh volume (local directory or an smb:// URL) in a child process."""

    name = "sealfs"
    kind = "sealfs"

    def __init__(self, work: Path, chunk_size: str = "64K", backend: str = "local",
                 smb_url: str | None = None, smb_local: Path | None = None,
                 smb_password: str | None = None, azure: AzShare | None = None) -> None:
        self.chunk_size = chunk_size
        self.backend = backend
        super().__init__(work)
        self.keyfile = self.work / "volume.key"
        self.env["SEALFS_STATE_DIR"] = str(self.work / "state")
        for var in ("SEALFS_KEYFILE", "SEALFS_PASSPHRASE", "SEALFS_CONFIG_DIR"):
            self.env.pop(var, None)
        if backend == "smb":
            if not smb_url:
                raise TargetError("smb backend needs a URL")
            self.store = smb_url
            self.storage = smb_local
            if smb_password is not None:
                self.env["SEALFS_SMB_PASSWORD"] = smb_password
        elif backend == "azfiles":
            if azure is None:
                raise TargetError("azfiles backend needs a share")
            self.azure = azure
            self.store = azure.url
            self.storage = None          # no local directory holds the ciphertext
            self.env.update(azure.env)
        else:
            self.store = str(self.work / "store")

    @property
    def label(self) -> str:
        return f"sealfs-{self.backend}-{self.chunk_size}"

    def storage_bytes(self) -> int | None:
        if self.backend == "azfiles":
            return self.azure.tree_bytes()
        return super().storage_bytes()

    def _cli(self, *args: str, timeout: float = 300) -> None:
        result = subprocess.run([*SEALFS, *args], env=self.env, capture_output=True, timeout=timeout)
        if result.returncode != 0:
            raise TargetError(f"sealfs {args[0]} failed ({result.returncode}): "
                              f"{result.stderr.decode(errors='replace').strip()}")

    def setup(self) -> None:
        self.keyfile.write_bytes(os.urandom(32))
        self.keyfile.chmod(0o600)
        if self.backend == "local":
            Path(self.store).mkdir()
        elif self.storage is not None:
            self.storage.mkdir(mode=0o777, exist_ok=True)
        self._cli("init", self.store, "--keyfile", str(self.keyfile), "--chunk-size", self.chunk_size)
        self.mountpoint.mkdir(exist_ok=True)

    def mount(self) -> None:
        self._spawn([*SEALFS, "mount", self.store, str(self.mountpoint),
                     "--keyfile", str(self.keyfile)], 60)

    def _request_unmount(self) -> None:
        self._cli("umount", str(self.mountpoint))

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.backend == "smb" and self.storage is not None:
                shutil.rmtree(self.storage, ignore_errors=True)
            elif self.backend == "azfiles":
                self.azure.remove()


class GocryptfsTarget(Target):
    """gocryptfs (AES-256-GCM, 4 KiB blocks, Go FUSE): the closest peer."""

    name = "gocryptfs"

    @staticmethod
    def available() -> bool:
        return shutil.which("gocryptfs") is not None

    def setup(self) -> None:
        self.storage.mkdir()
        self.mountpoint.mkdir()
        self.passfile = self.work / "pass"
        self.passfile.write_text(secrets.token_urlsafe(24) + "\n")
        run_tool("gocryptfs -init", ["gocryptfs", "-init", "-q", "-scryptn", "10",
                                     "-passfile", str(self.passfile), str(self.storage)])

    def mount(self) -> None:
        run_tool("gocryptfs mount", ["gocryptfs", "-q", "-passfile", str(self.passfile),
                                     str(self.storage), str(self.mountpoint)])
        wait_live(self.mountpoint, None, 30, None)

    def unmount(self) -> None:
        if os.path.ismount(self.mountpoint):
            result = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
            if result.returncode != 0:
                lazy_unmount(self.mountpoint)
        deadline = time.monotonic() + 10
        while os.path.ismount(self.mountpoint) and time.monotonic() < deadline:
            time.sleep(0.05)


class RcloneCryptTarget(ProcessTarget):
    """rclone crypt over a local directory, `rclone mount --vfs-cache-mode writes`.

    Random writes need the VFS cache, so writes land in rclone's cache first and are
    uploaded after close: unmount waits for that upload (polling rclone's remote control
    API: a terminated rclone leaves the rest queued in its cache, and the remounted view
    can miss those files). seq_write here stops at close (the local upload is a copy on
    the same disk), unlike rclone-smb.
    """

    name = "rclone"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.rc_port = _free_port()

    @staticmethod
    def available() -> bool:
        return shutil.which("rclone") is not None

    def _obscure(self, secret: str) -> str:
        return subprocess.run(["rclone", "obscure", "-"], input=secret, capture_output=True, text=True,
                              check=True).stdout.strip()

    def crypt_remote(self) -> str:
        """What the crypt remote wraps (created here); the ciphertext lands there."""
        self.storage.mkdir()
        return str(self.storage)

    def setup(self) -> None:
        self.mountpoint.mkdir()
        (self.work / "rclone.conf").write_text("")
        self.env["RCLONE_CONFIG"] = str(self.work / "rclone.conf")
        remote = self.crypt_remote()
        self.env.update({
            "RCLONE_CONFIG_BENCHCRYPT_TYPE": "crypt",
            "RCLONE_CONFIG_BENCHCRYPT_REMOTE": remote,
            "RCLONE_CONFIG_BENCHCRYPT_PASSWORD": self._obscure(secrets.token_urlsafe(24)),
        })

    def mount_args(self) -> list[str]:
        return ["rclone", "mount", "benchcrypt:", str(self.mountpoint),
                "--vfs-cache-mode", "writes", "--vfs-write-back", "0s",
                "--cache-dir", str(self.work / "cache"), "--dir-cache-time", "1h",
                "--rc", f"--rc-addr=127.0.0.1:{self.rc_port}", "--rc-no-auth"]

    def mount(self) -> None:
        self._spawn(self.mount_args(), 30)

    def _rc(self, command: str, **params: str) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.rc_port}/{command}",
                                     data=json.dumps(params).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def _uploads_done(self) -> bool:
        cache = self._rc("vfs/stats").get("diskCache", {})
        return cache.get("uploadsInProgress", 0) == 0 and cache.get("uploadsQueued", 0) == 0

    def _request_unmount(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not self._uploads_done():
            if time.monotonic() > deadline:
                raise TargetError(f"rclone did not finish its uploads within {timeout:.0f} s")
            time.sleep(0.01)
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        self.proc.terminate()


class RcloneSmbTarget(RcloneCryptTarget):
    """rclone crypt over rclone's own smb backend, on the same share as sealfs-smb.

    seq_write is timed until the ciphertext is on the share: write + fsync + close,
    then wait (polling rclone's remote control API) until the VFS cache has no upload
    queued or running and the file on the remote has its full size. The mount's
    SMB session is looked up in smbstatus when the share is our own smbd.
    """

    name = "rclone-smb"
    backend = "smb"

    def __init__(self, work: Path, share: SmbShare) -> None:
        super().__init__(work)
        self.share = share
        self.subdir = f"rclone-{secrets.token_hex(4)}"
        self.storage = share.local / self.subdir if share.local else None
        self.notes["seq_write_timing"] = ("write + fsync + close + until rclone's VFS cache has "
                                          "uploaded the file to the share (rc vfs/stats, operations/stat)")

    def crypt_remote(self) -> str:
        from ..backends.smb import SmbTarget
        t = SmbTarget.parse(self.share.url)
        self.env.update({
            "RCLONE_CONFIG_BENCHSMB_TYPE": "smb",
            "RCLONE_CONFIG_BENCHSMB_HOST": t.host,
            "RCLONE_CONFIG_BENCHSMB_PORT": str(t.port),
            "RCLONE_CONFIG_BENCHSMB_USER": t.user or "",
            "RCLONE_CONFIG_BENCHSMB_PASS": self._obscure(self.share.password or ""),
        })
        remote = "/".join(p for p in (t.share, t.path, self.subdir) if p)
        result = subprocess.run(["rclone", "mkdir", f"benchsmb:{remote}"], env=self.env,
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise TargetError(f"rclone smb cannot use {t.where}: {result.stderr.strip()[-1000:]}")
        return f"benchsmb:{remote}"

    def mount(self) -> None:
        super().mount()
        os.listdir(self.mountpoint)      # one round trip, so that the session exists
        seen = self.share.encryption_seen()
        self.notes["smb_sessions"] = seen or "unknown (not our own smbd: smbstatus unavailable)"

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.storage is not None:
                shutil.rmtree(self.storage, ignore_errors=True)

    def settle(self, path: Path, size: int, timeout: float = 600) -> None:
        remote = str(path.relative_to(self.mountpoint))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._uploads_done():
                item = self._rc("operations/stat", fs="benchcrypt:", remote=remote).get("item")
                if item and item.get("Size") == size:
                    return
            time.sleep(0.01)
        raise TargetError(f"rclone did not upload {remote} within {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CryfsTarget(ProcessTarget):
    """CryFS (fixed-size encrypted blocks in a tree, hides sizes and structure), in the foreground.

    Created with --cipher aes-256-gcm (sealfs's cipher; CryFS's default is xchacha20)
    and the default 16 KiB blocks. Its scrypt makes every mount take seconds (untimed).
    """

    name = "cryfs"

    @staticmethod
    def available() -> bool:
        return shutil.which("cryfs") is not None

    def setup(self) -> None:
        self.storage.mkdir()
        self.mountpoint.mkdir()
        self.password = secrets.token_urlsafe(24).encode() + b"\n"
        self.env.update({"CRYFS_FRONTEND": "noninteractive", "CRYFS_NO_UPDATE_CHECK": "true",
                         "CRYFS_LOCAL_STATE_DIR": str(self.work / "state")})
        self.notes["settings"] = "cipher aes-256-gcm, blocksize 16384 (default)"

    def mount(self) -> None:
        self._spawn(["cryfs", "--foreground", "--cipher", "aes-256-gcm", str(self.storage),
                     str(self.mountpoint)], 180, stdin=self.password)


class SecurefsTarget(ProcessTarget):
    """securefs (its default "lite" format 4: AES-256-GCM over 4 KiB blocks, AES-SIV names,
    one backing file per file, C++ FUSE), in the foreground with a random keyfile.

    Its Argon2id key derivation makes create and mount take a few seconds (untimed).
    """

    name = "securefs"

    @staticmethod
    def available() -> bool:
        return shutil.which("securefs") is not None

    def setup(self) -> None:
        self.storage.mkdir()
        self.mountpoint.mkdir()
        self.keyfile = self.work / "key"
        self.keyfile.write_bytes(secrets.token_bytes(32))
        run_tool("securefs create", ["securefs", "create", "--keyfile", str(self.keyfile),
                                     str(self.storage)], timeout=120)
        self.notes["settings"] = "format 4 (lite, default), 4 KiB blocks (default)"

    def mount(self) -> None:
        self._spawn(["securefs", "mount", "--keyfile", str(self.keyfile), str(self.storage),
                     str(self.mountpoint)], 120)


class Pyfuse3Target(ProcessTarget):
    """A pass-through pyfuse3 filesystem without crypto (bench/passthrough.py), mounted
    like sealfs: the ceiling of the Python FUSE stack sealfs is built on."""

    name = "pyfuse3"

    def setup(self) -> None:
        self.storage.mkdir()
        self.mountpoint.mkdir()
        self.notes["settings"] = "pass-through, no encryption; sealfs's pyfuse3/trio and mount options"

    def mount(self) -> None:
        self._spawn([sys.executable, "-m", "sealfs.bench.passthrough", str(self.storage),
                     str(self.mountpoint)], 60)


PEERS = {"plain": PlainTarget, "gocryptfs": GocryptfsTarget, "rclone": RcloneCryptTarget,
         "cryfs": CryfsTarget, "securefs": SecurefsTarget, "pyfuse3": Pyfuse3Target}


def _smb_raw(work: Path, share: SmbShare) -> Target:
    from .smb_raw import SmbRawTarget  # imports the SMB backend only when benched
    return SmbRawTarget(work, share)


def _smbprotocol(work: Path, share: SmbShare) -> Target:
    from .smb_clients import SmbprotocolTarget
    return SmbprotocolTarget(work, share)


def _smbprotocol_reuse(work: Path, share: SmbShare) -> Target:
    from .smb_clients import SmbprotocolReuseTarget
    return SmbprotocolReuseTarget(work, share)


def _smbclient(work: Path, share: SmbShare) -> Target:
    from .smb_clients import SmbclientTarget
    return SmbclientTarget(work, share)


def _smbclient_available() -> bool:
    return shutil.which("smbclient") is not None


# peers on the share the smb backend is benched against: factory(work, share)
SMB_PEERS = {"smb-raw": _smb_raw, "smbprotocol": _smbprotocol,
             "smbprotocol-reuse": _smbprotocol_reuse, "smbclient": _smbclient,
             "rclone-smb": RcloneSmbTarget}
_AVAILABLE = {"rclone-smb": RcloneCryptTarget.available, "smbclient": _smbclient_available}


def peer_available(name: str) -> bool:
    check = _AVAILABLE.get(name) or getattr(PEERS.get(name), "available", None)
    return check() if check else True
