"""A 35-deep tree of 100-byte names (3.5 KB of visible path) syncs, restores and passes
fsck on local and SMB stores (issue 16): format 2 keeps every store path short whatever
the visible depth (docs/FORMAT.md section 1), where format 1 failed at depth 20 locally."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.samba import new_store

SEALFS_BIN = str(Path(sys.executable).with_name("sealfs"))
DEPTH = 35
STORE_PATH_BOUND = 300          # FORMAT.md section 1: no store path exceeds it


def run(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SEALFS_BIN, *map(str, args)], capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})


def name(level: int, tag: str) -> str:
    """A 100-byte name; every fifth level's has 2-byte UTF-8 characters."""
    head = f"{level:02d}{tag}-"
    if level % 5 == 0:
        return head + "é" * ((100 - len(head)) // 2) + "x" * ((100 - len(head)) % 2)
    return head + "n" * (100 - len(head))


def make_deep_tree(root: Path) -> Path:
    """Per level: a directory, a file, and (at the bottom) a symlink, an empty directory
    and a long-named file. Times are multiples of 100 ns, so SMB keeps them exactly."""
    root.mkdir()
    here = root
    for level in range(DEPTH):
        assert len(name(level, "d").encode()) == 100
        here = here / name(level, "d")
        here.mkdir(mode=0o750 if level % 3 else 0o755)
        f = here / name(level, "f")
        f.write_bytes(b"level %d\n" % level * (level + 1))
        f.chmod(0o640 if level % 2 else 0o644)
    (here / "empty").mkdir()
    (here / ("L" * 255)).write_bytes(b"a 255-byte name at the bottom\n")
    os.symlink(name(DEPTH - 1, "f"), here / "link")
    t = 1_600_000_000_000_000_000
    for dirpath, dirnames, filenames in sorted(os.walk(root), key=lambda w: -len(w[0])):
        for entry in dirnames + filenames:
            t += 1_000_000_100
            os.utime(Path(dirpath, entry), ns=(t, t), follow_symlinks=False)
    return here


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            p = Path(dirpath) / entry
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


@pytest.fixture(params=["local", "smb"])
def any_store(request, tmp_path, keyfile):
    """(STORE argument, env, the store's local directory) for a fresh initialized store."""
    if request.param == "local":
        path = tmp_path / "store"
        assert run("init", path, "--keyfile", keyfile).returncode == 0
        return str(path), {}, path
    samba = request.getfixturevalue("samba")
    smb = new_store(samba)
    env = {"SEALFS_SMB_PASSWORD": samba.password}
    r = run("init", smb.url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stderr
    return smb.url, env, smb.local


def summary(r: subprocess.CompletedProcess, verb: str) -> str:
    return [x for x in r.stdout.decode().splitlines() if x.startswith(f"{verb}:")][-1]


@pytest.mark.slow
def test_a_35_deep_tree_of_100_byte_names_syncs_restores_and_passes_fsck(any_store, keyfile,
                                                                          tmp_path):
    url, env, where = any_store
    src = tmp_path / "src"
    bottom = make_deep_tree(src)
    deepest = max(len(str(p.relative_to(src)).encode()) for p in src.rglob("*"))
    assert len(str(bottom.relative_to(src)).encode()) == DEPTH * 101 - 1       # 3,534 bytes
    files = DEPTH + 2                                    # a file per level; a link, a file below

    r = run("sync", src, url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert summary(r, "sync").startswith(f"sync: {files} copied"), summary(r, "sync")
    assert summary(r, "sync").endswith(" 0 errors")

    r = run("fsck", url, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert f"{DEPTH + 2} directories" in r.stdout.decode()      # the root, 35, empty

    longest = max(len(str(p.relative_to(where))) for p in where.rglob("*"))
    assert longest <= STORE_PATH_BOUND, f"a store path of {longest} characters"
    assert deepest > 10 * longest                          # the visible path is far longer

    out = tmp_path / "out"
    r = run("restore", url, out, "--keyfile", keyfile, env=env)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert summary(r, "restore").endswith(" 0 errors")
    assert snapshot(out) == snapshot(src)

    r = run("sync", src, url, "--keyfile", keyfile, env=env)          # nothing to do again
    assert r.returncode == 0
    assert summary(r, "sync") == f"sync: 0 copied (0 bytes), 0 deleted, {files} unchanged, 0 errors"
