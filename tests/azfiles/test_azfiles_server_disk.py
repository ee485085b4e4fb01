"""The test server keeps its shares on disk (tests/servers/azfiles_disk.py): what tests
that tamper with a store rely on. Its own state never shows as an entry, a change made
on disk is what the service then answers, and a snapshot is a copy of its own."""

from __future__ import annotations

import os

import pytest

from sealfs.backends.azfiles import AzureFilesBackend

pytestmark = pytest.mark.azfiles


async def test_entries_are_real_files_and_directories_and_nothing_else(
        azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    b, srv = azfiles_backend, azfiles_store.server
    await b.mkdir("d")
    await b.close(await b.create_file("d/Mixed.Case", b"bytes"))
    h = await b.open("d/f", write=True, create=True)
    await b.write(h, 0, b"x" * 10)
    await b.truncate(h, 4)
    await b.close(h)
    await b.rename("d/f", "g")
    root = srv.share_root("vol") / azfiles_store.path
    found = sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root)
                   for n in dirs + files)
    assert found == ["d", "d/Mixed.Case", "g"]
    assert (root / "d" / "Mixed.Case").read_bytes() == b"bytes" and (root / "g").read_bytes() == b"xxxx"
    assert os.listdir(srv.tmp_dir) == []                 # nothing half made is left aside
    assert (await b.stat("d/mixed.case")).size == 5      # names match ignoring case


async def test_a_change_made_on_disk_is_what_the_service_answers(
        azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    b, srv = azfiles_backend, azfiles_store.server
    await b.close(await b.create_file("f", b"hello"))
    before = await b.stat("f")
    path = srv.share_root("vol") / azfiles_store.path / "f"
    with open(path, "r+b") as fh:
        fh.write(b"J")
    after = await b.stat("f")
    assert after.mtime_ns != before.mtime_ns and after.ctime_ns >= before.ctime_ns
    h = await b.open("f")
    assert await b.read(h, 0, 10) == b"Jello"
    await b.close(h)
    os.mkfifo(path.with_name("planted"))                 # not a file the service can show
    os.symlink("/etc/passwd", path.with_name("link"))
    assert sorted(await b.listdir("")) == ["f"]
    with pytest.raises(FileNotFoundError):
        await b.stat("link")


def test_a_snapshot_is_a_read_only_copy_outside_the_share(azfiles, azfiles_store) -> None:
    from azure.core.exceptions import HttpResponseError
    from azure.storage.fileshare import ShareClient
    srv = azfiles
    client = ShareClient(srv.account_url, "vol", credential={"account_name": srv.account,
                                                             "account_key": srv.account_key})
    client.get_file_client(f"{azfiles_store.path}/f").upload_file(b"old")
    snap = client.create_snapshot()["snapshot"]
    client.get_file_client(f"{azfiles_store.path}/f").upload_file(b"new!")
    old = ShareClient(srv.account_url, "vol", snapshot=snap, credential={
        "account_name": srv.account, "account_key": srv.account_key})
    assert old.get_file_client(f"{azfiles_store.path}/f").download_file().readall() == b"old"
    live = srv.share_root("vol")
    assert not any(name.startswith("vol@") for name in os.listdir(live))
    with pytest.raises(HttpResponseError, match="OperationNotSupportedOnShareSnapshot"):
        old.get_file_client(f"{azfiles_store.path}/f").upload_file(b"x")
    old.delete_share()                                  # the snapshot only
    assert not (srv.workdir / "snapshots" / f"vol@{snap.replace(':', '')}").exists()
    assert (live / azfiles_store.path / "f").read_bytes() == b"new!"
