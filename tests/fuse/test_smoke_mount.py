import os

import pytest


@pytest.mark.store_dir
def test_files_written_through_the_mount_read_back_and_are_sealed(mounted):
    mnt = mounted.mountpoint
    (mnt / "hello.txt").write_bytes(b"MARKER-fuse-smoke")
    assert (mnt / "hello.txt").read_bytes() == b"MARKER-fuse-smoke"
    mounted.remount()
    assert (mnt / "hello.txt").read_bytes() == b"MARKER-fuse-smoke"
    for path in mounted.store_dir.rglob("*"):
        if path.is_file():
            assert b"MARKER" not in path.read_bytes()


def test_reopening_a_file_changed_by_another_client_reads_its_new_content(mounted, tmp_path):
    """The kernel keeps a file's cached pages across opens only while nobody else
    changed it (close-to-open, as NFS): same size, new bytes, written past the mount."""
    from tests.mounting import sealfs
    shared = mounted.mountpoint / "shared.bin"
    shared.write_bytes(b"A" * 100_000)
    assert shared.read_bytes() == b"A" * 100_000
    assert shared.read_bytes() == b"A" * 100_000          # now from the page cache
    src = tmp_path / "other-client.bin"
    src.write_bytes(b"B" * 100_000)
    sealfs("put", str(mounted.store), str(src), "/shared.bin", "--keyfile", str(mounted.keyfile),
           env=mounted.env)
    assert shared.read_bytes() == b"B" * 100_000


def test_reopening_a_file_rewritten_with_its_old_size_and_mtime_reads_its_new_content(
        mounted, tmp_path, backend_kind):
    """cp -p of a same-size file: only the backend ctime tells (local backend; SMB
    stamps its own times at close, so there the mtime and size decide)."""
    if backend_kind != "local":
        pytest.skip("the backend ctime is only used where the mount never restamps times")
    from tests.mounting import sealfs
    shared = mounted.mountpoint / "same.bin"
    shared.write_bytes(b"A" * 100_000)
    assert shared.read_bytes() == b"A" * 100_000
    seen = shared.stat()
    src = tmp_path / "other-client.bin"
    src.write_bytes(b"B" * 100_000)
    os.utime(src, ns=(seen.st_atime_ns, seen.st_mtime_ns))
    sealfs("put", str(mounted.store), str(src), "/same.bin", "--keyfile", str(mounted.keyfile),
           env=mounted.env)
    assert shared.read_bytes() == b"B" * 100_000


def test_a_missing_name_is_found_as_soon_as_another_client_creates_it(mounted, tmp_path):
    """Negative lookups are not cached: the kernel asks again for a name it was told is
    missing, so a file another client just stored shows up at once."""
    from tests.mounting import sealfs
    late = mounted.mountpoint / "late.txt"
    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            late.stat()
    src = tmp_path / "other-client.txt"
    src.write_bytes(b"made elsewhere")
    sealfs("put", str(mounted.store), str(src), "/late.txt", "--keyfile", str(mounted.keyfile),
           env=mounted.env)
    assert late.stat().st_size == len(b"made elsewhere")
    assert late.read_bytes() == b"made elsewhere"


@pytest.mark.hard_links
def test_names_the_kernel_knows_follow_renames_and_unlinks(mounted):
    """The mount's table of inodes by path: a renamed directory takes its known
    descendants along, an unlinked name is forgotten, a hard link keeps the file."""
    mnt = mounted.mountpoint
    (mnt / "d" / "sub").mkdir(parents=True)
    for name in ("d/f", "d/sub/g", "other"):
        (mnt / name).write_bytes(name.encode())
    os.link(mnt / "d" / "f", mnt / "f-link")
    for name in ("d/f", "d/sub/g", "other", "f-link"):
        (mnt / name).stat()
    os.rename(mnt / "d", mnt / "e")
    assert (mnt / "e" / "f").read_bytes() == b"d/f"
    assert (mnt / "e" / "sub" / "g").read_bytes() == b"d/sub/g"
    assert not (mnt / "d").exists()
    os.unlink(mnt / "e" / "f")
    assert not (mnt / "e" / "f").exists()
    assert (mnt / "f-link").read_bytes() == b"d/f"
    assert (mnt / "f-link").stat().st_nlink == 1
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(b"new")
    os.rename(mnt / "other", mnt / "d" / "f")
    assert (mnt / "d" / "f").read_bytes() == b"other"
    assert not (mnt / "other").exists()
    assert sorted(p.name for p in mnt.iterdir()) == ["d", "e", "f-link"]
