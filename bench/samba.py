"""A minimal throwaway smbd on 127.0.0.1 with encryption required (for `sealfs bench --backends smb`).

Everything lives in one temp dir; smbd runs in its own process group so stopping it
reaches the forked children too. The password is generated and never put in argv.
SmbShare is what SMB targets get: the URL and password, plus the share's local path and
smbstatus when the share is our own smbd (with --smb-url neither is known).
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SHARE = "sealfs"


@dataclass(frozen=True)
class SmbShare:
    """An SMB share benchmark targets write to (each in a subdirectory of its own)."""

    url: str                                  # smb://USER@HOST[:PORT]/SHARE[/DIR]
    password: str | None
    local: Path | None = None                 # the same directory on this machine, if known
    sessions: Callable[[], list[dict]] | None = None   # smbstatus sessions, if our own smbd

    def encryption_seen(self) -> str | None:
        """Dialect and cipher of the sessions smbd has right now, e.g. "SMB3_11 AES-128-GCM"."""
        if self.sessions is None:
            return None
        try:
            seen = sorted({f"{s.get('session_dialect', '?')} "
                           f"{(s.get('encryption') or {}).get('cipher') or 'no encryption'}"
                           for s in self.sessions()})
        except (OSError, ValueError, subprocess.SubprocessError):
            return None
        return ", ".join(seen) or None


class BenchSamba:
    def __init__(self) -> None:
        self.user = getpass.getuser()
        self.password = secrets.token_urlsafe(18)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = Path(tempfile.mkdtemp(prefix="sealfs-bench-samba-"))
        self.share_path = self.base / "share"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"smb://{self.user}@127.0.0.1:{self.port}/{SHARE}"

    def share(self) -> SmbShare:
        return SmbShare(self.url, self.password, self.share_path, self.sessions)

    def sessions(self) -> list[dict]:
        """The live sessions as smbstatus reports them (dialect, encryption cipher and degree)."""
        r = subprocess.run(["smbstatus", "-s", str(self.base / "smb.conf"), "--json"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise OSError(f"smbstatus failed: {r.stderr.strip()[-300:]}")
        return list(json.loads(r.stdout).get("sessions", {}).values())

    def __enter__(self) -> BenchSamba:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        smbd = shutil.which("smbd") or "/usr/sbin/smbd"
        if not Path(smbd).exists():
            raise RuntimeError("smbd not found: apt-get install samba")
        b = self.base
        for sub in ("private", "lock", "state", "cache", "pid", "log", "ncalrpc", "share"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(b / "private", 0o700)
        os.chmod(self.share_path, 0o777)
        conf = b / "smb.conf"
        conf.write_text(f"""[global]
    server role = standalone server
    smb ports = {self.port}
    interfaces = 127.0.0.1
    bind interfaces only = yes
    disable netbios = yes
    passdb backend = tdbsam:{b / 'private' / 'passdb.tdb'}
    private dir = {b / 'private'}
    lock directory = {b / 'lock'}
    state directory = {b / 'state'}
    cache directory = {b / 'cache'}
    pid directory = {b / 'pid'}
    ncalrpc dir = {b / 'ncalrpc'}
    log file = {b / 'log' / 'smbd.log'}
    server smb encrypt = required
    server min protocol = SMB3
    map to guest = Never
    load printers = no
    printcap name = /dev/null
    disable spoolss = yes
    kernel oplocks = no
    unix extensions = no

[{SHARE}]
    path = {self.share_path}
    read only = no
    valid users = {self.user}
    create mask = 0600
    directory mask = 0700
""")
        r = subprocess.run(["smbpasswd", "-c", str(conf), "-L", "-a", "-s", self.user],
                           input=f"{self.password}\n{self.password}\n".encode(),
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"smbpasswd failed: {r.stdout.decode(errors='replace')}")
        self.proc = subprocess.Popen(
            [smbd, "--foreground", "--no-process-group", f"--configfile={conf}", "--debuglevel=0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smbd exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smbd did not start listening")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.base, ignore_errors=True)
