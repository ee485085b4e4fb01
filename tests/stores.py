"""One fresh, uninitialized store on each backend kind (local, smb, azfiles), for the
suites that damage ciphertext: sync/restore, fsck and the tamper tests (issue 18).

`store_kit` gives a STORE argument for the CLI, a Backend factory for the library and the
directory on disk that holds the ciphertext (the local store itself, the Samba share's
directory, the Azure Files test server's share directory), so a test tampers with the
same bytes whichever transport serves them. The credentials the CLI needs are put in the
environment (monkeypatched), so subprocesses inherit them: Entra ID from the test
server's managed-identity endpoint on azfiles, which draws no account-key warning on
stderr that the tests' one-line stderr assertions would see.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from sealfs.backends.base import Backend, Capabilities
from sealfs.backends.local import LocalBackend
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume

KINDS = ("local", "smb", "azfiles")


@dataclass
class StoreKit:
    kind: str
    url: str                            # the STORE argument
    root: Path                          # where its ciphertext is on disk
    factory: Callable[[], Backend]      # a new, unconnected Backend on it

    @property
    def capabilities(self) -> Capabilities:
        return self.factory().capabilities

    def skip_without(self, capability: str, why: str) -> None:
        """Skip (never silently pass) a case this backend declares it cannot hold."""
        if not getattr(self.capabilities, capability):
            pytest.skip(f"{self.kind}: Capabilities.{capability} is false: {why}")

    async def backend(self) -> Backend:
        backend = self.factory()
        if hasattr(backend, "connect"):
            await backend.connect()
        return backend

    async def init(self, keyfile: Path, chunk_size: int = 64 * 1024) -> None:
        """Volume.init through the library (the CLI's `init` is `sealfs init URL`)."""
        backend = await self.backend()
        try:
            await Volume.init(backend, provider_for_init(None, KeySecrets(keyfile=keyfile)),
                              chunk_size=chunk_size, pins=PinStore())
        finally:
            await backend.aclose()

    async def load(self, keyfile: Path) -> Volume:
        return await Volume.load(await self.backend(), KeySecrets(keyfile=keyfile), pins=PinStore())

    def missing(self) -> str:
        """A STORE argument beside this one that names no store."""
        return self.url.rstrip("/") + "-missing"

    def shown(self, ciphertext: Path) -> str:
        """How the CLI names a ciphertext path: the store's location, then the backend path
        (on a local store, the path itself)."""
        return f"{self.url.rstrip('/')}/{ciphertext.relative_to(self.root)}"

    def local_path(self, keyfile: Path, path: str, what: Callable[[Volume, str], Awaitable[str]]) -> Path:
        """root / what(vol, path), from any test (sync or inside trio): a thread of its own."""
        async def main() -> Path:
            vol = await self.load(keyfile)
            try:
                return self.root / await what(vol, path)
            finally:
                await vol.close()
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(trio.run, main).result()


def make_kit(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreKit:
    mp = request.getfixturevalue("monkeypatch")
    if kind == "local":
        path = tmp_path / "vstore"
        path.mkdir()
        return StoreKit(kind, str(path), path, lambda: LocalBackend(path))
    if kind == "smb":
        from tests.servers.samba import new_store
        samba = request.getfixturevalue("samba")
        smb = new_store(samba)
        mp.setenv("SEALFS_SMB_PASSWORD", samba.password)
        return StoreKit(kind, smb.url, smb.local, smb.backend)
    from tests.azfiles.conftest import SHARE, new_azfiles_store, point_env_at
    server = request.getfixturevalue("azfiles_server")
    server.reset()
    point_env_at(server, mp)            # the CA, and Entra ID through managed identity
    az = new_azfiles_store(server, tmp_path)
    return StoreKit(kind, az.url, server.share_root(SHARE) / az.path, az.backend)


@pytest.fixture(params=KINDS)
def store_kit(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKit:
    """A fresh, empty store directory on local, smb and azfiles (see the module doc)."""
    return make_kit(request.param, request, tmp_path)
