"""Share snapshots and share soft delete on the Azure Files backend, through the real SDK
against the protocol-level server: create with metadata, list, read at a snapshot (old
data, every write refused with EROFS), delete, and who may do which."""

from __future__ import annotations

import errno

import pytest

from sealfs.backends.registry import BackendOptions, open_backend
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.azfiles.conftest import OwnShare
from tests.servers.azfiles import READER

pytestmark = pytest.mark.azfiles


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


async def test_a_snapshot_keeps_the_old_data_read_only(own_share: OwnShare) -> None:
    live = own_share.backend()
    await _put(live, "f", b"old")
    await live.mkdir("d")
    snap = await live.create_snapshot({"sealfs": "test", "source": "abc"})
    await _put(live, "f", b"new")
    await live.rmdir("d")

    listed = await live.snapshots()
    assert [s.id for s in listed] == [snap.id]
    assert listed[0].metadata == {"sealfs": "test", "source": "abc"} and listed[0].time_ns == snap.time_ns

    at = open_backend(own_share.url, own_share.options(snapshot=snap.id))
    try:
        assert at.snapshot == snap.id and "snapshot" in at.transport
        assert await _read(at, "f") == b"old"
        assert sorted(await at.listdir("")) == ["d", "f"]
        before = own_share.server.calls.copy()
        for attempt in (lambda: at.open("f", write=True), lambda: at.create_file("g", b"x"),
                        lambda: at.mkdir("e"), lambda: at.unlink("f"), lambda: at.rmdir("d"),
                        lambda: at.rename("f", "g"), lambda: at.set_times("f", 1, 1)):
            with pytest.raises(PermissionError) as info:
                await attempt()
            assert info.value.errno == errno.EROFS
        assert own_share.server.calls == before          # refused before any request
    finally:
        await at.aclose()
    assert await _read(live, "f") == b"new"

    # The server refuses writes to a snapshot too, if one gets there.
    raw = own_share.backend(snapshot=snap.id)
    with pytest.raises(PermissionError) as info:
        await raw.mkdir("e")
    assert info.value.errno == errno.EROFS
    await raw.aclose()

    await live.delete_snapshot(snap.id)
    assert await live.snapshots() == []
    gone = own_share.backend(snapshot=snap.id)
    with pytest.raises(OSError, match="snapshot") as info:
        await gone.stat("f")
    assert info.value.errno == errno.ENOENT and not isinstance(info.value, FileNotFoundError)
    await gone.aclose()
    assert await _read(live, "f") == b"new"          # the live share is untouched
    await live.aclose()


async def test_deleting_needs_a_snapshot_id_never_deletes_the_share(own_share: OwnShare) -> None:
    live = own_share.backend()
    await _put(live, "f", b"data")
    for bad in ("", "latest", "2024-01-01", "@GMT-2024.01.01-00.00.00"):
        with pytest.raises(ValueError, match="snapshot id"):
            await live.delete_snapshot(bad)
    with pytest.raises(OSError, match="does not exist"):
        await live.delete_snapshot("2001-01-01T00:00:00.0000000Z")
    assert own_share.server.calls["delete_share"] == 1            # the missing snapshot's, with its id
    assert own_share.name.lower() in own_share.server.shares
    assert await _read(live, "f") == b"data"
    with pytest.raises(ValueError):
        own_share.backend(snapshot="yesterday")
    await live.aclose()


async def test_share_sas_and_data_roles_read_snapshots_but_cannot_make_them(own_share: OwnShare) -> None:
    srv = own_share.server
    live = own_share.backend()
    await _put(live, "f", b"old")
    snap = await live.create_snapshot({})
    await _put(live, "f", b"new")

    sas = srv.share_sas(own_share.name, "rcwdl")
    by_sas = own_share.backend(sas=lambda: sas, account_key=None)
    for attempt in (lambda: by_sas.create_snapshot({}), by_sas.snapshots,
                    lambda: by_sas.delete_snapshot(snap.id)):
        with pytest.raises(PermissionError, match="share-level"):
            await attempt()
    reader = own_share.backend(snapshot=snap.id, sas=lambda: sas, account_key=None)
    assert await _read(reader, "f") == b"old"

    srv.token_role = READER
    entra = own_share.backend(snapshot=snap.id, account_key=None)
    assert await _read(entra, "f") == b"old"
    with pytest.raises(PermissionError, match="share-level"):
        await own_share.backend(account_key=None).create_snapshot({})

    account_sas = srv.account_sas("rcwdl", resource_types="sco")
    by_account_sas = own_share.backend(sas=lambda: account_sas, account_key=None)
    made = await by_account_sas.create_snapshot({"who": "account_sas"})
    assert made.id in [s.id for s in await by_account_sas.snapshots()]
    for b in (live, by_sas, reader, entra, by_account_sas):
        await b.aclose()


async def test_metadata_names_azure_refuses_are_refused_here(own_share: OwnShare) -> None:
    live = own_share.backend()
    with pytest.raises(ValueError, match="metadata"):
        await live.create_snapshot({"source-path": "x"})
    assert own_share.server.calls["snapshot_share"] == 0
    await live.aclose()


async def test_soft_delete_is_reported_or_said_unknown(own_share: OwnShare) -> None:
    srv = own_share.server
    live = own_share.backend()
    assert (await live.soft_delete()).describe() == "on (7 days)"
    srv.share_soft_delete = (False, 0)
    assert (await live.soft_delete()).enabled is False
    srv.share_soft_delete = None
    state = await live.soft_delete()
    assert state.enabled is None and "did not report" in state.why
    sas = srv.share_sas(own_share.name, "rcwdl")
    by_sas = own_share.backend(sas=lambda: sas, account_key=None)
    state = await by_sas.soft_delete()
    assert state.enabled is None and "cannot read" in state.why
    for b in (live, by_sas):
        await b.aclose()


async def test_a_volume_at_a_snapshot_reads_the_old_files_and_refuses_every_write(
        own_share: OwnShare, keyfile) -> None:
    secrets = KeySecrets(keyfile=keyfile)
    await Volume.init(own_share.backend(), provider_for_init(None, secrets), chunk_size=4096, pins=PinStore())
    vol = await Volume.load(own_share.backend(), secrets, pins=PinStore())
    f = await vol.create("/kept.txt", 0o644)
    await f.write(0, b"old contents " * 1000)
    await f.close()
    await vol.mkdir("/dir", 0o755)
    snap = await vol.backend.create_snapshot({"sealfs": "test"})
    f = await vol.open("/kept.txt", write=True, truncate=True)
    await f.write(0, b"new")
    await f.close()
    await vol.close()

    old = await Volume.load(open_backend(own_share.url, own_share.options(snapshot=snap.id)), secrets,
                            pins=PinStore())
    try:
        assert await old.read_file("/kept.txt") == b"old contents " * 1000
        stored = own_share.server.stored_bytes()
        attempts = (lambda: old.create("/new.txt", 0o644), lambda: old.open("/kept.txt", write=True),
                    lambda: old.mkdir("/d2", 0o755), lambda: old.unlink("/kept.txt"),
                    lambda: old.rmdir("/dir"), lambda: old.rename("/kept.txt", "/moved.txt"),
                    lambda: old.setattr("/kept.txt", size=0), lambda: old.setattr("/kept.txt", mode=0o600))
        for attempt in attempts:
            with pytest.raises(OSError) as info:
                await attempt()
            assert info.value.errno == errno.EROFS, attempt
        assert own_share.server.stored_bytes() == stored
    finally:
        await old.close()


def test_local_stores_have_no_snapshots(tmp_path) -> None:
    with pytest.raises(ValueError, match="no snapshots"):
        open_backend(str(tmp_path), BackendOptions(snapshot="2024-01-01T00:00:00.0000000Z"))
