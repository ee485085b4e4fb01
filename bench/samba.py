"""A minimal throwaway smbd on 127.0.0.1 with encryption required (for `sealfs bench --backends smb`).

Everything lives in one temp dir; smbd runs in its own process group so stopping it
reaches the forked children too. The password is generated and never put in argv.
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

SHARE = "sealfs"


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

    def __enter__(self) -> "BenchSamba":
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
