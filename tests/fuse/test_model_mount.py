"""Model-based: random operations on a mount and on a plain directory side by side.

Every operation runs on both trees; its outcome (result or OSError errno) must match,
and after every step both trees must hold the same names, types, sizes, modes, link
counts and bytes. Remounts in the middle check that nothing lived only in memory.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.mounting import Mount, init_store

pytestmark = pytest.mark.fuse

NAMES = ["a", "b", "c", "d", "e", "d/a", "d/b", "d/e", "e/a", "d/e/a"]
MODES = [0o600, 0o644, 0o755, 0o400, 0o640]
MAX_HANDLES = 3


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, exc.errno))


def snapshot(root: Path) -> dict:
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st_ = os.lstat(full)
            entry = {"type": stat.S_IFMT(st_.st_mode), "mode": oct(stat.S_IMODE(st_.st_mode))}
            if stat.S_ISREG(st_.st_mode):
                entry["size"] = st_.st_size
                entry["nlink"] = st_.st_nlink
                entry["data"] = full.read_bytes()
            tree[rel] = entry
    return tree


def make_machine(mount: Mount, ref_root: Path, chunk: int):
    offsets = st.one_of(
        st.sampled_from([0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk - 3, 3 * chunk]),
        st.integers(0, 3 * chunk))
    payloads = st.one_of(st.binary(min_size=1, max_size=64),
                         st.integers(1, chunk + 10).map(lambda n: os.urandom(n)))
    sizes = st.one_of(st.sampled_from([0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk]),
                      st.integers(0, 3 * chunk))
    names = st.sampled_from(NAMES)

    class MountModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.mnt = mount.mountpoint / "t"
            self.ref = ref_root
            for root in (self.mnt, self.ref):
                if root.exists():
                    shutil.rmtree(root)
                root.mkdir()
            self.handles: list[tuple[int, int, str]] = []   # (mount fd, ref fd, name)
            self.remounts = 0

        def both(self, fn, *names_and_args, paths: int = 1):
            """Run fn on both trees; the first `paths` arguments are names to resolve."""
            names_, rest = names_and_args[:paths], names_and_args[paths:]
            got = outcome(fn, *[self.mnt / n for n in names_], *rest)
            want = outcome(fn, *[self.ref / n for n in names_], *rest)
            assert got == want, f"{fn.__name__}{names_and_args[:paths]}: mount {got} vs {want}"
            return got

        @rule(name=names, offset=offsets, data=payloads)
        def write_at(self, name, offset, data):
            def write(path, offset, data):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    return os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            self.both(write, name, offset, data)

        @rule(name=names, size=sizes)
        def truncate(self, name, size):
            self.both(os.truncate, name, size)

        @rule(src=names, dst=names)
        def rename(self, src, dst):
            self.both(os.rename, src, dst, paths=2)

        @rule(src=names, dst=names)
        def link(self, src, dst):
            self.both(os.link, src, dst, paths=2)

        @rule(name=names)
        def unlink(self, name):
            self.both(os.unlink, name)

        @rule(name=names)
        def mkdir(self, name):
            self.both(os.mkdir, name, 0o755)

        @rule(name=names)
        def rmdir(self, name):
            self.both(os.rmdir, name)

        @rule(name=names, mode=st.sampled_from(MODES))
        def chmod(self, name, mode):
            self.both(os.chmod, name, mode)

        @precondition(lambda self: len(self.handles) < MAX_HANDLES)
        @rule(name=names)
        def open_handle(self, name):
            got = outcome(os.open, self.mnt / name, os.O_RDWR)
            want = outcome(os.open, self.ref / name, os.O_RDWR)
            for side in (got, want):
                if side[0] == "ok" and (got[0] != want[0]):
                    os.close(side[1])
            assert got[0] == want[0] and (got[0] == "ok" or got == want), \
                f"open({name}): mount {got} vs {want}"
            if got[0] == "ok":
                self.handles.append((got[1], want[1], name))

        @precondition(lambda self: self.handles)
        @rule(i=st.integers(0, MAX_HANDLES - 1), offset=offsets, data=payloads)
        def handle_write(self, i, offset, data):
            mfd, rfd, name = self.handles[i % len(self.handles)]
            got, want = outcome(os.pwrite, mfd, data, offset), outcome(os.pwrite, rfd, data, offset)
            assert got == want, f"pwrite via handle on {name}: mount {got} vs {want}"

        @precondition(lambda self: self.handles)
        @rule(i=st.integers(0, MAX_HANDLES - 1), offset=offsets, n=st.integers(0, 2 * chunk))
        def handle_read(self, i, offset, n):
            mfd, rfd, name = self.handles[i % len(self.handles)]
            got, want = outcome(os.pread, mfd, n, offset), outcome(os.pread, rfd, n, offset)
            assert got == want, f"pread via handle on {name} at {offset}+{n} differs"
            assert os.fstat(mfd).st_size == os.fstat(rfd).st_size, f"fstat size of {name}"

        @precondition(lambda self: self.handles)
        @rule(i=st.integers(0, MAX_HANDLES - 1))
        def reopen(self, i):
            """Close a handle and open the same name again (it may be gone or renamed)."""
            mfd, rfd, name = self.handles.pop(i % len(self.handles))
            os.close(mfd)
            os.close(rfd)
            self.open_handle(name)

        @precondition(lambda self: self.remounts < 1)    # a remount costs ~1.5 s
        @rule()
        def remount(self):
            self.remounts += 1
            self.close_handles()
            mount.remount()

        def close_handles(self):
            for mfd, rfd, _ in self.handles:
                os.close(mfd)
                os.close(rfd)
            self.handles.clear()

        @invariant()
        def trees_match(self):
            got, want = snapshot(self.mnt), snapshot(self.ref)
            assert sorted(got) == sorted(want), f"names: mount {sorted(got)} vs {sorted(want)}"
            for rel in want:
                g, w = got[rel], want[rel]
                for key in ("type", "mode", "size", "nlink"):
                    assert g.get(key) == w.get(key), f"{rel} {key}: mount {g.get(key)} vs {w.get(key)}"
                if "data" in w:
                    assert g["data"] == w["data"], f"{rel}: contents differ"

        def teardown(self):
            self.close_handles()

    return MountModel


@pytest.mark.parametrize("chunk_size", ["4K", "64K"])
def test_mount_matches_a_plain_directory(tmp_path: Path, keyfile: Path, mount_env: dict,
                                         chunk_size: str):
    store = tmp_path / "store"
    init_store(store, keyfile, chunk_size, env=mount_env)
    mount = Mount(store, tmp_path / "mnt", keyfile, env=mount_env).start()
    try:
        machine = make_machine(mount, tmp_path / "ref", int(chunk_size[:-1]) * 1024)
        run_state_machine_as_test(machine, settings=settings(
            max_examples=10, stateful_step_count=20, deadline=None, database=None,
            suppress_health_check=list(HealthCheck)))
    finally:
        mount.close()
