"""Format 2: any visible path up to PATH_MAX works through the mount, whatever the backend's
path limit, and ENAMETOOLONG comes exactly where ext4 gives it.

Each test runs the same operations twice: on an ext4 directory (the reference, which also
checks the test's own arithmetic) and on the mount, from inside it (the process changes
into the directory first, so the paths given to the kernel are relative and PATH_MAX - 1
bytes long).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

import pytest

PATH_MAX = 4096          # Linux, counting the terminating NUL: the longest path is 4095 bytes


@contextlib.contextmanager
def inside(directory: Path):
    old = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)


def deep_dirs(width: int) -> list[str]:
    """Directory names of width bytes such that dirs + one more name of width bytes is a
    path of exactly PATH_MAX - 1 bytes (32 components of 127 bytes, 16 of 255)."""
    count = PATH_MAX // (width + 1)
    assert count * (width + 1) - 1 == PATH_MAX - 1
    return [f"{i:02d}".ljust(width, "d") for i in range(count - 1)]


def exercise(root: Path, width: int, hard_links: bool = True) -> None:
    """Every namespace and attribute operation at a path of PATH_MAX - 1 bytes below root
    (link where the backend has hard links), and ENAMETOOLONG one byte further or for a
    component of 256 bytes."""
    dirs = deep_dirs(width)
    with inside(root):
        for depth in range(1, len(dirs) + 1):
            os.mkdir("/".join(dirs[:depth]))
        base = "/".join(dirs) + "/"

        def at(char: str) -> str:
            path = base + char * width
            assert len(os.fsencode(path)) == PATH_MAX - 1
            return path

        f = at("f")
        fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, b"hello, deep world")
        os.close(fd)
        assert os.stat(f).st_size == 17
        os.chmod(f, 0o600)
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
        os.chown(f, 1234, 5678)
        st = os.stat(f)
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        os.truncate(f, 5)
        fd = os.open(f, os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"hello"
        finally:
            os.close(fd)
        if hard_links:
            link = at("l")
            os.link(f, link)
            assert os.stat(f).st_nlink == 2
            moved = at("r")
            os.rename(link, moved)
            assert os.stat(moved).st_ino == os.stat(f).st_ino
            os.unlink(moved)
            assert os.stat(f).st_nlink == 1
        moved = at("m")
        os.rename(f, moved)
        assert not os.path.lexists(f) and os.stat(moved).st_size == 5
        os.unlink(moved)
        assert not os.path.lexists(moved)

        sub = at("s")
        os.mkdir(sub)
        assert stat.S_ISDIR(os.stat(sub).st_mode)
        os.rmdir(sub)
        fifo = at("p")
        os.mkfifo(fifo, 0o640)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        os.unlink(fifo)
        node = at("n")
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        st = os.stat(node)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        os.unlink(node)
        sym = at("y")
        os.symlink("a target", sym)
        assert os.readlink(sym) == "a target"
        os.unlink(sym)
        assert sorted(os.listdir(base)) == []
        assert len(os.listdir(dirs[0])) == 1

        # One byte further: the kernel refuses the path before any filesystem sees it.
        too_long = base + "z" * (width + 1)
        assert len(os.fsencode(too_long)) == PATH_MAX
        for op in (lambda: os.open(too_long, os.O_CREAT | os.O_WRONLY, 0o644),
                   lambda: os.stat(too_long), lambda: os.mkdir(too_long)):
            with pytest.raises(OSError) as caught:
                op()
            assert caught.value.errno == errno.ENAMETOOLONG
        # A component of 256 bytes, at the top and deep down: refused by the filesystem.
        for path in ("c" * 256, dirs[0] + "/" + "c" * 256):
            for op in (lambda p=path: os.open(p, os.O_CREAT | os.O_WRONLY, 0o644),
                       lambda p=path: os.mkdir(p), lambda p=path: os.stat(p)):
                with pytest.raises(OSError) as caught:
                    op()
                assert caught.value.errno == errno.ENAMETOOLONG
        # 255 bytes is a name like any other
        fd = os.open("c" * 255, os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        os.unlink("c" * 255)

        for depth in range(len(dirs), 0, -1):
            os.rmdir("/".join(dirs[:depth]))
        assert os.listdir(".") == []


@pytest.mark.parametrize("width", [127, 255])
def test_every_operation_at_path_max_on_ext4_as_on_the_mount(mounted, tmp_path, width,
                                                              backend_kind):
    reference = tmp_path / "ext4"
    reference.mkdir()
    exercise(reference, width)                    # the test's own arithmetic, on ext4
    # Azure Files over REST has no hard links (Capabilities.hard_links)
    exercise(mounted.mountpoint, width, hard_links=backend_kind != "azfiles")


def test_a_deep_tree_survives_a_remount_and_its_renamed_top(mounted):
    """127-byte directories down to PATH_MAX, read back after a remount, then the top
    renamed: one rename, and everything below it is where it was."""
    dirs = deep_dirs(127)
    with inside(mounted.mountpoint):
        for depth in range(1, len(dirs) + 1):
            os.mkdir("/".join(dirs[:depth]))
        deepest = "/".join(dirs) + "/" + "f" * 127
        Path(deepest).write_bytes(b"at the bottom")
    mounted.remount()
    with inside(mounted.mountpoint):
        assert Path(deepest).read_bytes() == b"at the bottom"
        top = "t" * len(dirs[0])
        os.rename(dirs[0], top)
        renamed = "/".join([top, *dirs[1:]]) + "/" + "f" * 127
        assert Path(renamed).read_bytes() == b"at the bottom"
        assert not os.path.exists(dirs[0])
