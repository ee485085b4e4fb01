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
