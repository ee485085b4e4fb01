"""Fixtures for the Azure Files REST backend: a protocol-level server per session.

Fixture names: ``azfiles_server`` (session-scoped AzureFilesServer, tests/servers/azfiles.py),
``azfiles`` (the same server with faults and counters reset and the environment pointed at
it: REQUESTS_CA_BUNDLE and a managed-identity endpoint), ``azfiles_store`` (a fresh STORE
URL on the share plus its account key file), ``azfiles_backend`` (an AzureFilesBackend on
it with the account key, closed afterwards), ``own_share`` (a share of its own, for
snapshots: they cover a whole share).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sealfs.backends.azfiles import AzureFilesBackend, AzureSettings, AzureTarget
from sealfs.backends.registry import BackendOptions
from tests.conftest import AZFILES_SHARE
from tests.servers.azfiles import AzureFilesServer

SHARE = AZFILES_SHARE


def point_env_at(server: AzureFilesServer, mp: pytest.MonkeyPatch) -> None:
    for var in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "MSI_ENDPOINT", "MSI_SECRET",
                "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "SEALFS_AZURE_SAS", "SEALFS_AZURE_ACCOUNT_KEY",
                "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        mp.delenv(var, raising=False)
    mp.setenv("REQUESTS_CA_BUNDLE", str(server.ca_path))
    mp.setenv("IDENTITY_ENDPOINT", server.identity_endpoint)
    mp.setenv("IDENTITY_HEADER", server.identity_header)


@pytest.fixture
def azfiles(azfiles_server: AzureFilesServer, monkeypatch: pytest.MonkeyPatch) -> AzureFilesServer:
    azfiles_server.reset()
    point_env_at(azfiles_server, monkeypatch)
    return azfiles_server


@dataclass
class AzStore:
    server: AzureFilesServer
    url: str
    path: str            # inside the share
    key_file: Path

    def backend(self, **settings: object) -> AzureFilesBackend:
        key = self.server.account_key
        return AzureFilesBackend(AzureTarget.parse(self.url), account_key=lambda: key,
                                 settings=AzureSettings(**settings))  # type: ignore[arg-type]


@pytest.fixture
def azfiles_store(azfiles: AzureFilesServer, tmp_path: Path) -> AzStore:
    return new_azfiles_store(azfiles, tmp_path)


def new_azfiles_store(server: AzureFilesServer, tmp_path: Path) -> AzStore:
    """A fresh directory on the test share as a STORE URL, with the account key in a file."""
    path = f"t{uuid.uuid4().hex[:12]}"
    server.make_dir(SHARE, path)
    key_file = tmp_path / "account.key"
    key_file.write_text(server.account_key + "\n")
    key_file.chmod(0o600)
    return AzStore(server, server.share_url(SHARE, path), path, key_file)


@pytest.fixture
async def azfiles_backend(azfiles_store: AzStore) -> AsyncIterator[AzureFilesBackend]:
    backend = azfiles_store.backend()
    try:
        yield backend
    finally:
        await backend.aclose()


@dataclass
class OwnShare:
    server: AzureFilesServer
    name: str
    url: str            # a store directory inside the share

    def backend(self, snapshot: str | None = None, **kwargs) -> AzureFilesBackend:
        key = self.server.account_key
        kwargs.setdefault("account_key", lambda: key)
        return AzureFilesBackend(AzureTarget.parse(self.url), snapshot=snapshot, **kwargs)

    def options(self, **kwargs) -> BackendOptions:
        key = self.server.account_key
        kwargs.setdefault("azure_account_key", lambda: key)
        return BackendOptions(**kwargs)


@pytest.fixture
def own_share(azfiles: AzureFilesServer) -> OwnShare:
    """A share of its own: a snapshot covers the whole share, and lists every snapshot of it."""
    name = f"snap{uuid.uuid4().hex[:10]}"
    azfiles.create_share(name)
    azfiles.make_dir(name, "store")
    return OwnShare(azfiles, name, azfiles.share_url(name, "store"))
