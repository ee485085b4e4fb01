"""POSIX-ish semantics of the Volume library: directories, rename, links, special files,
chmod/chown/utimens persistence."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import trio

from sealfs.crypto.format.header import Kind


async def names_in(vol, path: str = "") -> list[str]:
    return sorted(name for name, _attr in await vol.listdir(path))


async def test_mkdir_then_rmdir_of_a_non_empty_directory_fails_with_enotempty(make_volume, open_volume):
    vol = await open_volume(await make_volume(4096))
    attr = await vol.mkdir("d", 0o750)
    assert attr.is_dir and attr.mode == 0o750
    assert stat.S_ISDIR((await vol.stat("d")).st_mode)
    with pytest.raises(FileExistsError):
        await vol.mkdir("d")
    await vol.mkdir("d/sub")
    await vol.write_file("d/sub/f", b"x")
    for path in ("d", "d/sub"):
        with pytest.raises(OSError) as info:
            await vol.rmdir(path)
        assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        await vol.rmdir("d/sub/f")
    with pytest.raises(IsADirectoryError):
        await vol.unlink("d/sub")
    with pytest.raises(FileNotFoundError):
        await vol.rmdir("nope")
    await vol.unlink("d/sub/f")
    await vol.rmdir("d/sub")
    await vol.rmdir("d")
    assert await names_in(vol) == []
    with pytest.raises(FileNotFoundError):
        await vol.stat("d")
    await vol.close()


async def test_paths_through_a_file_fail_with_enotdir_and_missing_parents_with_enoent(make_volume, open_volume):
    vol = await open_volume(await make_volume(4096))
    await vol.write_file("f", b"x")
    with pytest.raises(NotADirectoryError):
        await vol.write_file("f/child", b"y")
    with pytest.raises(FileNotFoundError):
        await vol.mkdir("missing/child")
    with pytest.raises(FileExistsError):
        await vol.create("f")
    await vol.close()


async def test_rename_over_an_existing_file_replaces_it(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.write_file("a", b"new contents")
    await vol.write_file("b", b"old contents that are longer")
    await vol.rename("a", "b")
    assert await names_in(vol) == ["b"]
    assert await vol.read_file("b") == b"new contents"
    await vol.close()
    vol = await open_volume(store)
    assert await names_in(vol) == ["b"]
    assert await vol.read_file("b") == b"new contents"
    await vol.close()


async def test_rename_a_directory_over_an_empty_directory_replaces_it(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.mkdir("src")
    await vol.write_file("src/inside", b"payload")
    await vol.mkdir("dst")
    await vol.rename("src", "dst")
    assert await names_in(vol) == ["dst"]
    assert await vol.read_file("dst/inside") == b"payload"
    await vol.close()
    vol = await open_volume(store)
    assert await names_in(vol, "dst") == ["inside"]
    assert await vol.read_file("dst/inside") == b"payload"
    # no leftovers (victim directory or temp entries) on the backend root
    assert len([e for e in os.listdir(store) if not e.startswith("sealfs.")]) == 1
    # over a non-empty directory: ENOTEMPTY; file over dir: EISDIR; dir over file: ENOTDIR
    await vol.mkdir("full")
    await vol.write_file("full/x", b"")
    await vol.mkdir("other")
    with pytest.raises(OSError) as info:
        await vol.rename("other", "full")
    assert info.value.errno == errno.ENOTEMPTY
    await vol.write_file("file", b"")
    with pytest.raises(IsADirectoryError):
        await vol.rename("file", "other")
    with pytest.raises(NotADirectoryError):
        await vol.rename("other", "file")
    await vol.close()


async def test_rename_noreplace_onto_an_existing_name_fails_with_eexist(make_volume, open_volume):
    vol = await open_volume(await make_volume(4096))
    await vol.write_file("a", b"a")
    await vol.write_file("b", b"b")
    with pytest.raises(FileExistsError) as info:
        await vol.rename("a", "b", noreplace=True)
    assert info.value.errno == errno.EEXIST
    assert await vol.read_file("a") == b"a" and await vol.read_file("b") == b"b"
    await vol.rename("a", "c", noreplace=True)
    assert await names_in(vol) == ["b", "c"]
    await vol.close()


async def test_rename_a_directory_into_itself_fails_with_einval(make_volume, open_volume):
    vol = await open_volume(await make_volume(4096))
    await vol.mkdir("d")
    await vol.mkdir("d/e")
    for dst in ("d/x", "d/e/x"):
        with pytest.raises(OSError) as info:
            await vol.rename("d", dst)
        assert info.value.errno == errno.EINVAL
    assert await names_in(vol) == ["d"] and await names_in(vol, "d") == ["e"]
    await vol.close()


async def test_rename_moves_between_directories_and_keeps_open_handles_working(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.mkdir("a")
    await vol.mkdir("b")
    f = await vol.create("a/f")
    await f.write(0, b"before ")
    await vol.rename("a", "b/a2")
    await f.write(7, b"after")
    await f.close()
    assert await vol.read_file("b/a2/f") == b"before after"
    await vol.close()
    vol = await open_volume(store)
    assert await vol.read_file("b/a2/f") == b"before after"
    assert await names_in(vol) == ["b"]
    await vol.close()


async def test_hard_links_share_content_and_nlink(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.mkdir("d")
    await vol.write_file("orig", b"one")
    attr = await vol.link("orig", "d/alias")
    assert attr.nlink == 2
    assert (await vol.stat("orig")).nlink == 2
    assert (await vol.stat("orig")).identity == (await vol.stat("d/alias")).identity
    with pytest.raises(FileExistsError):
        await vol.link("orig", "d/alias")
    with pytest.raises(OSError) as info:
        await vol.link("d", "dirlink")
    assert info.value.errno == errno.EPERM
    # a write through one name is seen through the other, also through open handles
    f = await vol.open("d/alias", write=True)
    g = await vol.open("orig")
    await f.write(0, b"TWO-and-more" * 1000)
    assert await g.read(0, 12) == b"TWO-and-more"
    await f.close()
    await g.close()
    await vol.close()
    vol = await open_volume(store)
    assert await vol.read_file("orig") == b"TWO-and-more" * 1000
    await vol.unlink("orig")
    assert (await vol.stat("d/alias")).nlink == 1
    assert await vol.read_file("d/alias") == b"TWO-and-more" * 1000
    await vol.close()


async def test_symlink_and_readlink(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.write_file("target", b"t")
    attr = await vol.symlink("ln", "../some/where/\u00e9l\u00e8ve")
    assert attr.kind == Kind.SYMLINK and stat.S_ISLNK(attr.st_mode)
    await vol.close()
    vol = await open_volume(store)
    assert await vol.readlink("ln") == "../some/where/\u00e9l\u00e8ve"
    assert stat.S_ISLNK((await vol.stat("ln")).st_mode)
    assert (await vol.stat("ln")).size == len("../some/where/\u00e9l\u00e8ve".encode())
    with pytest.raises(OSError) as info:
        await vol.readlink("target")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(FileExistsError):
        await vol.symlink("ln", "x")
    await vol.close()


async def test_mknod_fifo_and_devices_keep_their_kind_in_stat(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.mknod("fifo", Kind.FIFO, 0o640)
    await vol.mknod("chr", Kind.CHAR, 0o600, rdev=os.makedev(1, 3))
    await vol.mknod("sock", Kind.SOCKET, 0o755)
    await vol.close()
    vol = await open_volume(store)
    fifo = await vol.stat("fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and fifo.mode == 0o640 and fifo.kind == Kind.FIFO
    chr_ = await vol.stat("chr")
    assert stat.S_ISCHR(chr_.st_mode) and chr_.rdev == os.makedev(1, 3)
    assert stat.S_ISSOCK((await vol.stat("sock")).st_mode)
    kinds = {name: attr.kind for name, attr in await vol.listdir("")}
    assert kinds == {"fifo": Kind.FIFO, "chr": Kind.CHAR, "sock": Kind.SOCKET}
    await vol.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
async def test_chmod_and_chown_persist_across_reopen_and_keep_the_mtime(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.write_file("f", b"data" * 3000)
    await vol.mkdir("d")
    await vol.setattr("f", mtime_ns=1_500_000_000_123_456_789, atime_ns=1_500_000_000_000_000_000)
    before = await vol.stat("f")
    await trio.sleep(0.01)
    await vol.setattr("f", mode=0o4711)
    await vol.setattr("f", uid=1234, gid=5678)
    await vol.setattr("d", mode=0o700, uid=42, gid=43)
    after = await vol.stat("f")
    assert after.mtime_ns == before.mtime_ns == 1_500_000_000_123_456_789
    assert (after.mode, after.uid, after.gid) == (0o4711, 1234, 5678)
    await vol.close()
    vol = await open_volume(store)
    f = await vol.stat("f")
    assert (f.mode, f.uid, f.gid) == (0o4711, 1234, 5678)
    assert f.mtime_ns == 1_500_000_000_123_456_789
    assert f.size == 12000 and await vol.read_file("f") == b"data" * 3000
    d = await vol.stat("d")
    assert (d.mode, d.uid, d.gid) == (0o700, 42, 43)
    await vol.close()


async def test_chmod_through_an_open_handle_with_dirty_data_keeps_both(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    f = await vol.create("f", 0o600)
    await f.write(0, b"x" * 10000)
    await vol.setattr("f", mode=0o640, handle=f)
    await f.write(10000, b"y")
    await f.close()
    await vol.close()
    vol = await open_volume(store)
    attr = await vol.stat("f")
    assert attr.mode == 0o640 and attr.size == 10001
    assert await vol.read_file("f") == b"x" * 10000 + b"y"
    await vol.close()


async def test_utimens_persists_across_reopen(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.write_file("f", b"x")
    await vol.mkdir("d")
    await vol.setattr("f", atime_ns=1_000_000_000_000_000_001, mtime_ns=1_100_000_000_000_000_002)
    await vol.setattr("d", atime_ns=1_000_000_000_000_000_000, mtime_ns=1_200_000_000_000_000_000)
    await vol.close()
    vol = await open_volume(store)
    f = await vol.stat("f")
    assert (f.atime_ns, f.mtime_ns) == (1_000_000_000_000_000_001, 1_100_000_000_000_000_002)
    assert (await vol.stat("d")).mtime_ns == 1_200_000_000_000_000_000
    await vol.close()


@pytest.mark.parametrize("via_handle", [True, False], ids=["handle", "path"])
async def test_utimens_survives_a_later_write_back_of_dirty_data_from_the_same_handle(
        via_handle, make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    f = await vol.create("f")
    await f.write(0, b"a" * 3 * 4096)          # dirty, not yet on the backend (cp -p, tar -x)
    when = (1_300_000_000_000_000_000, 1_400_000_000_000_000_000)
    await vol.setattr("f", atime_ns=when[0], mtime_ns=when[1], handle=f if via_handle else None)
    assert (await vol.stat("f")).mtime_ns == when[1]
    await f.flush()
    await f.close()                             # write-back happens here
    assert (await vol.stat("f")).mtime_ns == when[1]
    await vol.close()
    vol = await open_volume(store)
    attr = await vol.stat("f")
    assert attr.mtime_ns == when[1] and attr.size == 3 * 4096
    assert await vol.read_file("f") == b"a" * 3 * 4096
    await vol.close()


async def test_a_write_after_utimens_moves_mtime_forward_again(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    f = await vol.create("f")
    await vol.setattr("f", mtime_ns=1_000_000_000_000_000_000, handle=f)
    await f.write(0, b"later")
    await f.close()
    await vol.close()
    vol = await open_volume(store)
    assert (await vol.stat("f")).mtime_ns > 1_600_000_000_000_000_000
    await vol.close()


async def test_unlink_while_open_keeps_the_open_handle_readable(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.write_file("f", b"still here" * 1000)
    f = await vol.open("f")
    await vol.unlink("f")
    assert await names_in(vol) == []
    assert await f.read(0, 10) == b"still here"
    await f.close()
    await vol.close()


async def test_walk_lists_the_whole_tree(make_volume, open_volume):
    vol = await open_volume(await make_volume(4096))
    await vol.mkdir("a")
    await vol.mkdir("a/b")
    await vol.write_file("a/b/c", b"")
    await vol.write_file("top", b"")
    paths = sorted(p for p, _ in await vol.walk())
    assert paths == ["a", "a/b", "a/b/c", "top"]
    assert sorted(p for p, _ in await vol.walk("a")) == ["a/b", "a/b/c"]
    await vol.close()


@pytest.mark.parametrize("width", [1, 200], ids=["short", "long-name"])
async def test_rename_onto_another_hard_link_of_the_same_file_changes_nothing(width, make_volume, open_volume):
    """POSIX rename(2): if old and new are links to the same file, rename does nothing."""
    store = await make_volume(4096)
    vol = await open_volume(store)
    a, b = "a" * width, "b" * width
    await vol.write_file(a, b"same")
    await vol.link(a, b)
    await vol.rename(a, b)
    await vol.close()
    vol = await open_volume(store)
    assert await names_in(vol) == sorted([a, b])
    assert await vol.read_file(a) == b"same" and await vol.read_file(b) == b"same"
    assert (await vol.stat(a)).nlink == 2
    await vol.close()


async def test_a_setgid_directory_passes_its_group_on_from_its_record(make_volume, open_volume):
    """ext4's rule, in the library: a new entry in a setgid directory takes the directory's
    group instead of its creator's, and a new subdirectory takes the setgid bit too. It is
    decided from the directory's sealed record: a volume opened afresh (nothing resolved,
    nothing cached) applies it as well."""
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.mkdir("shared", 0o2775, uid=1000, gid=4321)
    await vol.mkdir("plain", 0o775, uid=1000, gid=4321)
    await vol.close()

    vol = await open_volume(store)
    sub = await vol.mkdir("shared/sub", 0o755, uid=2000, gid=2000)
    assert (sub.uid, sub.gid, sub.mode) == (2000, 4321, 0o2755)
    await vol.close()

    vol = await open_volume(store)
    f = await vol.create("shared/f", 0o644, uid=2000, gid=2000)
    await f.close()
    await vol.symlink("shared/sub/link", "../f", uid=2000, gid=2000)
    await vol.mknod("shared/fifo", Kind.FIFO, 0o600, uid=2000, gid=2000)
    mine = await vol.mkdir("plain/mine", 0o755, uid=2000, gid=2000)
    await vol.close()

    vol = await open_volume(store)
    for path in ("shared/f", "shared/sub/link", "shared/fifo"):
        attr = await vol.stat(path)
        assert (attr.uid, attr.gid) == (2000, 4321), path
        assert not attr.mode & stat.S_ISGID, path
    assert (mine.gid, mine.mode) == (2000, 0o755)          # no setgid bit: the caller's group
    await vol.close()


async def test_mkdir_without_inheriting_keeps_the_given_group_and_mode(make_volume, open_volume):
    """What a copy restoring its source's ownership asks for (sync), as rsync -a does."""
    vol = await open_volume(await make_volume(4096))
    await vol.mkdir("shared", 0o2775, uid=1000, gid=4321)
    copied = await vol.mkdir("shared/copy", 0o700, uid=2000, gid=2000, inherit=False)
    assert (copied.gid, copied.mode) == (2000, 0o700)
    await vol.close()
