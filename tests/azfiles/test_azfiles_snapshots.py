"""Share snapshots and share soft delete on the Azure Files backend, through the real SDK
against the protocol-level server: create with metadata, list, read at a snapshot (old
data, every write refused with EROFS), delete, and who may do which."""

from __future__ import annotations

import errno
import uuid
from dataclasses import dataclass

import pytest

from sealfs.backends.azfiles import AzureFilesBackend, AzureTarget
from sealfs.backends.registry import BackendOptions, open_backend
from tests.servers.azfiles import READER, AzureFilesServer

pytestmark = pytest.mark.azfiles


@dataclass
class Share:
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
def share(azfiles: AzureFilesServer) -> Share:
    """A share of its own: a snapshot covers the whole share, and lists every snapshot of it."""
    name = f"snap{uuid.uuid4().hex[:10]}"
    azfiles.create_share(name)
    with azfiles._lock:
        azfiles.shares[name].nodes["store"] = azfiles._node("store", True)
    return Share(azfiles, name, azfiles.share_url(name, "store"))


async def _put(b, path: str, data: bytes) -> None:
    try:
        await b.unlink(path)
    except FileNotFoundError:
        pass
    await b.close(await b.create_file(path, data))


async def _read(b, path: str) -> bytes:
    h = await b.open(path)
    try:
        return await b.read(h, 0, 1 << 20)
    finally:
        await b.close(h)


async def test_a_snapshot_keeps_the_old_data_read_only(share: Share) -> None:
    live = share.backend()
    await _put(live, "f", b"old")
    await live.mkdir("d")
    snap = await live.create_snapshot({"sealfs": "test", "source": "abc"})
    await _put(live, "f", b"new")
    await live.rmdir("d")

    listed = await live.snapshots()
    assert [s.id for s in listed] == [snap.id]
    assert listed[0].metadata == {"sealfs": "test", "source": "abc"} and listed[0].time_ns == snap.time_ns

    at = open_backend(share.url, share.options(snapshot=snap.id))
    try:
        assert at.snapshot == snap.id and "snapshot" in at.transport
        assert await _read(at, "f") == b"old"
        assert sorted(await at.listdir("")) == ["d", "f"]
        before = share.server.calls.copy()
        for attempt in (lambda: at.open("f", write=True), lambda: at.create_file("g", b"x"),
                        lambda: at.mkdir("e"), lambda: at.unlink("f"), lambda: at.rmdir("d"),
                        lambda: at.rename("f", "g"), lambda: at.set_times("f", 1, 1)):
            with pytest.raises(PermissionError) as info:
                await attempt()
            assert info.value.errno == errno.EROFS
        assert share.server.calls == before          # refused before any request
    finally:
        await at.aclose()
    assert await _read(live, "f") == b"new"

    # The server refuses writes to a snapshot too, if one gets there.
    raw = share.backend(snapshot=snap.id)
    with pytest.raises(PermissionError) as info:
        await raw.mkdir("e")
    assert info.value.errno == errno.EROFS
    await raw.aclose()

    await live.delete_snapshot(snap.id)
    assert await live.snapshots() == []
    gone = share.backend(snapshot=snap.id)
    with pytest.raises(FileNotFoundError, match="snapshot"):
        await gone.stat("f")
    await gone.aclose()
    assert await _read(live, "f") == b"new"          # the live share is untouched
    await live.aclose()


async def test_deleting_needs_a_snapshot_id_never_deletes_the_share(share: Share) -> None:
    live = share.backend()
    await _put(live, "f", b"data")
    for bad in ("", "latest", "2024-01-01", "@GMT-2024.01.01-00.00.00"):
        with pytest.raises(ValueError, match="snapshot id"):
            await live.delete_snapshot(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        await live.delete_snapshot("2001-01-01T00:00:00.0000000Z")
    assert share.server.calls["delete_share"] == 1            # the missing snapshot's, with its id
    assert share.name.lower() in share.server.shares
    assert await _read(live, "f") == b"data"
    with pytest.raises(ValueError):
        share.backend(snapshot="yesterday")
    await live.aclose()


async def test_share_sas_and_data_roles_read_snapshots_but_cannot_make_them(share: Share) -> None:
    srv = share.server
    live = share.backend()
    await _put(live, "f", b"old")
    snap = await live.create_snapshot({})
    await _put(live, "f", b"new")

    sas = srv.share_sas(share.name, "rcwdl")
    by_sas = share.backend(sas=lambda: sas, account_key=None)
    for attempt in (lambda: by_sas.create_snapshot({}), by_sas.snapshots,
                    lambda: by_sas.delete_snapshot(snap.id)):
        with pytest.raises(PermissionError, match="share-level"):
            await attempt()
    reader = share.backend(snapshot=snap.id, sas=lambda: sas, account_key=None)
    assert await _read(reader, "f") == b"old"

    srv.token_role = READER
    entra = share.backend(snapshot=snap.id, account_key=None)
    assert await _read(entra, "f") == b"old"
    with pytest.raises(PermissionError, match="share-level"):
        await share.backend(account_key=None).create_snapshot({})

    account_sas = srv.account_sas("rcwdl", resource_types="sco")
    by_account_sas = share.backend(sas=lambda: account_sas, account_key=None)
    made = await by_account_sas.create_snapshot({"who": "account_sas"})
    assert made.id in [s.id for s in await by_account_sas.snapshots()]
    for b in (live, by_sas, reader, entra, by_account_sas):
        await b.aclose()


async def test_metadata_names_azure_refuses_are_refused_here(share: Share) -> None:
    live = share.backend()
    with pytest.raises(ValueError, match="metadata"):
        await live.create_snapshot({"source-path": "x"})
    assert share.server.calls["snapshot_share"] == 0
    await live.aclose()


async def test_soft_delete_is_reported_or_said_unknown(share: Share) -> None:
    srv = share.server
    live = share.backend()
    assert (await live.soft_delete()).describe() == "on (7 days)"
    srv.share_soft_delete = (False, 0)
    assert (await live.soft_delete()).enabled is False
    srv.share_soft_delete = None
    state = await live.soft_delete()
    assert state.enabled is None and "did not report" in state.why
    sas = srv.share_sas(share.name, "rcwdl")
    by_sas = share.backend(sas=lambda: sas, account_key=None)
    state = await by_sas.soft_delete()
    assert state.enabled is None and "cannot read" in state.why
    for b in (live, by_sas):
        await b.aclose()


def test_local_stores_have_no_snapshots(tmp_path) -> None:
    with pytest.raises(ValueError, match="no snapshots"):
        open_backend(str(tmp_path), BackendOptions(snapshot="2024-01-01T00:00:00.0000000Z"))
