"""Namespace changes next to open files and under concurrent load, on a real mount.

SMB servers refuse to rename a directory while a file below it is open, and a name in
delete-pending state answers opens with an error of its own. A local filesystem has
neither rule, so these run on both backends: the local one is the reference.
"""

from __future__ import annotations

import mmap
import os
import random

CHUNK = 64 * 1024


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Two files each: the backend spreads open handles over its connections, and Samba
# refuses the rename only if the connection that renames has one of them open.
NAMES = ("f", "g")


def test_rename_dir_while_files_below_are_open_for_reading(mounted):
    root = mounted.mountpoint
    (root / "d" / "sub").mkdir(parents=True)
    data = {n: _data(40 * CHUNK + 5, seed) for seed, n in enumerate(NAMES)}
    fds = {}
    try:
        for n in NAMES:
            (root / "d" / "sub" / n).write_bytes(data[n])
            fds[n] = os.open(root / "d" / "sub" / n, os.O_RDONLY)
            assert os.pread(fds[n], 100, 0) == data[n][:100]
        os.rename(root / "d", root / "e")
        assert not (root / "d").exists()
        for n, fd in fds.items():
            # Through the fd opened before the rename; most of the file was never read
            # before, so these reads reach the store.
            assert os.pread(fd, len(data[n]), 0) == data[n]
            assert os.pread(fd, 10, 39 * CHUNK) == data[n][39 * CHUNK:39 * CHUNK + 10]
            assert (root / "e" / "sub" / n).read_bytes() == data[n]
    finally:
        for fd in fds.values():
            os.close(fd)
    for n in NAMES:
        assert (root / "e" / "sub" / n).read_bytes() == data[n]


def test_rename_dir_while_files_below_are_open_for_writing_with_dirty_data(mounted):
    root = mounted.mountpoint
    (root / "d").mkdir()
    first = {n: _data(3 * CHUNK + 7, 2 + i) for i, n in enumerate(NAMES)}
    second = {n: _data(2 * CHUNK, 4 + i) for i, n in enumerate(NAMES)}
    fds = {}
    try:
        for n in NAMES:
            fds[n] = os.open(root / "d" / n, os.O_CREAT | os.O_RDWR, 0o600)
            os.write(fds[n], first[n])             # not flushed: dirty in sealfs
        os.rename(root / "d", root / "e")
        for n, fd in fds.items():
            os.write(fd, second[n])                # lands at the new path
            os.fsync(fd)
            assert os.pread(fd, 6 * CHUNK, 0) == first[n] + second[n]
            assert (root / "e" / n).read_bytes() == first[n] + second[n]
    finally:
        for fd in fds.values():
            os.close(fd)
    assert sorted(os.listdir(root)) == ["e"]
    mounted.remount()
    for n in NAMES:
        assert (root / "e" / n).read_bytes() == first[n] + second[n]


def test_rename_dir_while_files_below_are_mmapped(mounted):
    root = mounted.mountpoint
    (root / "d").mkdir()
    size = 4 * CHUNK
    fds, maps = {}, {}
    try:
        for n in NAMES:
            (root / "d" / n).write_bytes(bytes(size))
            fds[n] = os.open(root / "d" / n, os.O_RDWR)
            maps[n] = mmap.mmap(fds[n], size)
            maps[n][10:20] = n.encode() * 10       # a dirty page before the rename
        os.rename(root / "d", root / "e")
        for n, m in maps.items():
            m[CHUNK + 1:CHUNK + 6] = b"BBBBB"      # and one after it
            m.flush()
            assert m[CHUNK + 1:CHUNK + 6] == b"BBBBB"
    finally:
        for m in maps.values():
            m.close()
        for fd in fds.values():
            os.close(fd)
    mounted.remount()
    for n in NAMES:
        expect = bytearray(size)
        expect[10:20] = n.encode() * 10
        expect[CHUNK + 1:CHUNK + 6] = b"BBBBB"
        assert (root / "e" / n).read_bytes() == bytes(expect)


def test_rename_dir_with_open_unlinked_files_below(mounted):
    """Open files unlinked below the directory (hidden on SMB until their last close)
    go away with their last close at the directory's new name."""
    root = mounted.mountpoint
    (root / "d").mkdir()
    fds = {}
    try:
        for n in NAMES:
            (root / "d" / n).write_bytes(b"gone soon")
            fds[n] = os.open(root / "d" / n, os.O_RDWR)
            os.unlink(root / "d" / n)
        os.rename(root / "d", root / "e")
        for fd in fds.values():
            os.write(fd, b"still ")
            assert os.pread(fd, 100, 0) == b"still oon"
    finally:
        for fd in fds.values():
            os.close(fd)
    assert os.listdir(root / "e") == []
    os.rmdir(root / "e")                           # nothing hidden is left in it


def test_rename_open_file_keeps_the_fd_working(mounted):
    root = mounted.mountpoint
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"0123456789")
    fd = os.open(root / "d" / "f", os.O_RDWR)
    try:
        os.rename(root / "d" / "f", root / "g")
        os.pwrite(fd, b"xy", 3)
        os.fsync(fd)
        assert os.pread(fd, 20, 0) == b"012xy56789"
        assert (root / "g").read_bytes() == b"012xy56789"
        os.rename(root / "g", root / "d" / "h")
        os.rename(root / "d", root / "e")
        os.pwrite(fd, b"!", 10)
    finally:
        os.close(fd)
    assert (root / "e" / "h").read_bytes() == b"012xy56789!"
    assert os.listdir(root / "e") == ["h"]
