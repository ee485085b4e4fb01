"""Two SMB client baselines on the share the smb backend is benched against, sequential only.

- `smbprotocol`: the smbprotocol library as its users write to a share (its `smbclient`
  file API: one session, one 1 MiB write() or read() at a time, encryption required).
  This is "raw smbprotocol throughput to the same share", the baseline the SMB target is
  phrased in. `smb-raw` (bench/smb_raw.py) is the stricter one: sealfs's own tuned
  SMB backend without crypto and FUSE.
- `smbclient`: Samba's own C client (`smbclient --client-protection=encrypt`, put and
  get), timed around the whole command, connection setup included.

Both read the file back, then read it cold after the server's page cache for it is
dropped (when the share is a local directory).
"""

from __future__ import annotations

import abc
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

from ..backends.smb import SmbTarget
from .peers import DirectTarget, TargetError, drop_file_cache
from .samba import SmbShare

MiB = 1024 * 1024


class _ShareTarget(DirectTarget):
    backend = "smb"

    def __init__(self, work: Path, share: SmbShare) -> None:
        super().__init__(work)
        self.share = share
        self.target = SmbTarget.parse(share.url)
        self.storage = share.local
        self.remote_dir = self.target.path      # "" at the share's root

    def _drop(self, name: str) -> None:
        if self.share.local is not None:
            drop_file_cache(self.share.local / name)

    def sequential(self, size_mib: int) -> dict[str, float]:
        name = f"{self.name}-{secrets.token_hex(4)}.dat"
        nbytes = size_mib * MiB
        out = {"seq_write": nbytes / 1e6 / self._timed(self._write, name, size_mib)}
        out["seq_read"] = nbytes / 1e6 / self._timed(self._read, name, nbytes)
        self._drop(name)
        out["cold_read"] = nbytes / 1e6 / self._timed(self._read, name, nbytes)
        self._remove(name)
        return out

    @staticmethod
    def _timed(fn, *args) -> float:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0

    @abc.abstractmethod
    def _write(self, name: str, size_mib: int) -> None: ...

    @abc.abstractmethod
    def _read(self, name: str, nbytes: int) -> None: ...

    @abc.abstractmethod
    def _remove(self, name: str) -> None: ...


class SmbprotocolTarget(_ShareTarget):
    """smbprotocol's file API: what a Python program gets from the library as it comes."""

    name = "smbprotocol"

    def __init__(self, work: Path, share: SmbShare) -> None:
        super().__init__(work, share)
        self.cache: dict = {}                 # a private connection pool, closed at the end
        self.notes["pattern"] = ("smbclient.open_file (smbprotocol's file API), one 1 MiB "
                                 "write()/read() at a time, one session, encrypt=True")

    def _path(self, name: str) -> str:
        parts = [self.target.host, self.target.share, *self.target.path.split("/"), name]
        return "\\\\" + "\\".join(p for p in parts if p)

    def _open(self, name: str, mode: str):
        import smbclient
        return smbclient.open_file(self._path(name), mode=mode, port=self.target.port,
                                   username=self.target.user, password=self.share.password,
                                   encrypt=True, connection_cache=self.cache)

    def _write(self, name: str, size_mib: int) -> None:
        data = os.urandom(MiB)
        with self._open(name, "wb") as f:
            for _ in range(size_mib):
                f.write(data)

    def _read(self, name: str, nbytes: int) -> None:
        got = 0
        with self._open(name, "rb") as f:
            while block := f.read(MiB):
                got += len(block)
        if got != nbytes:
            raise TargetError(f"smbprotocol read {got} bytes of {name}, expected {nbytes}")

    def _remove(self, name: str) -> None:
        import smbclient
        smbclient.remove(self._path(name), port=self.target.port, connection_cache=self.cache)

    def close(self) -> None:
        try:
            import smbclient
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self.cache)
        finally:
            super().close()


class SmbclientTarget(_ShareTarget):
    """Samba's C client, the issue's reference for what this share can do."""

    name = "smbclient"

    def setup(self) -> None:
        self.auth = self.work / "auth"
        fd = os.open(self.auth, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:        # credentials in a 0600 file, not in argv
            f.write(f"username = {self.target.user or 'guest'}\n"
                    f"password = {self.share.password or ''}\n")
        self.source = self.work / "source.dat"
        self.notes["pattern"] = "smbclient --client-protection=encrypt -c 'put'/'get', whole command timed"

    def _run(self, command: str) -> str:
        argv = ["smbclient", f"//{self.target.host}/{self.target.share}", "-p", str(self.target.port),
                "-A", str(self.auth), "--client-protection=encrypt", "-m", "SMB3"]
        if self.remote_dir:
            argv += ["-D", self.remote_dir]
        result = subprocess.run([*argv, "-c", command], capture_output=True, text=True, timeout=600)
        failed = result.returncode != 0 or "NT_STATUS_" in result.stdout + result.stderr
        if failed:
            raise TargetError(f"smbclient {command.split()[0]} failed: "
                              f"{(result.stderr or result.stdout).strip()[-500:]}")
        return result.stdout + result.stderr

    def sequential(self, size_mib: int) -> dict[str, float]:
        with open(self.source, "wb") as f:   # untimed: the source must not be the bottleneck
            for _ in range(size_mib):
                f.write(os.urandom(MiB))
        try:
            return super().sequential(size_mib)
        finally:
            self.source.unlink(missing_ok=True)

    def _write(self, name: str, size_mib: int) -> None:
        self._run(f'put "{self.source}" "{name}"')

    def _read(self, name: str, nbytes: int) -> None:
        said = self._run(f'get "{name}" /dev/null')
        size = re.search(r"of size (\d+) as", said)
        if size is None or int(size.group(1)) != nbytes:
            raise TargetError(f"smbclient get of {name}: expected {nbytes} bytes, it said {said.strip()[-200:]!r}")

    def _remove(self, name: str) -> None:
        self._run(f'del "{name}"')
