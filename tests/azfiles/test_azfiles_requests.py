"""How many REST requests each backend operation sends (each is a round trip to Azure),
and that what saves them never gives a wrong answer when another client changed the share."""

from __future__ import annotations

import time

import pytest

from sealfs.backends.azfiles import AzureFilesBackend

pytestmark = pytest.mark.azfiles


def _calls(srv) -> dict[str, int]:
    return {op: n for op, n in srv.calls.items() if not op.startswith("fault")}


async def test_exclusive_create_is_create_put_rename(azfiles_backend: AzureFilesBackend,
                                                     azfiles_store) -> None:
    """No existence check before (the rename without replacing is the check) and no
    properties read after (the rename's answer carries the times and the id)."""
    b, srv = azfiles_backend, azfiles_store.server
    srv.calls.clear()
    h = await b.create_file("f", b"data")
    assert _calls(srv) == {"create_file": 1, "put_range": 1, "rename_file": 1}
    st = await b.fstat(h)
    assert (st.size, st.is_dir) == (4, False) and st.ino
    srv.calls.clear()
    h2 = await b.open("e", write=True, create=True, exclusive=True)        # empty: no Put Range
    assert _calls(srv) == {"create_file": 1, "rename_file": 1}
    for handle in (h, h2):
        await b.close(handle)


async def test_a_new_file_placed_under_its_name_in_one_request(azfiles_backend: AzureFilesBackend,
                                                             azfiles_store) -> None:
    b, srv = azfiles_backend, azfiles_store.server
    h = await b.create_file("tmp", b"12345")
    before = await b.fstat(h)
    srv.calls.clear()
    st = await b.place_new(h, "tmp", "final")
    assert _calls(srv) == {"rename_file": 1}
    assert (st.size, st.ino, st.mtime_ns) == (5, before.ino, before.mtime_ns)
    assert st == await b.stat("final")
    await b.close(h)


async def test_stat_asks_the_kind_it_saw_last(azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    b, srv = azfiles_backend, azfiles_store.server
    await b.mkdir("d")
    await b.close(await b.create_file("d/f", b"x"))
    for path, op in (("d", "get_dir"), ("d/f", "head_file")):
        srv.calls.clear()
        await b.stat(path)
        assert _calls(srv) == {op: 1}, path
    # Entries listed are known too: a cold backend learns them from the listing.
    other = azfiles_store.backend()
    try:
        await other.scandir("")
        srv.calls.clear()
        assert (await other.stat("d")).is_dir
        assert _calls(srv) == {"get_dir": 1}
    finally:
        await other.aclose()


async def test_a_missing_parent_ends_the_probe(azfiles_backend: AzureFilesBackend,
                                                             azfiles_store) -> None:
    """ParentNotFound says no entry of any kind is there: no directory probe after it."""
    b, srv = azfiles_backend, azfiles_store.server
    srv.calls.clear()
    with pytest.raises(FileNotFoundError):
        await b.stat("nodir/x")
    # One probe of the path, then the walk up that tells ENOENT from ENOTDIR.
    assert _calls(srv) == {"head_file": 2, "get_dir": 1}


async def test_rename_asks_nothing_before(azfiles_backend: AzureFilesBackend, azfiles_store) -> None:
    b, srv = azfiles_backend, azfiles_store.server
    await b.close(await b.create_file("a", b"a"))
    await b.close(await b.create_file("b", b"b"))
    await b.mkdir("d")
    for src, dst, op in (("a", "a2", "rename_file"), ("a2", "b", "rename_file"), ("d", "d2", "rename_dir")):
        srv.calls.clear()
        await b.rename(src, dst)
        assert _calls(srv) == {op: 1}, (src, dst)
    assert sorted(await b.listdir("")) == ["b", "d2"]
    assert azfiles_store.server.file_bytes("vol", f"{azfiles_store.path}/b") == b"a"


async def test_kinds_seen_before_another_client_changed_them(azfiles_backend: AzureFilesBackend,
                                                              azfiles_store) -> None:
    """The kind remembered is only the order of asking: after another client replaced a
    directory by a file, and a file by a directory, every answer is still right."""
    b = azfiles_backend
    await b.mkdir("was_dir")
    await b.close(await b.create_file("was_file", b"x"))
    assert (await b.stat("was_dir")).is_dir and not (await b.stat("was_file")).is_dir
    other = azfiles_store.backend()
    try:
        await other.rmdir("was_dir")
        await other.close(await other.create_file("was_dir", b"now a file"))
        await other.unlink("was_file")
        await other.mkdir("was_file")
    finally:
        await other.aclose()
    st = await b.stat("was_dir")
    assert (st.is_dir, st.size) == (False, 10)
    assert (await b.stat("was_file")).is_dir
    await b.set_times("was_dir", 1_000_000_000, 2_000_000_000)
    assert (await b.stat("was_dir")).mtime_ns == 2_000_000_000
    await b.rename("was_dir", "renamed_file")
    await b.rename("was_file", "renamed_dir")
    assert sorted(await b.listdir("")) == ["renamed_dir", "renamed_file"]
    assert (await b.stat("renamed_dir")).is_dir and not (await b.stat("renamed_file")).is_dir
    with pytest.raises(FileNotFoundError):
        await b.stat("was_dir")


async def test_times_through_a_handle_may_leave_the_access_time(azfiles_backend: AzureFilesBackend) -> None:
    """fset_times(handle, None, mtime): the access time stays, in the same one request."""
    b = azfiles_backend
    h = await b.create_file("f", b"x")
    await b.set_times("f", 5_000_000_000, 6_000_000_000)
    await b.fset_times(h, None, 7_000_000_000)
    st = await b.fstat(h)
    assert (st.atime_ns, st.mtime_ns) == (5_000_000_000, 7_000_000_000)
    await b.close(h)


@pytest.mark.serial       # twenty round trips in under 0.8 s of wall clock
async def test_answers_with_a_body_do_not_wait_for_a_delayed_ack(azfiles_backend: AzureFilesBackend) -> None:
    """The test server sends headers and body in two writes: with Nagle's algorithm on,
    each such answer waited for the client's delayed ACK (40 ms on Linux)."""
    b = azfiles_backend
    h = await b.create_file("f", b"some bytes")
    await b.read(h, 0, 4)
    start = time.monotonic()
    for _ in range(20):
        assert await b.read(h, 0, 4) == b"some"
    assert time.monotonic() - start < 20 * 0.040, "an answer with a body waited for a delayed ACK"
    await b.close(h)


async def test_an_open_file_is_not_replaced_by_a_rename(azfiles_backend: AzureFilesBackend) -> None:
    """A handle is its path here: a file renamed over it would be read through it. As on
    SMB the rename is refused (the volume then moves the open file aside first)."""
    b = azfiles_backend
    await b.close(await b.create_file("new", b"new"))
    victim = await b.create_file("open", b"old")
    with pytest.raises(PermissionError):
        await b.rename("new", "open")
    assert await b.read(victim, 0, 10) == b"old"
    await b.close(victim)
    await b.rename("new", "open")
    assert sorted(await b.listdir("")) == ["open"]


async def test_a_temporary_of_an_exclusive_create_has_a_reserved_name(azfiles_backend: AzureFilesBackend,
                                                                      azfiles_store) -> None:
    """What a create interrupted before its rename leaves is sealfs.tmp.*, which readers
    skip and rmdir clears (FORMAT.md), not a name that lists as damage."""
    b, srv = azfiles_backend, azfiles_store.server
    srv.fail_next("rename_file", 500)
    srv.fail_next("delete_file", 500)          # and its removal fails too
    with pytest.raises(OSError):
        await b.create_file("f", b"x")
    left = [p.name for p in (srv.share_root("vol") / azfiles_store.path).iterdir()]
    assert left and all(name.startswith("sealfs.tmp.") for name in left), left
