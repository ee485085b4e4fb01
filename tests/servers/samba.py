"""A real, throwaway smbd on 127.0.0.1 for tests and benchmarks.

Everything smbd touches (config, passdb, lock/state/cache/pid dirs, log, the share)
lives in one temp dir, so it runs as root in a clean CI container next to nothing
else and leaves nothing behind. smbd runs in the foreground in its own process group,
so stopping it (or kill -9 in the reconnect test) reaches every forked child too.

    with SambaServer() as srv:
        store = srv.store_url          # smb://USER@127.0.0.1:PORT/sealfs
        password = srv.password        # hand it over lazily, never in argv

A second share, ``sealfs-shadow`` (SHADOW_SHARE), serves previous versions through
vfs_shadow_copy2 from snapshot directories a test makes itself (take_shadow_copy): each
is .snapshots/@GMT-YYYY.MM.DD-HH.MM.SS/ holding a copy of the share as it was.

Refusal variants are parameters: ``server_encrypt="off"``, ``max_protocol="SMB2_10"``,
``share_encrypt="off"``.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from tests.servers.ports import free_port

if TYPE_CHECKING:
    from sealfs.backends.registry import BackendOptions
    from sealfs.backends.smb import SmbBackend

SHARE = "sealfs"
SHADOW_SHARE = "sealfs-shadow"
SNAPDIR = ".snapshots"


class SambaError(RuntimeError):
    """smbd could not be set up or did not come up."""


class SambaServer:
    """One smbd with one share and one user in its own tdbsam passdb."""

    def __init__(self, *, server_encrypt: str = "required", min_protocol: str | None = "SMB3",
                 max_protocol: str | None = None, share_encrypt: str | None = None,
                 encryption_algorithms: str | None = None, user: str | None = None,
                 port: int | None = None, base_dir: str | os.PathLike[str] | None = None,
                 log_level: int = 1) -> None:
        self.server_encrypt = server_encrypt
        self.min_protocol = min_protocol
        self.max_protocol = max_protocol
        self.share_encrypt = share_encrypt
        self.encryption_algorithms = encryption_algorithms
        # smbd maps an SMB user to a Unix account: the one running the tests exists for sure.
        self.user = user or getpass.getuser()
        self.password = secrets.token_urlsafe(18)
        self.port = port or free_port()
        self.log_level = log_level
        self._own_dir = base_dir is None
        self.base = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="sealfs-samba-"))
        self.share_path = self.base / "share"
        self.shadow_path = self.base / "shadow"
        self.conf = self.base / "smb.conf"
        self.log_file = self.base / "log" / "smbd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout = None
        self._provisioned = False

    # -- URLs the backend takes ------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def store_url(self) -> str:
        return f"smb://{self.user}@{self.host}:{self.port}/{SHARE}"

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> SambaServer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.cleanup()

    def start(self, timeout: float = 20.0) -> None:
        """Provision (once), start smbd, and wait until the port accepts connections."""
        if shutil.which("smbd") is None and not Path("/usr/sbin/smbd").exists():
            raise SambaError("smbd not found: apt-get install samba")
        if not self._provisioned:
            self._provision()
        smbd = shutil.which("smbd") or "/usr/sbin/smbd"
        self._stdout = open(self.base / "log" / "smbd.stdout", "ab")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [smbd, "--foreground", "--no-process-group", "--debug-stdout",
             f"--configfile={self.conf}", f"--debuglevel={self.log_level}"],
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._wait_listening(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop smbd and every child it forked (they share its process group)."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=timeout)
        self._wait_group_gone(proc.pid, timeout)
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None

    def kill(self) -> None:
        """kill -9 the whole server (parent and per-connection children), as a crash would."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in (self.log_file, self.base / "log" / "smbd.stdout"):
            try:
                out.extend(path.read_text(errors="replace").splitlines()[-lines:])
            except FileNotFoundError:
                continue
        return "\n".join(out[-lines:])

    # -- internals ---------------------------------------------------------------------------
    def _provision(self) -> None:
        for sub in ("private", "lock", "state", "cache", "pid", "log", "ncalrpc", "share", "shadow"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base / "private", 0o700)
        os.chmod(self.share_path, 0o777)
        os.chmod(self.shadow_path, 0o777)
        self.conf.write_text(self._smb_conf())
        # -s reads the password twice from stdin: never in argv, never in a file.
        result = subprocess.run(
            ["smbpasswd", "-c", str(self.conf), "-L", "-a", "-s", self.user],
            input=f"{self.password}\n{self.password}\n".encode(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        if result.returncode != 0:
            raise SambaError(f"smbpasswd -a {self.user} failed: "
                             f"{result.stdout.decode(errors='replace').strip()}")
        self._provisioned = True

    def _smb_conf(self) -> str:
        b = self.base
        glob = {
            "server role": "standalone server",
            "workgroup": "SEALFSTEST",
            "netbios name": "SEALFSTEST",
            "smb ports": str(self.port),
            "interfaces": "127.0.0.1",
            "bind interfaces only": "yes",
            "disable netbios": "yes",
            "passdb backend": f"tdbsam:{b / 'private' / 'passdb.tdb'}",
            "private dir": str(b / "private"),
            "lock directory": str(b / "lock"),
            "state directory": str(b / "state"),
            "cache directory": str(b / "cache"),
            "pid directory": str(b / "pid"),
            "ncalrpc dir": str(b / "ncalrpc"),
            "log file": str(self.log_file),
            "max log size": "0",
            "logging": "file",
            "server smb encrypt": self.server_encrypt,
            "map to guest": "Never",
            "restrict anonymous": "2",
            "load printers": "no",
            "printing": "bsd",
            "printcap name": "/dev/null",
            "disable spoolss": "yes",
            "kernel oplocks": "no",
            "usershare max shares": "0",
            "unix extensions": "no",
        }
        if self.min_protocol:
            glob["server min protocol"] = self.min_protocol
        if self.max_protocol:
            glob["server max protocol"] = self.max_protocol
            # "SMB3" as a minimum means SMB3_11: open the range so the cap is what decides.
            glob["server min protocol"] = "SMB2_02"
        if self.encryption_algorithms:
            glob["server smb3 encryption algorithms"] = self.encryption_algorithms
        share = {
            "path": str(self.share_path),
            "read only": "no",
            "browseable": "yes",
            "valid users": self.user,
            "case sensitive": "no",
            "preserve case": "yes",
            "create mask": "0600",
            "directory mask": "0700",
            # The store is untrusted: smbd must not follow a symlink planted in it, not even
            # one to elsewhere on the share (wide links = no, the default, only keeps them
            # inside the share). Samba 4.17 shows no reparse point the client could refuse.
            "follow symlinks": "no",
        }
        if self.share_encrypt is not None:
            share["smb encrypt"] = self.share_encrypt
        shadow = dict(share, path=str(self.shadow_path))
        shadow.update({"vfs objects": "shadow_copy2", "shadow:mountpoint": str(self.shadow_path),
                       "shadow:snapdir": SNAPDIR, "shadow:format": "@GMT-%Y.%m.%d-%H.%M.%S",
                       "shadow:sort": "desc", "shadow:localtime": "no"})
        lines = ["[global]"] + [f"    {k} = {v}" for k, v in glob.items()]
        lines += ["", f"[{SHARE}]"] + [f"    {k} = {v}" for k, v in share.items()]
        lines += ["", f"[{SHADOW_SHARE}]"] + [f"    {k} = {v}" for k, v in shadow.items()]
        return "\n".join(lines) + "\n"

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise SambaError(f"smbd exited with {self._proc.returncode} on start:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise SambaError(f"smbd did not listen on {self.host}:{self.port} within {timeout}s:\n"
                         f"{self.log_tail()}")

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float) -> None:
        """Children exit a moment after the parent; wait so a restart can bind the port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class SmbStore:
    """A STORE URL pointing at a fresh directory on a test share, plus that directory."""

    def __init__(self, server: SambaServer, name: str, shadow: bool = False) -> None:
        self.server = server
        self.local = (server.shadow_path if shadow else server.share_path) / name
        self.local.mkdir(mode=0o777)
        base = server.store_url.rpartition("/")[0] + f"/{SHADOW_SHARE}" if shadow else server.store_url
        self.url = f"{base}/{name}"

    def options(self, **extra: object) -> BackendOptions:
        from sealfs.backends.registry import BackendOptions
        password = self.server.password
        return BackendOptions(smb_password=lambda: password, extra=dict(extra))

    def backend(self, **extra: object) -> SmbBackend:
        from sealfs.backends.registry import open_backend
        from sealfs.backends.smb import SmbBackend
        backend = open_backend(self.url, self.options(**extra))
        assert isinstance(backend, SmbBackend)
        return backend


def new_store(server: SambaServer) -> SmbStore:
    """A fresh, empty directory on the server's share, as its own STORE."""
    return SmbStore(server, "t-" + secrets.token_hex(4))


def new_shadow_store(server: SambaServer) -> SmbStore:
    """A fresh directory on the share that serves previous versions (vfs_shadow_copy2)."""
    return SmbStore(server, "t-" + secrets.token_hex(4), shadow=True)


def shadow_copy2_installed() -> bool:
    """vfs_shadow_copy2 is a loadable module (Debian: samba-vfs-modules), not in smbd itself."""
    out = subprocess.run(["smbd", "-b"], capture_output=True, text=True).stdout
    modules = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.strip().startswith("MODULESDIR:")), "/usr/lib/x86_64-linux-gnu/samba")
    return Path(modules, "vfs", "shadow_copy2.so").exists()


def take_shadow_copy(store: SmbStore, when: float) -> str:
    """Copy the store's directory as a previous version at time when (UTC, whole seconds)
    and return its @GMT token: what a snapshot tool on the server would make."""
    token = time.strftime("@GMT-%Y.%m.%d-%H.%M.%S", time.gmtime(when))
    target = store.server.shadow_path / SNAPDIR / token / store.local.name
    shutil.copytree(store.local, target, copy_function=shutil.copy2)
    return token
