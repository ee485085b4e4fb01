from pathlib import Path


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
