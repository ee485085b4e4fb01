"""Namespace changes next to open files and under concurrent load, on a real mount.

SMB servers refuse to rename a directory while a file below it is open, and a name in
delete-pending state answers opens with an error of its own. A local filesystem has
neither rule, so these run on both backends: the local one is the reference.
"""

from __future__ import annotations

import errno
import mmap
import multiprocessing
import os
import random

import pytest

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
        for m in maps.values():
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


# -- concurrent load ---------------------------------------------------------------------------
ITERATIONS = 400          # namespace operations per process
PROCESSES = 4
DIRS = [f"d{i}" for i in range(3)]
FILES = [f"f{i}" for i in range(3)]
OPS = ["mkdir", "mkdir", "create", "create", "read", "rename_dir", "rename_file", "rename_file",
       "rmdir", "unlink", "unlink"]
# What the races between the processes legitimately produce (a name just taken or just
# gone, a directory that just got an entry); anything else is a bug.
EXPECTED_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY}


def _churn(root: str, seed: int, out) -> None:
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    unexpected: list[str] = []
    for _ in range(ITERATIONS):
        d, d2 = rng.choice(DIRS), rng.choice(DIRS)
        f, f2 = rng.choice(FILES), rng.choice(FILES)
        op = rng.choice(OPS)
        try:
            if op == "mkdir":
                os.mkdir(os.path.join(root, d))
            elif op == "create":
                # O_EXCL: each file is written once. (Concurrent rewrites of one existing
                # file over SMB can fail authentication today: not this test's subject.)
                fd = os.open(os.path.join(root, d, f), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                try:
                    os.write(fd, b"x" * rng.randrange(1, 5000))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            elif op == "read":
                with open(os.path.join(root, d, f), "rb") as fh:
                    data = fh.read()
                if data.strip(b"x"):
                    unexpected.append(f"read {d}/{f}: content is not what was written")
            elif op == "rename_dir":
                os.rename(os.path.join(root, d), os.path.join(root, d2))
            elif op == "rename_file":
                os.rename(os.path.join(root, d, f), os.path.join(root, d2, f2))
            elif op == "rmdir":
                os.rmdir(os.path.join(root, d))
            else:
                os.unlink(os.path.join(root, d, f))
            seen["ok"] = seen.get("ok", 0) + 1
        except OSError as exc:
            name = errno.errorcode.get(exc.errno, str(exc.errno))
            seen[name] = seen.get(name, 0) + 1
            if exc.errno not in EXPECTED_ERRNOS:
                unexpected.append(f"{op} {exc}")
    out.put((seed, seen, unexpected))


@pytest.mark.heavy
@pytest.mark.serial       # its processes race each other; another worker's load stretches them
def test_concurrent_namespace_churn_sees_only_race_errnos(mounted):
    """PROCESSES processes, ITERATIONS random mkdir/create/read/rename/rmdir/unlink each,
    in one small tree, so that they collide all the time."""
    root = str(mounted.mountpoint)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(root, seed, out)) for seed in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    total: dict[str, int] = {}
    for _seed, seen, _ in results:
        for k, v in seen.items():
            total[k] = total.get(k, 0) + v
    assert sum(total.values()) == PROCESSES * ITERATIONS
    assert total.get("ok", 0) > PROCESSES * ITERATIONS // 8, total   # they did real work
    unexpected = [u for _, _, errs in results for u in errs]
    assert not unexpected, (total, unexpected[:20])
    # What is left is a consistent tree: every directory can be listed and emptied.
    for d in os.listdir(root):
        for f in os.listdir(os.path.join(root, d)):
            os.unlink(os.path.join(root, d, f))
        os.rmdir(os.path.join(root, d))
    assert os.listdir(root) == []


