"""A real `sealfs gateway` for tests: a fresh local volume served by smbd on a free port.

Everything (store, keyfile, state and run directories) lives in one temp dir whose
parents the per-user smbd processes can traverse; the SMB users and the share's group
are real Unix accounts, removed again by close().
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.mounting import SEALFS, sealfs
from tests.servers.ports import free_port


class Gateway:
    """`sealfs gateway STORE --share NAME --listen 127.0.0.1:PORT` and its SMB users."""

    def __init__(self, users: int = 2, force_user: str | None = None, chunk_size: str = "64K") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="sealfs-gw-"))
        os.chmod(self.base, 0o711)
        self.share = "gw" + secrets.token_hex(3)
        self.port = free_port()
        self.store = self.base / "store"
        self.store.mkdir()
        self.keyfile = self.base / "volume.key"
        self.keyfile.write_bytes(os.urandom(32))
        self.keyfile.chmod(0o600)
        self.env = dict(os.environ, SEALFS_STATE_DIR=str(self.base / "state"),
                        SEALFS_GATEWAY_RUN_DIR=str(self.base / "run"))
        self.env.pop("SEALFS_KEYFILE", None)
        self.force_user = force_user
        self.state_dir = self.base / "state" / "gateway" / self.share
        self.mountpoint = self.base / "run" / self.share
        self.log = self.base / "gateway.log"
        self.proc: subprocess.Popen | None = None
        self.users: dict[str, str] = {}
        sealfs("init", str(self.store), "--keyfile", str(self.keyfile), "--chunk-size", chunk_size,
               env=self.env)
        for _ in range(users):
            self.add_user("gwu" + secrets.token_hex(3))

    # -- users ------------------------------------------------------------------------------
    def users_cmd(self, *args: str, input: bytes | None = None, check: bool = True):
        return sealfs("gateway", "users", *args, "--share", self.share, env=self.env,
                      input=input, check=check)

    def add_user(self, name: str) -> str:
        password = secrets.token_urlsafe(12)
        self.users_cmd("add", name, input=f"{password}\n".encode())
        self.users[name] = password
        return name

    @property
    def user(self) -> tuple[str, str]:
        name = next(iter(self.users))
        return name, self.users[name]

    # -- the process ------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> Gateway:
        force = ["--force-user", self.force_user] if self.force_user else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*SEALFS, "-v", "gateway", str(self.store), "--share", self.share,
                 "--listen", f"127.0.0.1:{self.port}", "--keyfile", str(self.keyfile), *force],
                env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}: {self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if "serving" in self.log_text() or self.smbd_pid() is not None:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"gateway did not come up: {self.log_text()}")

    def stop(self, timeout: float = 120) -> int:
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            for pid in self._children("smbd") + self._children("mount"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
            for name in self.users:
                subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["groupdel", f"sealfs-{self.share}"], capture_output=True)
            shutil.rmtree(self.base, ignore_errors=True)

    def log_text(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        for extra in ("log/mount.log", "log/smbd.log"):
            path = self.state_dir / extra
            if path.exists():
                text += f"\n--- {extra}:\n" + path.read_text(errors="replace")[-3000:]
        return text[-8000:]

    # -- its children -----------------------------------------------------------------------
    def _children(self, kind: str) -> list[int]:
        """smbd (its main process) or the `sealfs mount` child, found by their command lines."""
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = b" ".join(argv).decode(errors="replace")
            if kind == "smbd" and "smbd" in text and str(self.state_dir / "smb.conf") in text:
                out.append(int(entry.name))
            if kind == "mount" and " mount " in text and str(self.mountpoint) in text:
                out.append(int(entry.name))
        return out

    def smbd_pid(self) -> int | None:
        """smbd's main process: the one whose parent is the gateway."""
        for pid in self._children("smbd"):
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if self.proc is not None and ppid == self.proc.pid:
                return pid
        return None

    def mount_pid(self) -> int:
        pids = self._children("mount")
        assert len(pids) == 1, pids
        return pids[0]

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# -- clients ---------------------------------------------------------------------------------
def smbclient_cli(gw: Gateway, *commands: str, user: tuple[str, str] | None = None,
                  extra: tuple[str, ...] = ("--client-protection=encrypt",),
                  check: bool = True) -> subprocess.CompletedProcess:
    """Samba's smbclient; the password goes in an authentication file, never argv."""
    name, password = user or gw.user
    auth = gw.base / f"auth-{secrets.token_hex(4)}"
    fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"username = {name}\npassword = {password}\n")
    try:
        result = subprocess.run(
            ["smbclient", f"//127.0.0.1/{gw.share}", "-p", str(gw.port), "-A", str(auth), *extra,
             "-c", "; ".join(commands)],
            capture_output=True, text=True, timeout=300)
    finally:
        auth.unlink()
    if check and result.returncode != 0:
        raise AssertionError(f"smbclient {commands} failed ({result.returncode}): "
                             f"{result.stdout[-2000:]} {result.stderr[-2000:]}")
    return result


class Client:
    """smbprotocol's smbclient module as one Windows client: its own TCP connection and session."""

    def __init__(self, gw: Gateway, user: tuple[str, str] | None = None, encrypt: bool = True) -> None:
        import smbclient
        self.smb = smbclient
        self.gw = gw
        self.name, self.password = user or gw.user
        self.cache: dict = {}
        self.kw = {"username": self.name, "password": self.password, "port": gw.port,
                   "connection_cache": self.cache}
        smbclient.register_session("127.0.0.1", encrypt=encrypt, **self.kw)

    def path(self, name: str) -> str:
        return rf"\\127.0.0.1\{self.gw.share}\{name}"

    def close(self) -> None:
        from smbclient._pool import reset_connection_cache
        reset_connection_cache(connection_cache=self.cache)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_guid() -> uuid.UUID:
    return uuid.uuid4()
