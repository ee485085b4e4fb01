"""AzureFilesBackend against the protocol-level server: every Backend method with
local-filesystem errnos, ranges, capabilities, credentials and their refusals, retries."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from sealfs.backends.azfiles import RANGE, AzureFilesBackend, AzureSettings, AzureTarget
from sealfs.backends.base import BackendError
from sealfs.backends.local import LocalBackend
from sealfs.backends.registry import BackendOptions, open_backend
from tests.servers.azfiles import CONTRIBUTOR, READER
from tests.smb.test_smb_backend import SCENARIOS, _outcome, _setup, _tree

pytestmark = pytest.mark.azfiles
MiB = 1024 * 1024


async def test_every_method_round_trips(azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    b, srv = azfiles_backend, azfiles_store.server
    h = await b.open("f", write=True, create=True, exclusive=True)
    await b.write(h, 0, b"hello world")
    await b.write_many(h, [(11, b"!"), (100, memoryview(b"tail"))])
    assert await b.read(h, 0, 12) == b"hello world!"
    assert await b.read(h, 12, 88) == b"\0" * 88             # the gap reads as zeros
    assert await b.read(h, 100, 50) == b"tail"               # short only at end of file
    assert await b.read(h, 500, 10) == b""
    assert await b.read_many(h, [(0, 5), (6, 5), (102, 10)]) == [b"hello", b"world", b"il"]
    st = await b.fstat(h)
    assert (st.size, st.is_dir, st.nlink) == (104, False, 1) and st.ino
    await b.truncate(h, 5)
    await b.flush(h)
    assert (await b.fstat(h)).size == 5
    await b.close(h)
    await b.close(h)  # closing twice is harmless
    assert srv.file_bytes("vol", f"{azfiles_store.path}/f") == b"hello"

    h = await b.open("f")
    assert await b.read(h, 0, 100) == b"hello"
    await b.close(h)
    assert (await b.read_head("f", 3))[0] == b"hel" and (await b.read_head("f", 3))[1].size == 5

    await b.mkdir("d")
    await b.mkdir("d/e")
    assert sorted(await b.listdir("")) == ["d", "f"]
    entries = dict(await b.scandir(""))
    assert entries["d"].is_dir and not entries["f"].is_dir and entries["f"].size == 5
    assert entries["f"].ino == (await b.stat("f")).ino

    await b.rename("f", "d/g")
    assert sorted(await b.listdir("d")) == ["e", "g"]
    with pytest.raises(PermissionError) as info:
        await b.link("d/g", "h")
    assert info.value.errno == errno.EPERM

    await b.set_times("d/g", 1_000_000_000_123_456_700, 1_500_000_000_987_654_300)
    st = await b.stat("d/g")
    assert (st.atime_ns, st.mtime_ns) == (1_000_000_000_123_456_700, 1_500_000_000_987_654_300)
    listed = dict(await b.scandir("d"))["g"]
    assert (listed.atime_ns, listed.mtime_ns) == (st.atime_ns, st.mtime_ns)   # a listing agrees

    await b.unlink("d/g")
    await b.rmdir("d/e")
    await b.rmdir("d")
    assert await b.listdir("") == []
    assert (await b.stat("")).is_dir
    vfs = await b.statvfs()
    assert vfs.max_name_length == 255 and vfs.blocks > 0


async def test_capabilities_and_case_insensitive_names(azfiles_backend: AzureFilesBackend) -> None:
    caps = azfiles_backend.capabilities
    assert caps.case_insensitive and not caps.hard_links and not caps.unlink_open_files
    assert (caps.max_name_length, caps.max_path_length) == (255, 2048)
    h = await azfiles_backend.open("abc", write=True, create=True)
    await azfiles_backend.write(h, 0, b"x")
    await azfiles_backend.close(h)
    assert (await azfiles_backend.stat("ABC")).size == 1
    with pytest.raises(OSError) as info:
        await azfiles_backend.stat("n" * 256)
    assert info.value.errno == errno.ENAMETOOLONG


@pytest.mark.serial       # parallel vs serial is told apart by the wall clock (0.6 s vs 0.75 s)
async def test_large_io_is_split_into_4mib_ranges_sent_in_parallel(azfiles_backend: AzureFilesBackend,
                                                                    azfiles_store) -> None:
    srv = azfiles_store.server
    data = os.urandom(9 * MiB + 12345)
    h = await azfiles_backend.open("big", write=True, create=True)
    srv.calls.clear()
    srv.delay = 0.2                       # each request takes 0.2 s: serial would take >= 0.6 s
    start = time.monotonic()
    await azfiles_backend.write(h, 0, data)
    elapsed = time.monotonic() - start
    srv.delay = 0.0
    assert srv.calls["put_range"] == 3 and srv.calls["set_file"] == 1     # one resize, then ranges
    assert elapsed < 0.2 * 4 - 0.05, elapsed
    await azfiles_backend.write_many(h, [(20 * MiB + i * 64 * 1024, data[:64 * 1024]) for i in range(40)])
    assert await azfiles_backend.read(h, 0, len(data)) == data
    got = await azfiles_backend.read_many(h, [(0, 3 * MiB), (3 * MiB, 6 * MiB + 12345), (20 * MiB, 64 * 1024)])
    assert b"".join(got[:2]) == data and got[2] == data[:64 * 1024]
    end = 20 * MiB + 40 * 64 * 1024
    assert len(await azfiles_backend.read(h, end - 100, 5 * MiB)) == 100
    assert (await azfiles_backend.fstat(h)).size == end
    assert azfiles_backend.untearable(0, RANGE) and not azfiles_backend.untearable(0, RANGE + 1)
    await azfiles_backend.close(h)


async def test_exclusive_create_never_overwrites(azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    """Azure's Create File overwrites; ours must not, even when two race for one name."""
    b = azfiles_backend
    h = await b.create_file("x", b"first")
    await b.close(h)
    with pytest.raises(FileExistsError):
        await b.create_file("x", b"second")
    winners: list[bytes] = []

    async def racer(tag: bytes) -> None:
        try:
            await b.close(await b.create_file("race", tag))
            winners.append(tag)
        except FileExistsError:
            pass
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(racer, b"r%d" % i)
    assert len(winners) == 1
    assert azfiles_store.server.file_bytes("vol", f"{azfiles_store.path}/race") == winners[0]
    assert azfiles_store.server.file_bytes("vol", f"{azfiles_store.path}/x") == b"first"
    assert sorted(await b.listdir("")) == ["race", "x"]        # no temporary names left


async def test_open_handles_follow_renames(azfiles_backend: AzureFilesBackend) -> None:
    b = azfiles_backend
    h = await b.create_file("a", b"data")
    await b.mkdir("dir")
    await b.rename("a", "dir/b")
    await b.write(h, 4, b"more")
    assert await b.read(h, 0, 100) == b"datamore"
    await b.close(h)


_AZURE_DIFFERS = {"link onto existing", "link missing", "link a dir"}   # no hard links: EPERM


@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - _AZURE_DIFFERS))
async def test_errors_and_effects_mirror_local(scenario: str, azfiles_backend: AzureFilesBackend,
                                               tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    local = LocalBackend(tmp_path / "local")
    results = []
    for b in (local, azfiles_backend):
        await _setup(b)
        try:
            res = await SCENARIOS[scenario](b)
            if hasattr(res, "path"):
                await b.close(res)
            results.append((_outcome(None), await _tree(b)))
        except OSError as exc:
            results.append((_outcome(exc), await _tree(b)))
    assert results[1] == results[0]


# -- credentials --------------------------------------------------------------------------------

def _backend(store, **kw: Any) -> AzureFilesBackend:
    return AzureFilesBackend(AzureTarget.parse(store.url), settings=AzureSettings(retry_deadline=3), **kw)


async def _roundtrip(b: AzureFilesBackend) -> None:
    await b.close(await b.create_file("probe", b"x"))
    assert "probe" in await b.listdir("")


def test_store_urls() -> None:
    t = AzureTarget.parse("https://acct.file.core.windows.net/share/a/b")
    assert (t.account, t.share, t.path) == ("acct", "share", "a/b")
    assert AzureTarget.parse("https://h.example:8443/s", "other").account == "other"
    for bad in ("http://acct.file.core.windows.net/share", "https://acct.file.core.windows.net/",
                "https://acct.file.core.windows.net/share?sv=1&sig=x"):
        with pytest.raises(ValueError):
            AzureTarget.parse(bad)
    with pytest.raises(ValueError, match="http://"):
        open_backend("http://acct.file.core.windows.net/share", BackendOptions())
    assert isinstance(open_backend("https://acct.file.core.windows.net/share", BackendOptions()),
                      AzureFilesBackend)


async def test_share_sas_read_write(azfiles_store) -> None:
    sas = azfiles_store.server.share_sas("vol", "rcwdl")
    b = _backend(azfiles_store, sas=lambda: sas)
    await _roundtrip(b)
    assert "SAS" in b.transport


async def test_a_sas_that_allows_http_is_refused_before_any_request(azfiles_store) -> None:
    srv = azfiles_store.server
    for sas in (srv.share_sas("vol", "rcwdl", protocol="https,http"), srv.share_sas("vol", "rcwdl", protocol="")):
        b = _backend(azfiles_store, sas=lambda sas=sas: sas)
        with pytest.raises(PermissionError, match="http"):
            await b.listdir("")
    assert srv.calls.total() == 0


async def test_an_expired_sas_is_refused(azfiles_store) -> None:
    srv = azfiles_store.server
    sas = srv.share_sas("vol", "rcwdl", expiry=time.time() - 60)
    with pytest.raises(PermissionError, match="expired"):
        await _backend(azfiles_store, sas=lambda: sas).listdir("")
    # The server refuses it too (a clock that disagrees with ours must not let it through).
    from azure.storage.fileshare import ShareClient
    with pytest.raises(Exception) as info:
        ShareClient(srv.account_url, "vol", credential=sas).get_directory_client(azfiles_store.path).get_directory_properties()
    assert getattr(info.value, "error_code", None) == "AuthenticationFailed"


async def test_a_sas_without_write_reads_but_cannot_write(azfiles_store) -> None:
    srv = azfiles_store.server
    writer = azfiles_store.backend()
    await writer.close(await writer.create_file("kept", b"old"))
    sas = srv.share_sas("vol", "rl")
    b = _backend(azfiles_store, sas=lambda: sas)
    h = await b.open("kept")
    assert await b.read(h, 0, 10) == b"old"
    with pytest.raises(PermissionError, match="SAS") as info:
        await b.write(h, 0, b"new")
    assert info.value.errno == errno.EACCES
    with pytest.raises(PermissionError):
        await b.create_file("new", b"x")
    assert srv.file_bytes("vol", f"{azfiles_store.path}/kept") == b"old"


async def test_a_wrong_account_key_is_refused(azfiles_store) -> None:
    wrong = "A" * 86 + "=="
    with pytest.raises(PermissionError, match="AuthenticationFailed"):
        await _backend(azfiles_store, account_key=lambda: wrong).listdir("")


async def test_entra_id_with_the_contributor_role(azfiles_store) -> None:
    srv = azfiles_store.server
    srv.token_role = CONTRIBUTOR
    b = _backend(azfiles_store)              # no SAS, no key: DefaultAzureCredential (managed identity)
    await _roundtrip(b)
    assert "Entra ID" in b.transport and srv.calls["token"] >= 1


async def test_entra_id_reader_reads_and_a_write_names_the_role(azfiles_store) -> None:
    srv = azfiles_store.server
    writer = azfiles_store.backend()
    await writer.close(await writer.create_file("kept", b"old"))
    srv.token_role = READER
    b = _backend(azfiles_store)
    assert "kept" in await b.listdir("")
    with pytest.raises(PermissionError, match="Storage File Data Privileged Contributor"):
        await b.create_file("new", b"x")


async def test_entra_id_without_a_file_data_role_is_refused(azfiles_store) -> None:
    azfiles_store.server.token_role = "Storage File Data SMB Share Contributor"
    with pytest.raises(PermissionError, match="Privileged Reader"):
        await _backend(azfiles_store).listdir("")


# -- retries --------------------------------------------------------------------------------

async def test_throttling_is_retried_after_retry_after(azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    srv = azfiles_store.server
    h = await azfiles_backend.create_file("t", b"x" * 10)
    srv.calls.clear()
    srv.fail_next("put_range", 429, 2, retry_after=1)
    start = time.monotonic()
    await azfiles_backend.write(h, 0, b"y" * 10)
    assert time.monotonic() - start >= 2.0            # Retry-After: 1, twice
    assert srv.calls["fault:put_range"] == 2 and srv.calls["put_range"] == 1
    assert srv.file_bytes("vol", f"{azfiles_store.path}/t") == b"y" * 10
    await azfiles_backend.close(h)


async def test_a_lasting_outage_gives_eio_in_bounded_time(azfiles_store) -> None:
    srv = azfiles_store.server
    b = azfiles_store.backend(retry_deadline=2.0)
    h = await b.create_file("t", b"x")
    srv.fail_next("*", 503, 1000)
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        await b.read(h, 0, 1)
    assert info.value.errno == errno.EIO and time.monotonic() - start < 5
    assert srv.calls["fault:get_file"] >= 2                          # it did retry


async def test_a_500_is_not_retried_for_a_rename(azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    """A rename may have happened before the 500: resending it could report a false error
    or undo nothing; the caller gets EIO, never a false success."""
    srv = azfiles_store.server
    await azfiles_backend.close(await azfiles_backend.create_file("s", b"x"))
    srv.fail_next("rename_file", 500, 1)
    with pytest.raises(BackendError):
        await azfiles_backend.rename("s", "d")
    assert srv.calls["fault:rename_file"] == 1


async def test_tls_is_verified(azfiles_store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with pytest.raises(BackendError):
        await azfiles_store.backend(retry_deadline=1).listdir("")
    monkeypatch.setenv("SSL_CERT_FILE", str(azfiles_store.server.ca_path))   # the other standard variable
    assert await azfiles_store.backend().listdir("") == []
