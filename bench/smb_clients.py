"""SMB client baselines on the share the smb backend is benched against, sequential only.

- `smbprotocol`: the smbprotocol library as its users write to a share (its `smbclient`
  file API: one session, one 1 MiB write() or read() at a time, encryption required),
  in a child process. This is "raw smbprotocol throughput to the same share", the
  baseline the SMB target is phrased in.
- `smbprotocol-reuse`: the same with glibc reusing freed megabyte buffers, which takes
  out the page faults that dominate the library's write path here: the stricter form of
  that baseline. `smb-raw` (bench/smb_raw.py) is stricter still: sealfs's own tuned SMB
  backend without crypto and FUSE.
- `smbclient`: Samba's own C client (`smbclient --client-protection=encrypt`, put and
  get), timed around the whole command, connection setup included.

Both read the file back, then read it cold after the server's page cache for it is
dropped (when the share is a local directory).
"""

from __future__ import annotations

import abc
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

from ..backends.smb import SmbTarget
from .samba import SmbShare
from .targets import DirectTarget, TargetError, drop_file_cache, quiesce_disk

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
        quiesce_disk()
        out = {"seq_write": nbytes / 1e6 / self._write(name, size_mib)}
        out["seq_read"] = nbytes / 1e6 / self._read(name, nbytes)
        self._drop(name)
        out["cold_read"] = nbytes / 1e6 / self._read(name, nbytes)
        self._remove(name)
        return out

    @staticmethod
    def _timed(fn, *args) -> float:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0

    @abc.abstractmethod
    def _write(self, name: str, size_mib: int) -> float:
        """Seconds the write took."""

    @abc.abstractmethod
    def _read(self, name: str, nbytes: int) -> float:
        """Seconds the read took."""

    @abc.abstractmethod
    def _remove(self, name: str) -> None: ...


class SmbprotocolTarget(_ShareTarget):
    """smbprotocol's file API: what a Python program gets from the library as it comes,
    run in a child process (bench/smbprotocol_client.py says why)."""

    name = "smbprotocol"
    reuse_buffers = False

    def __init__(self, work: Path, share: SmbShare) -> None:
        super().__init__(work, share)
        self.notes["pattern"] = ("smbclient.open_file (smbprotocol's file API) in a child process, "
                                 "one 1 MiB write()/read() at a time, one session, encrypt=True"
                                 + (", glibc told to reuse freed buffers" if self.reuse_buffers else ""))

    def _child(self, op: str, name: str, *extra: str) -> dict:
        parts = [self.target.host, self.target.share, *self.target.path.split("/"), name]
        argv = [sys.executable, "-m", "sealfs.bench.smbprotocol_client", op, self.target.host,
                str(self.target.port), self.target.user or "guest",
                "\\\\" + "\\".join(p for p in parts if p), *extra]
        if self.reuse_buffers:
            argv.append("--reuse-buffers")
        env = {**os.environ, "SEALFS_SMB_PASSWORD": self.share.password or ""}
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise TargetError((result.stderr.strip().splitlines() or [f"{self.name} {op} failed"])[-1])
        return json.loads(result.stdout)

    def _write(self, name: str, size_mib: int) -> float:
        return self._child("write", name, "--mib", str(size_mib))["seconds"]

    def _read(self, name: str, nbytes: int) -> float:
        got = self._child("read", name)
        if got["bytes"] != nbytes:
            raise TargetError(f"{self.name} read {got['bytes']} bytes of {name}, expected {nbytes}")
        return got["seconds"]

    def _remove(self, name: str) -> None:
        self._child("remove", name)


class SmbprotocolReuseTarget(SmbprotocolTarget):
    """The same client with glibc reusing freed megabyte buffers: the stricter baseline."""

    name = "smbprotocol-reuse"
    reuse_buffers = True


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

    def _write(self, name: str, size_mib: int) -> float:
        return self._timed(self._run, f'put "{self.source}" "{name}"')

    def _read(self, name: str, nbytes: int) -> float:
        t0 = time.perf_counter()
        said = self._run(f'get "{name}" /dev/null')
        seconds = time.perf_counter() - t0
        size = re.search(r"of size (\d+) as", said)
        if size is None or int(size.group(1)) != nbytes:
            raise TargetError(f"smbclient get of {name}: expected {nbytes} bytes, "
                              f"it said {said.strip()[-200:]!r}")
        return seconds

    def _remove(self, name: str) -> None:
        self._run(f'del "{name}"')
