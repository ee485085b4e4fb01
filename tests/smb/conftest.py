"""Fixtures for the SMB backend tests: a real smbd per session, a fresh store per test.

Fixture names: ``samba`` (session-scoped SambaServer with ``server smb encrypt =
required``), ``smb_store`` (a fresh, empty STORE URL + its local directory on the share),
``smb_backend`` (an SmbBackend on that store, closed afterwards), ``make_samba`` (start
extra servers with other settings; stopped at the end of the test).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ -> "servers" importable

from servers.samba import SambaServer, SmbStore, new_store  # noqa: E402

from sealfs.backends.smb import SmbBackend  # noqa: E402


def _need_smbd() -> None:
    if shutil.which("smbd") is None and not os.path.exists("/usr/sbin/smbd"):
        pytest.fail("smbd is not installed (apt-get install samba smbclient tcpdump)")
    if os.geteuid() != 0:
        pytest.fail("the SMB tests run smbd, which needs root (run them in the CI container)")


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    _need_smbd()
    with SambaServer() as server:
        yield server


@pytest.fixture
def make_samba() -> Iterator[Callable[..., SambaServer]]:
    servers: list[SambaServer] = []

    def make(**kwargs: object) -> SambaServer:
        _need_smbd()
        server = SambaServer(**kwargs)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
        server.cleanup()


@pytest.fixture
def smb_store(samba: SambaServer) -> SmbStore:
    return new_store(samba)


@pytest.fixture
async def smb_backend(smb_store: SmbStore) -> AsyncIterator[SmbBackend]:
    backend = smb_store.backend()
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.aclose()
