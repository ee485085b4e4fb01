"""Real tools (cp, tar, git, sqlite3, rsync) through a real mount, local and SMB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import click
import pytest

pytestmark = pytest.mark.fuse

SOURCE_PKG = Path(click.__file__).parent


def run(*args, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
        f"{result.stdout.decode(errors='replace')}\n{result.stderr.decode(errors='replace')}")
    return result


def source_tree(tmp_path: Path) -> Path:
    """A copy of an installed package, plus a symlink, an empty dir and odd modes."""
    src = tmp_path / "src"
    shutil.copytree(SOURCE_PKG, src / "click", symlinks=True)
    (src / "empty").mkdir()
    (src / "link").symlink_to("click/__init__.py")
    (src / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "exec.sh").chmod(0o751)
    (src / "big.bin").write_bytes(os.urandom(300_000))
    return src


def test_cp_a_and_diff_r(mounted, tmp_path):
    src = source_tree(tmp_path)
    dst = mounted.mountpoint / "copy"
    run("cp", "-a", src, dst)
    run("diff", "-r", "--no-dereference", src, dst)
    assert os.readlink(dst / "link") == "click/__init__.py"
    assert (dst / "exec.sh").stat().st_mode & 0o777 == 0o751
    mounted.remount()
    run("diff", "-r", "--no-dereference", src, dst)


@pytest.mark.heavy
def test_tar_create_outside_extract_inside(mounted, tmp_path):
    src = source_tree(tmp_path)
    archive = tmp_path / "tree.tar"
    run("tar", "-C", src, "-cf", archive, ".")
    dst = mounted.mountpoint / "extracted"
    dst.mkdir()
    run("tar", "-C", dst, "-xpf", archive)
    run("diff", "-r", "--no-dereference", src, dst)
    # And back out again: an archive made inside the mount lists the same members.
    archive2 = mounted.mountpoint / "again.tar"
    run("tar", "-C", dst, "-cf", archive2, ".")
    with tarfile.open(archive) as a, tarfile.open(archive2) as b:
        assert sorted(a.getnames()) == sorted(b.getnames())
    mounted.remount()
    run("diff", "-r", "--no-dereference", src, dst)


@pytest.mark.hard_links
def test_hard_links_survive_cp_tar_and_rsync_out_of_the_mount(mounted, tmp_path):
    """cp -a, tar and rsync -H find hard links by st_nlink > 1 right after listing a directory."""
    src = mounted.mountpoint / "linked"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"shared")
    os.link(src / "a", src / "sub" / "b")
    (src / "solo").write_bytes(b"alone")
    out = tmp_path / "out"
    (out / "tar").mkdir(parents=True)
    run("cp", "-a", src, out / "cp")
    run("tar", "-C", mounted.mountpoint, "-cf", tmp_path / "linked.tar", "linked")
    run("tar", "-C", out / "tar", "-xf", tmp_path / "linked.tar")
    run("rsync", "-aH", f"{src}/", f"{out / 'rsync'}/")
    for copy in (out / "cp", out / "tar" / "linked", out / "rsync"):
        a, b = copy / "a", copy / "sub" / "b"
        assert a.read_bytes() == b"shared" and os.path.samefile(a, b), copy
        assert (copy / "solo").stat().st_nlink == 1, copy


def git_env() -> dict:
    env = dict(os.environ)
    env.update(GIT_AUTHOR_NAME="Test", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="Test", GIT_COMMITTER_EMAIL="t@example.com",
               GIT_CONFIG_NOSYSTEM="1", HOME=os.environ.get("HOME", "/root"),
               GIT_CONFIG_GLOBAL="/dev/null")
    return env


@pytest.mark.heavy
def test_git_init_add_commit_log_fsck(mounted, tmp_path):
    env = git_env()
    repo = mounted.mountpoint / "repo"
    (repo / "click").mkdir(parents=True)
    for src in sorted(SOURCE_PKG.glob("*.py"))[:8]:
        shutil.copy2(src, repo / "click" / src.name)
    run("git", "init", "-q", "-b", "main", repo, env=env)
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "commit", "-q", "-m", "first", cwd=repo, env=env)
    (repo / "click" / "__init__.py").write_text("# changed\n")
    (repo / "new.txt").write_text("new\n")
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "commit", "-q", "-m", "second", cwd=repo, env=env)
    if mounted.store_dir and "://" not in str(mounted.store):
        # Repacking rewrites every object: about 20 s over SMB, so local only.
        run("git", "gc", "-q", cwd=repo, env=env)
    log = run("git", "log", "--format=%s", cwd=repo, env=env).stdout.decode().split()
    assert log == ["second", "first"]
    run("git", "fsck", "--full", "--strict", cwd=repo, env=env)
    status = run("git", "status", "--porcelain", cwd=repo, env=env).stdout
    assert status == b""
    mounted.remount()
    run("git", "fsck", "--full", "--strict", cwd=repo, env=env)
    assert run("git", "status", "--porcelain", cwd=repo, env=env).stdout == b""
    assert run("git", "show", "HEAD:new.txt", cwd=repo, env=env).stdout == b"new\n"


WRITER = textwrap.dedent("""
    import sqlite3, sys
    db, wid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    con.execute("PRAGMA busy_timeout=60000")
    for i in range(n):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t(writer, seq, payload) VALUES (?, ?, ?)",
                    (wid, i, bytes([wid]) * (100 + i % 500)))
        con.execute("COMMIT")
    con.close()
""")


def check_db(db: Path, expected: int) -> None:
    out = run("sqlite3", db, "PRAGMA integrity_check;").stdout.decode().strip()
    assert out == "ok"
    rows = run("sqlite3", db, "SELECT count(*), count(DISTINCT writer || '-' || seq) FROM t;")
    assert rows.stdout.decode().strip() == f"{expected}|{expected}"


def test_sqlite_wal_concurrent_writers(mounted, tmp_path):
    db = mounted.mountpoint / "db.sqlite"
    mode = run("sqlite3", db, "PRAGMA journal_mode=WAL;").stdout.decode().strip()
    assert mode == "wal"
    run("sqlite3", db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, writer INT, seq INT, payload BLOB);")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    per_writer = 150
    procs = [subprocess.Popen([sys.executable, str(script), str(db), str(w), str(per_writer)],
                              stderr=subprocess.PIPE) for w in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode(errors="replace")
    check_db(db, 4 * per_writer)
    mounted.remount()
    check_db(db, 4 * per_writer)
    assert run("sqlite3", db, "PRAGMA journal_mode;").stdout.decode().strip() == "wal"


@pytest.mark.heavy
def test_rsync_second_run_transfers_nothing(mounted, tmp_path):
    src = source_tree(tmp_path)
    # A symlink sorted first, stamped at the start of the current second: rsync creates its
    # copy within the same second, so its mtime already matches and rsync leaves it alone.
    while time.time() % 1 > 0.05:
        time.sleep(0.01)
    os.symlink("exec.sh", src / "0link")
    os.utime(src / "0link", ns=(time.time_ns(),) * 2, follow_symlinks=False)
    dst = mounted.mountpoint / "mirror"
    run("rsync", "-a", f"{src}/", f"{dst}/")
    second = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{dst}/").stdout.decode()
    assert second.strip() == "", second
    check = run("rsync", "-rlc", "--dry-run", "--itemize-changes", f"{src}/", f"{dst}/")
    assert check.stdout.decode().strip() == "", check.stdout.decode()
    time.sleep(1.1)
    mounted.remount()
    third = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{dst}/").stdout.decode()
    assert third.strip() == "", third
    run("diff", "-r", "--no-dereference", src, dst)


def test_mtime_is_stable_across_remount(mounted):
    """What rsync and make rely on: an untouched entry keeps the mtime stat reported."""
    m = mounted.mountpoint
    os.symlink("f", m / "link")
    (m / "f").write_bytes(b"x" * 1000)
    os.mkdir(m / "d")
    before = {n: os.lstat(m / n).st_mtime_ns for n in ("link", "f", "d")}
    time.sleep(1.1)
    assert {n: os.lstat(m / n).st_mtime_ns for n in before} == before
    mounted.remount()
    assert {n: os.lstat(m / n).st_mtime_ns for n in before} == before
