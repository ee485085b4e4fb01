"""Fixtures for the SMB backend tests: a real smbd per session, a fresh store per test.

Fixture names: ``samba`` (session-scoped SambaServer with ``server smb encrypt =
required``), ``smb_store`` (a fresh, empty STORE URL + its local directory on the share),
``smb_backend`` (an SmbBackend on that store, closed afterwards), ``make_samba`` (start
extra servers with other settings; stopped at the end of the test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from sealfs.backends.smb import SmbBackend
from tests.conftest import need_smbd as _need_smbd
from tests.servers.samba import SambaServer, SmbStore, new_store


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
