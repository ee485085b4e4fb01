"""`sealfs sync` and `restore` keep extended attributes and POSIX ACLs (issue 17, "Tools
keep them"), on local and SMB stores, checked with the real tools (getfattr -d -m -,
getfacl, getcap); --no-xattrs skips them; a source or target without xattr support and an
attribute the target refuses are counted warnings; an incremental sync copies an xattr
change without copying the content. Also `sealfs xattr` and `ls -l`'s mark."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.servers.samba import new_store

SEALFS = [sys.executable, "-m", "sealfs.fs.cli"]
pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("getfattr", "setfattr",
                                                                   "getfacl", "setfacl", "setcap")),
                                reason="needs attr, acl and libcap2-bin")


def run(*args: object, env: dict | None = None, user: int | None = None
        ) -> subprocess.CompletedProcess:
    prefix = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}",
                                      "--clear-groups"]
    return subprocess.run([*prefix, *SEALFS, *map(str, args)], capture_output=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).parents[2])


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    return r.stdout.decode()


def summary(r: subprocess.CompletedProcess, verb: str) -> str:
    return [x for x in r.stdout.decode().splitlines() if x.startswith(f"{verb}:")][-1]


def tool(*args: str, cwd: Path) -> str:
    r = subprocess.run(args, capture_output=True, cwd=cwd, check=True)
    return r.stdout.decode()


def xattr_view(root: Path) -> tuple[str, str, str]:
    """What the real tools show of a tree: every xattr (symlinks' own too), the ACLs, and
    the capabilities, with paths relative to root."""
    return (tool("getfattr", "-R", "-h", "-d", "-m", "-", "-e", "hex", ".", cwd=root),
            tool("getfacl", "-R", "-P", "-n", ".", cwd=root),
            tool("getcap", "-r", ".", cwd=root))


def make_tree(src: Path) -> None:
    (src / "docs").mkdir(parents=True)
    (src / "plain.txt").write_bytes(b"no attributes here\n")
    f = src / "docs" / "report.txt"
    f.write_bytes(b"the report\n" * 100)
    subprocess.run(["setfattr", "-n", "user.comment", "-v", "quarterly", str(f)], check=True)
    subprocess.run(["setfattr", "-n", "user.binary", "-v", "0x00ff10", str(f)], check=True)
    subprocess.run(["setfattr", "-n", "trusted.origin", "-v", "scanner", str(f)], check=True)
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:4321:r", str(f)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(src / "docs")], check=True)
    subprocess.run(["setfattr", "-n", "user.dir", "-v", "a directory", str(src / "docs")], check=True)
    tool_bin = src / "ping"
    shutil.copyfile("/bin/true", tool_bin)
    tool_bin.chmod(0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", str(tool_bin)], check=True)
    os.symlink("docs/report.txt", src / "link")
    subprocess.run(["setfattr", "-h", "-n", "trusted.link", "-v", "on a symlink", str(src / "link")],
                   check=True)


@pytest.fixture(params=["local", "smb"])
def any_store(request, tmp_path, keyfile):
    """(STORE argument, env) of a fresh initialized store."""
    if request.param == "local":
        path = tmp_path / "store"
        ok(run("init", path, "--keyfile", keyfile))
        return str(path), {}
    samba = request.getfixturevalue("samba")
    smb = new_store(samba)
    env = {"SEALFS_SMB_PASSWORD": samba.password}
    ok(run("init", smb.url, "--keyfile", keyfile, env=env))
    return smb.url, env


@pytest.mark.slow
def test_sync_and_restore_keep_xattrs_acls_and_capabilities(any_store, keyfile, tmp_path):
    store, env = any_store
    k = ("--keyfile", keyfile)
    src, out = tmp_path / "src", tmp_path / "out"
    make_tree(src)
    want = xattr_view(src)
    assert "user.comment" in want[0] and "user:1234:rw-" in want[1] and "cap_net_raw" in want[2]

    r = run("sync", src, store, *k, env=env)
    size = 19 + 1100 + os.path.getsize("/bin/true")
    assert summary(r, "sync") == f"sync: 4 copied ({size} bytes), 0 deleted, 0 unchanged, 0 errors"
    ok(run("restore", store, out, *k, env=env))
    assert xattr_view(out) == want
    assert (out / "docs" / "report.txt").read_bytes() == b"the report\n" * 100
    # restored after the content and before the times
    for rel in ("docs/report.txt", "ping", "docs"):
        assert os.stat(out / rel).st_mtime_ns // 100 == os.stat(src / rel).st_mtime_ns // 100, rel

    # The mount-less CLI shows them: ls -l marks ACLs '+' and other xattrs '@'.
    listing = {line.split()[-1]: line.split()[0] for line in
               ok(run("ls", store, "/", "-l", *k, env=env)).splitlines()}
    assert listing == {"docs": "drwxr-xr-x+", "link": "lrwxrwxrwx@", "ping": "-rwxr-xr-x@",
                       "plain.txt": "-rw-r--r--"}
    dump = ok(run("xattr", store, "/docs/report.txt", "-d", *k, env=env))
    assert dump.splitlines() == [
        "# file: /docs/report.txt",
        "system.posix_acl_access=0s" + base64.b64encode(
            os.getxattr(src / "docs" / "report.txt", "system.posix_acl_access")).decode(),
        'trusted.origin="scanner"', "user.binary=0sAP8Q", 'user.comment="quarterly"', ""]
    acl = ok(run("xattr", store, "/docs/report.txt", "--acl", *k, env=env)).splitlines()
    assert acl[3:] == ["user::rw-", "user:1234:rw-", "group::r--", "group:4321:r--",
                       "mask::rw-", "other::r--", ""]

    # Incremental: an xattr change, a removal and an ACL change travel without the content.
    f = src / "docs" / "report.txt"
    subprocess.run(["setfattr", "-n", "user.comment", "-v", "annual", str(f)], check=True)
    subprocess.run(["setfattr", "-x", "user.binary", str(f)], check=True)
    subprocess.run(["setfacl", "-x", "g:4321", str(src / "docs" / "report.txt")], check=True)
    subprocess.run(["setfattr", "-n", "user.new", "-v", "1", str(src / "plain.txt")], check=True)
    r = run("sync", src, store, *k, env=env)
    assert summary(r, "sync") == ("sync: 0 copied (0 bytes), 0 deleted, 4 unchanged, 0 errors, "
                                  "2 xattrs updated")
    r = run("sync", src, store, *k, env=env)                  # and then nothing is left to do
    assert summary(r, "sync") == "sync: 0 copied (0 bytes), 0 deleted, 4 unchanged, 0 errors"
    assert "0 problems" in ok(run("fsck", store, *k, env=env))     # no orphaned blob left
    r = run("restore", store, out, *k, env=env)
    assert summary(r, "restore") == "restore: 0 copied (0 bytes), 4 unchanged, 0 errors, 2 xattrs updated"
    assert xattr_view(out) == xattr_view(src)


@pytest.mark.slow
def test_no_xattrs_skips_them_both_ways(tmp_path, keyfile):
    store, src, out = tmp_path / "store", tmp_path / "src", tmp_path / "out"
    k = ("--keyfile", keyfile)
    ok(run("init", store, *k))
    make_tree(src)
    ok(run("sync", src, store, "--no-xattrs", *k))
    assert ok(run("xattr", store, "/docs/report.txt", "-d", *k)) == "# file: /docs/report.txt\n\n"
    assert ok(run("sync", src, store, *k)).splitlines()[-1].endswith(", 4 xattrs updated")
    ok(run("restore", store, out, "--no-xattrs", *k))
    view = xattr_view(out)
    assert "user." not in view[0] and "trusted." not in view[0] and view[2] == ""
    assert "user:1234" not in view[1]


@pytest.mark.slow
def test_dry_run_names_an_xattr_change_and_makes_none(tmp_path, keyfile):
    store, src = tmp_path / "store", tmp_path / "src"
    k = ("--keyfile", keyfile)
    ok(run("init", store, *k))
    make_tree(src)
    ok(run("sync", src, store, *k))
    subprocess.run(["setfattr", "-n", "user.comment", "-v", "new", str(src / "docs" / "report.txt")],
                   check=True)
    r = run("sync", src, store, "-n", *k)
    assert ok(r).endswith(", 1 xattrs updated (dry run)\n")
    assert "sync: would set xattrs of /docs/report.txt" in r.stderr.decode()
    assert 'user.comment="quarterly"' in ok(run("xattr", store, "/docs/report.txt", "-d", *k))


@pytest.fixture
def no_xattr_dir(tmp_path):
    """A directory on a filesystem without xattrs: sealfs's pass-through FUSE reference,
    which answers no xattr request (the kernel then says EOPNOTSUPP)."""
    backing, mnt = tmp_path / "backing", tmp_path / "noxattr"
    backing.mkdir()
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "sealfs.bench.passthrough", "--no-xattrs",
                             str(backing), str(mnt)], stderr=subprocess.PIPE)
    try:
        from sealfs.bench.targets import wait_live
        wait_live(mnt, proc, 30, None)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        proc.wait(30)


@pytest.mark.slow
def test_a_filesystem_without_xattrs_is_one_counted_warning(tmp_path, keyfile, no_xattr_dir):
    store, src, out = tmp_path / "store", no_xattr_dir / "src", no_xattr_dir / "out"
    k = ("--keyfile", keyfile)
    ok(run("init", store, *k))
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        (src / "sub" / f"f{i}").write_bytes(b"x" * i)
    with pytest.raises(OSError):
        os.listxattr(src)
    r = run("sync", src, store, *k)
    ok(r)
    assert summary(r, "sync") == "sync: 3 copied (3 bytes), 0 deleted, 0 unchanged, 0 errors, 1 warnings"
    assert r.stderr.decode().count("has no extended attributes") == 1, r.stderr

    # A volume with xattrs restored there: the content lands, the loss is one warning.
    ok(run("xattr", store, "/sub/f1", "-n", "user.a", "-v", "b", *k))
    r = run("restore", store, out, *k)
    assert summary(r, "restore") == "restore: 3 copied (3 bytes), 0 unchanged, 0 errors, 1 warnings"
    assert "has no extended attributes" in r.stderr.decode()
    assert (out / "sub" / "f1").read_bytes() == b"x"
    # The sync from a source that cannot tell leaves the volume's attributes alone.
    assert "sync: 0 copied" in ok(run("sync", src, store, *k))
    assert 'user.a="b"' in ok(run("xattr", store, "/sub/f1", "-d", *k))


@pytest.fixture
def shared_dir():
    """A directory an ordinary user can reach (pytest's own are root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sealfs-xattr-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_attributes_a_non_root_target_refuses_are_warnings(shared_dir, keyfile):
    """trusted.* and security.capability cannot be set by an ordinary user: restored as
    uid 65534, each is one warning; the rest (user.*, the ACLs) lands, exit 0."""
    store, src, out = shared_dir / "store", shared_dir / "src", shared_dir / "home" / "out"
    k = ("--keyfile", keyfile)
    ok(run("init", store, *k))
    make_tree(src)
    ok(run("sync", src, store, *k))
    nobody = 65534
    key = shared_dir / "nobody.key"
    shutil.copyfile(keyfile, key)
    key.chmod(0o600)
    state = shared_dir / "state-nobody"
    (shared_dir / "home").mkdir()
    state.mkdir()
    for p in (key, shared_dir / "home", state, store, *store.rglob("*")):
        os.chown(p, nobody, nobody)
    r = run("restore", store, out, "--keyfile", key, user=nobody,
            env={"SEALFS_STATE_DIR": str(state)})
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert summary(r, "restore").endswith(", 0 errors, 3 warnings"), err
    assert err.count("trusted.origin") == 1 and err.count("security.capability") == 1, err
    assert err.count("trusted.link") == 1, err
    view = xattr_view(out)
    assert "user.comment" in view[0] and "user:1234:rw-" in view[1] and view[2] == ""
    assert "default:user:1234:rwx" in view[1]

    # Synced back as that user, who cannot see trusted.*: the volume keeps it (as rsync).
    r = run("sync", out, store, "--keyfile", key, user=nobody, env={"SEALFS_STATE_DIR": str(state)})
    assert r.returncode == 0, r.stderr.decode()
    assert 'trusted.origin="scanner"' in ok(run("xattr", store, "/docs/report.txt", "-d", *k))
