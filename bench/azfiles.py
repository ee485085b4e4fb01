"""Azure Files for `sealfs bench --backends azfiles`: the share, and the peers on it.

- AzShare: where targets write (each in a directory of its own) and with what credential.
- BenchAzureFiles: the protocol-level test server (tests/servers/azfiles.py, HTTPS with
  its own CA, in a child process), the way the smb backend starts a throwaway smbd. It
  lives with the tests, so it needs a source checkout; --azfiles-url benches a real share.
- azfiles-sdk: the plain azure-storage-file-share SDK, `upload_file` and `download_file`
  with max_concurrency, the same bytes: the ceiling a sealfs-azfiles mount is a ratio of.
- azfiles-raw: sealfs's AzureFilesBackend alone (no crypto, no FUSE), fed the way the
  mount's write-back feeds it: what the backend costs, apart from the layers above.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .targets import DirectTarget, TargetError

MiB = 1024 * 1024
SHARE = "sealfs"
CONCURRENCY = 16               # the backend's default worker threads (AzureSettings.threads)
SOURCE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class AzShare:
    """A share (or a directory of one) that benchmark targets write to."""

    url: str                               # https://HOST[:PORT]/SHARE[/PATH]
    env: dict[str, str]                    # what a child `sealfs` needs: credential, CA bundle
    ca_path: str | None = None

    def via(self, port: int) -> AzShare:
        """The same share reached through a proxy on this machine (same host name: TLS holds)."""
        u = urlparse(self.url)
        return replace(self, url=u._replace(netloc=f"{u.hostname}:{port}").geturl())

    @property
    def address(self) -> tuple[str, int]:
        u = urlparse(self.url)
        return u.hostname or "", u.port or 443

    def child(self, name: str) -> AzShare:
        return replace(self, url=f"{self.url.rstrip('/')}/{name}")

    def split(self) -> tuple[str, str, str]:
        """(account URL, share, path inside the share)."""
        u = urlparse(self.url)
        parts = [p for p in u.path.split("/") if p]
        return f"{u.scheme}://{u.netloc}", parts[0], "/".join(parts[1:])

    def share_client(self, concurrency: int = CONCURRENCY) -> Any:
        """An SDK ShareClient with a connection pool as wide as the concurrency."""
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.fileshare import ShareClient

        session = requests.Session()
        session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=max(10, concurrency * 2)))
        transport = RequestsTransport(session=session, session_owner=True,
                                      connection_verify=self.ca_path or True)
        account_url, share, _ = self.split()
        credential, kwargs = self._credential()
        return ShareClient(account_url, share, credential=credential, transport=transport, **kwargs)

    def _credential(self) -> tuple[Any, dict[str, Any]]:
        """What `sealfs` would pick from the same environment: a SAS, the key, Entra ID."""
        if self.env.get("SEALFS_AZURE_SAS"):
            return self.env["SEALFS_AZURE_SAS"].strip().lstrip("?"), {}
        if self.env.get("SEALFS_AZURE_ACCOUNT_KEY"):
            account = (urlparse(self.url).hostname or "").split(".")[0]
            return {"account_name": account, "account_key": self.env["SEALFS_AZURE_ACCOUNT_KEY"].strip()}, {}
        from azure.identity import DefaultAzureCredential
        return DefaultAzureCredential(exclude_interactive_browser_credential=True), {"token_intent": "backup"}

    def make_dir(self) -> None:
        """Create the directory this URL names (its parent must exist)."""
        _, _, path = self.split()
        with self.share_client(4) as client:
            client.get_directory_client(path).create_directory()

    def remove(self) -> None:
        """Delete the directory this URL names and everything in it (a target's leftovers)."""
        _, _, path = self.split()
        if not path:
            raise ValueError("refusing to empty a whole share")
        with self.share_client(4) as client:
            _remove(client, path)


    def tree_bytes(self) -> int:
        """Bytes of every file under the directory this URL names (what Azure bills)."""
        _, _, path = self.split()
        with self.share_client(4) as client:
            return _tree_bytes(client, path)


def _tree_bytes(client: Any, path: str) -> int:
    total = 0
    for e in client.get_directory_client(path).list_directories_and_files():
        sub = "/".join(p for p in (path, e["name"]) if p)
        total += _tree_bytes(client, sub) if e.get("is_directory") else int(e.get("size") or 0)
    return total


def _remove(client: Any, path: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError
    dc = client.get_directory_client(path)
    try:
        entries = list(dc.list_directories_and_files())
    except ResourceNotFoundError:
        return
    for e in entries:
        sub = f"{path}/{e['name']}"
        if e.get("is_directory"):
            _remove(client, sub)
        else:
            client.get_file_client(sub).delete_file()
    dc.delete_directory()


def share_from_env(url: str) -> AzShare:
    """A real share: the credential comes from the environment, as for `sealfs mount`."""
    env = {k: os.environ[k] for k in ("SEALFS_AZURE_SAS", "SEALFS_AZURE_ACCOUNT_KEY") if os.environ.get(k)}
    return AzShare(url.rstrip("/"), env, os.environ.get("REQUESTS_CA_BUNDLE"))


class BenchAzureFiles:
    """tests/servers/azfiles.py in a child process (out of the bench's interpreter lock),
    with one share; stopped by closing its stdin."""

    def __init__(self) -> None:
        import tempfile
        self.base = Path(tempfile.mkdtemp(prefix="sealfs-bench-azfiles-"))
        self.proc: subprocess.Popen | None = None
        self.share: AzShare | None = None

    def __enter__(self) -> AzShare:
        if not (SOURCE_ROOT / "tests" / "servers" / "azfiles.py").exists():
            raise TargetError("the Azure Files test server needs a source checkout "
                              "(tests/servers/azfiles.py); give a real share with --azfiles-url")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.servers.azfiles", str(self.base), SHARE],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=SOURCE_ROOT)
        proc = self.proc
        line = proc.stdout.readline()
        if not line:
            self.__exit__()
            raise TargetError(f"the Azure Files test server did not start (exit {proc.returncode})")
        info = json.loads(line)
        self.share = AzShare(f"https://{info['host']}:{info['port']}/{SHARE}",
                             {"SEALFS_AZURE_ACCOUNT_KEY": info["account_key"],
                              "REQUESTS_CA_BUNDLE": info["ca_path"]}, info["ca_path"])
        return self.share

    def __exit__(self, *exc) -> None:
        import shutil
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


class _Pattern(io.RawIOBase):
    """SIZE bytes of one repeated random MiB, seekable, never all in memory (the SDK
    reads its ranges from it in parallel)."""

    def __init__(self, size: int) -> None:
        self.size, self.pos, self.block = size, 0, os.urandom(MiB)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        parts = []
        while self.pos < end:
            at = self.pos % MiB
            take = min(MiB - at, end - self.pos)
            parts.append(self.block[at:at + take])
            self.pos += take
        return b"".join(parts)


class _Sink(io.RawIOBase):
    """Counts what the SDK downloads into it (seekable: parallel downloads need it)."""

    def __init__(self) -> None:
        self.pos = self.count = 0
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = offset if whence == io.SEEK_SET else self.pos + offset
        return self.pos

    def write(self, b: Any) -> int:
        n = len(b)
        with self.lock:
            self.count += n
            self.pos += n
        return n


class _AzTarget(DirectTarget):
    """A peer in a directory of its own on the share, removed when it closes."""

    backend = "azfiles"

    def __init__(self, work: Path, share: AzShare) -> None:
        super().__init__(work)
        self.share = share
        self.storage = None

    def setup(self) -> None:
        self.share.make_dir()

    def close(self) -> None:
        try:
            self.share.remove()
        finally:
            super().close()


class AzSdkTarget(_AzTarget):
    """azure-storage-file-share alone: upload_file / download_file, max_concurrency."""

    name = "azfiles-sdk"

    def __init__(self, work: Path, share: AzShare, concurrency: int = CONCURRENCY) -> None:
        super().__init__(work, share)
        self.concurrency = concurrency
        self.notes["pattern"] = (f"upload_file / download_file, max_concurrency={concurrency}, SDK defaults "
                                 "(4 MiB ranges; the first GET up to 32 MiB); cold_read: a new client")

    def sequential(self, size_mib: int) -> dict[str, float]:
        nbytes = size_mib * MiB
        _, _, base = self.share.split()
        path = "/".join(p for p in (base, f"azfiles-sdk-{secrets.token_hex(4)}.dat") if p)
        out: dict[str, float] = {}
        with self.share.share_client(self.concurrency) as client:
            fc = client.get_file_client(path)
            t0 = time.perf_counter()
            fc.upload_file(_Pattern(nbytes), length=nbytes, max_concurrency=self.concurrency)
            out["seq_write"] = nbytes / 1e6 / (time.perf_counter() - t0)
            out["seq_read"] = self._read(fc, nbytes)
        with self.share.share_client(self.concurrency) as client:
            fc = client.get_file_client(path)
            out["cold_read"] = self._read(fc, nbytes)
            fc.delete_file()
        return out

    def _read(self, fc: Any, nbytes: int) -> float:
        sink = _Sink()
        t0 = time.perf_counter()
        fc.download_file(max_concurrency=self.concurrency).readinto(sink)
        elapsed = time.perf_counter() - t0
        if sink.count != nbytes:
            raise TargetError(f"azfiles-sdk read {sink.count} bytes, expected {nbytes}")
        return nbytes / 1e6 / elapsed


class AzRawTarget(_AzTarget):
    """sealfs's AzureFilesBackend with the mount's defaults, no crypto and no FUSE: it
    writes write_many batches of 1 MiB pieces the size of a file's dirty limit (what one
    write-back flush hands the backend) and reads with read_many batches of readahead size."""

    name = "azfiles-raw"

    def __init__(self, work: Path, share: AzShare) -> None:
        from ..fs.core.files import FileTuning
        super().__init__(work, share)
        self.write_batch = FileTuning.file_dirty_limit
        self.read_batch = FileTuning.readahead_bytes
        self.notes["pattern"] = (f"write_many of {self.write_batch // MiB} x 1 MiB per call; "
                                 f"read_many of {self.read_batch // MiB} x 1 MiB per call")

    def _backend(self) -> Any:
        from ..backends.registry import BackendOptions, open_backend
        env = self.share.env
        return open_backend(self.share.url, BackendOptions(
            azure_sas=lambda: env.get("SEALFS_AZURE_SAS"),
            azure_account_key=lambda: env.get("SEALFS_AZURE_ACCOUNT_KEY")))

    def sequential(self, size_mib: int) -> dict[str, float]:
        import trio
        old = os.environ.get("REQUESTS_CA_BUNDLE")
        if self.share.ca_path:
            os.environ["REQUESTS_CA_BUNDLE"] = self.share.ca_path     # requests reads it per request
        try:
            return trio.run(self._sequential, size_mib * MiB)
        finally:
            if self.share.ca_path:
                if old is None:
                    os.environ.pop("REQUESTS_CA_BUNDLE", None)
                else:
                    os.environ["REQUESTS_CA_BUNDLE"] = old

    async def _sequential(self, nbytes: int) -> dict[str, float]:
        name = f"azfiles-raw-{secrets.token_hex(4)}.dat"
        out: dict[str, float] = {}
        backend = self._backend()
        try:
            t0 = time.perf_counter()
            await self._write(backend, name, nbytes)
            out["seq_write"] = nbytes / 1e6 / (time.perf_counter() - t0)
            out["seq_read"] = await self._timed_read(backend, name, nbytes)
        finally:
            await backend.aclose()
        backend = self._backend()
        try:
            out["cold_read"] = await self._timed_read(backend, name, nbytes)
            await backend.unlink(name)
        finally:
            await backend.aclose()
        return out

    async def _write(self, backend: Any, name: str, nbytes: int) -> None:
        data = os.urandom(MiB)
        handle = await backend.open(name, write=True, create=True)
        try:
            for start in range(0, nbytes, self.write_batch):
                end = min(start + self.write_batch, nbytes)
                await backend.write_many(handle, [(off, data[:min(MiB, end - off)])
                                                  for off in range(start, end, MiB)])
            await backend.flush(handle)
        finally:
            await backend.close(handle)

    async def _timed_read(self, backend: Any, name: str, nbytes: int) -> float:
        t0 = time.perf_counter()
        handle = await backend.open(name)
        got = 0
        try:
            for start in range(0, nbytes, self.read_batch):
                end = min(start + self.read_batch, nbytes)
                blobs = await backend.read_many(handle, [(off, min(MiB, end - off))
                                                         for off in range(start, end, MiB)])
                got += sum(len(b) for b in blobs)
        finally:
            await backend.close(handle)
        elapsed = time.perf_counter() - t0
        if got != nbytes:
            raise TargetError(f"azfiles-raw read {got} bytes of {name}, expected {nbytes}")
        return nbytes / 1e6 / elapsed


# peers on the share the azfiles backend is benched against: factory(work, share)
AZ_PEERS = {"azfiles-sdk": AzSdkTarget, "azfiles-raw": AzRawTarget}
