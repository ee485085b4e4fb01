"""Extended attributes and POSIX ACLs through a real mount, checked against ext4's rules."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.storepaths import xattr_blob_path

_libc = ctypes.CDLL(None, use_errno=True)

def errno_of(fn, *args, **kwargs) -> int:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno


def _getxattr_sized(path: Path, name: bytes, size: int) -> int:
    """getxattr(2) with a buffer of size bytes: the length, or -errno."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.getxattr(os.fsencode(path), name, buf if size else None, ctypes.c_size_t(size))
    return n if n >= 0 else -ctypes.get_errno()


def _gone_after_release(path: Path, limit: float = 10.0) -> bool:
    """Whether path disappears: the kernel sends RELEASE after close(2) returns, so the
    last close's work is done a moment later."""
    deadline = time.monotonic() + limit
    while path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _as_nobody(mountpoint: Path, script: str) -> subprocess.CompletedProcess:
    """A shell as uid/gid 65534 without supplementary groups; the mount's parents made
    searchable for it first."""
    for parent in [mountpoint, *mountpoint.parents]:
        if parent == Path("/"):
            break
        mode = stat.S_IMODE(parent.stat().st_mode)
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/bin/sh", "-c", script], capture_output=True, text=True)


def test_user_xattrs_set_get_list_remove_and_flags(mounted):
    p = mounted.mountpoint / "f"
    p.write_bytes(b"data")
    assert os.listxattr(p) == []
    assert errno_of(os.getxattr, p, "user.a") == errno.ENODATA
    before = p.stat().st_ctime_ns
    time.sleep(0.01)
    os.setxattr(p, "user.a", b"one")
    assert p.stat().st_ctime_ns > before
    os.setxattr(p, "user.b", b"")
    assert os.getxattr(p, "user.a") == b"one"
    assert os.getxattr(p, "user.b") == b""
    assert sorted(os.listxattr(p)) == ["user.a", "user.b"]
    assert errno_of(os.setxattr, p, "user.a", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, p, "user.c", b"x", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.a", b"two", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.a") == b"two"
    assert _getxattr_sized(p, b"user.a", 0) == 3          # size query
    assert _getxattr_sized(p, b"user.a", 2) == -errno.ERANGE
    assert _getxattr_sized(p, b"user.a", 3) == 3
    before = p.stat().st_ctime_ns
    time.sleep(0.01)
    os.removexattr(p, "user.a")
    assert p.stat().st_ctime_ns > before
    assert errno_of(os.removexattr, p, "user.a") == errno.ENODATA
    os.removexattr(p, "user.b")
    assert os.listxattr(p) == []
    assert p.read_bytes() == b"data"
    d = mounted.mountpoint / "d"
    d.mkdir()
    os.setxattr(d, "user.dir", b"v")
    os.setxattr(mounted.mountpoint, "user.root", b"r")
    mounted.remount()
    assert os.getxattr(d, "user.dir") == b"v"
    assert os.getxattr(mounted.mountpoint, "user.root") == b"r"


def test_setfattr_getfattr_tools(mounted):
    p = mounted.mountpoint / "f"
    p.write_bytes(b"")
    subprocess.run(["setfattr", "-n", "user.comment", "-v", "hello world", str(p)], check=True)
    out = subprocess.run(["getfattr", "-d", "--absolute-names", str(p)], check=True,
                         capture_output=True, text=True).stdout
    assert 'user.comment="hello world"' in out
    subprocess.run(["setfattr", "-x", "user.comment", str(p)], check=True)
    assert os.listxattr(p) == []


def test_limits(mounted):
    p = mounted.mountpoint / "f"
    p.write_bytes(b"")
    os.setxattr(p, "user." + "n" * 250, b"v")                 # 255 bytes
    assert errno_of(os.setxattr, p, "user." + "n" * 251, b"v") == errno.ERANGE
    assert errno_of(os.setxattr, p, "user.big", b"v" * (64 * 1024 + 1)) == errno.E2BIG
    for i in range(4):                                           # 256 KiB of values
        os.setxattr(p, f"user.v{i}", bytes([i]) * (64 * 1024))
    assert os.getxattr(p, "user.v3") == b"\3" * (64 * 1024)
    with pytest.raises(OSError) as full:                         # but not without end
        for i in range(4, 16):
            os.setxattr(p, f"user.v{i}", b"x" * (64 * 1024))
    assert full.value.errno == errno.ENOSPC
    assert os.getxattr(p, "user.v0") == b"\0" * (64 * 1024)


def test_namespace_rules(mounted):
    m = mounted.mountpoint
    (m / "f").write_bytes(b"")
    os.symlink("f", m / "link")
    os.mkfifo(m / "fifo")
    assert errno_of(os.setxattr, m / "link", "user.a", b"x",
                    follow_symlinks=False) == errno.EPERM
    assert errno_of(os.setxattr, m / "fifo", "user.a", b"x") == errno.EPERM
    assert errno_of(os.setxattr, m / "f", "bogus.a", b"x") == errno.EOPNOTSUPP
    os.setxattr(m / "f", "trusted.t", b"secret")                # root
    os.setxattr(m / "f", "user.u", b"public")
    os.setxattr(m / "link", "trusted.l", b"x", follow_symlinks=False)
    os.chmod(m / "f", 0o666)
    os.chmod(m, 0o777)
    py = ("import os,sys,errno\n"
          f"p={str(m / 'f')!r}\n"
          "print(sorted(os.listxattr(p)))\n"
          "for n in ('trusted.t','trusted.new'):\n"
          "    try: os.setxattr(p, n, b'y'); print('set')\n"
          "    except OSError as e: print(errno.errorcode[e.errno])\n"
          "try: os.getxattr(p, 'trusted.t'); print('read')\n"
          "except OSError as e: print(errno.errorcode[e.errno])\n"
          "os.setxattr(p, 'user.n', b'z'); print(os.getxattr(p, 'user.n'))\n")
    out = _as_nobody(m, f"exec /usr/bin/python3 -c {sh_quote(py)}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "['user.u']"
    assert lines[1] == "EPERM" and lines[2] == "EPERM"
    assert lines[3] == "ENODATA"
    assert lines[4] == "b'z'"
    assert os.getxattr(m / "f", "trusted.t") == b"secret"


def sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_setcap_getcap_and_a_write_drops_capabilities(mounted):
    p = mounted.mountpoint / "tool"
    shutil.copy("/bin/true", p)
    subprocess.run(["setcap", "cap_net_raw+ep", str(p)], check=True)
    out = subprocess.run(["getcap", str(p)], check=True, capture_output=True, text=True).stdout
    assert "cap_net_raw" in out and "ep" in out
    assert os.getxattr(p, "security.capability")
    with open(p, "ab") as f:         # as on ext4, writing a file drops its capabilities
        f.write(b"\0")
    assert errno_of(os.getxattr, p, "security.capability") == errno.ENODATA


@pytest.mark.hard_links
def test_hard_links_share_and_rename_keeps(mounted):
    m = mounted.mountpoint
    (m / "a").write_bytes(b"x")
    os.link(m / "a", m / "b")
    os.setxattr(m / "a", "user.k", b"v1")
    assert os.getxattr(m / "b", "user.k") == b"v1"
    os.setxattr(m / "b", "user.k", b"v2")
    assert os.getxattr(m / "a", "user.k") == b"v2"
    os.unlink(m / "a")
    assert os.getxattr(m / "b", "user.k") == b"v2"    # the last link keeps them
    (m / "d").mkdir()
    os.rename(m / "b", m / "d" / "c")
    os.setxattr(m / "d", "user.dir", b"dv")
    os.rename(m / "d", m / "e")
    mounted.remount()
    assert os.getxattr(m / "e" / "c", "user.k") == b"v2"
    assert os.getxattr(m / "e", "user.dir") == b"dv"


def test_renamed_file_keeps_xattrs(mounted):
    m = mounted.mountpoint
    (m / "a").write_bytes(b"x")
    os.setxattr(m / "a", "user.k", b"v")
    (m / "d").mkdir()
    os.rename(m / "a", m / "d" / "b")
    mounted.remount()
    assert os.getxattr(m / "d" / "b", "user.k") == b"v"


@pytest.mark.store_dir
def test_blobs_sealed_and_removed_with_their_inode(mounted, keyfile):
    m = mounted.mountpoint
    (m / "f").write_bytes(b"x")
    os.setxattr(m / "f", "user.plainname", b"plainvalue")
    (m / "d").mkdir()
    os.setxattr(m / "d", "user.dirname", b"dirvalue")
    store = mounted.store_dir
    blob = xattr_blob_path(store, keyfile, "f")
    dblob = xattr_blob_path(store, keyfile, "d")
    assert blob.is_file() and dblob.is_file()
    for path in store.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"plainname" not in data and b"plainvalue" not in data
            assert b"dirvalue" not in data
    os.unlink(m / "f")
    os.rmdir(m / "d")
    assert not blob.exists() and not dblob.exists()
    (m / "g").write_bytes(b"")
    os.setxattr(m / "g", "user.a", b"1")
    gblob = xattr_blob_path(store, keyfile, "g")
    os.removexattr(m / "g", "user.a")               # the last one: the blob goes
    assert not gblob.exists()
    (m / "victim").write_bytes(b"")
    os.setxattr(m / "victim", "user.v", b"1")
    vblob = xattr_blob_path(store, keyfile, "victim")
    os.replace(m / "g", m / "victim")              # rename over: the victim's blob goes
    assert not vblob.exists()


@pytest.mark.store_dir
def test_blob_of_a_file_unlinked_while_open_goes_with_its_last_close(mounted, keyfile):
    m = mounted.mountpoint
    store = mounted.store_dir
    (m / "f").write_bytes(b"x")
    os.setxattr(m / "f", "user.a", b"1")
    blob = xattr_blob_path(store, keyfile, "f")
    (m / "g").write_bytes(b"y")
    os.setxattr(m / "g", "user.b", b"2")
    gblob = xattr_blob_path(store, keyfile, "g")
    (m / "over").write_bytes(b"")
    with open(m / "f", "rb") as f, open(m / "g", "rb"):
        os.unlink(m / "f")
        os.replace(m / "over", m / "g")            # g's last name replaced while open
        assert os.getxattr(f.fileno(), "user.a") == b"1"     # still readable while open
        assert blob.exists() and gblob.exists()
    assert _gone_after_release(blob) and _gone_after_release(gblob)
    # a file that keeps a name keeps its blob after its last close
    (m / "h").write_bytes(b"z")
    os.setxattr(m / "h", "user.c", b"3")
    hblob = xattr_blob_path(store, keyfile, "h")
    with open(m / "h", "rb"):
        pass
    assert hblob.exists() and os.getxattr(m / "h", "user.c") == b"3"


@pytest.mark.hard_links
@pytest.mark.store_dir
def test_blob_of_an_open_file_goes_when_its_last_link_does(mounted, keyfile):
    m = mounted.mountpoint
    (m / "a").write_bytes(b"x")
    os.setxattr(m / "a", "user.a", b"1")
    os.link(m / "a", m / "b")
    blob = xattr_blob_path(mounted.store_dir, keyfile, "a")
    with open(m / "a", "rb"):
        os.unlink(m / "a")
    assert blob.exists() and os.getxattr(m / "b", "user.a") == b"1"   # b still names it
    with open(m / "b", "rb"):
        os.unlink(m / "b")
    assert _gone_after_release(blob)


@pytest.mark.store_dir
def test_tampered_or_moved_blob_is_eio(mounted, keyfile):
    m = mounted.mountpoint
    for name in ("a", "b", "c"):
        (m / name).write_bytes(b"")
        os.setxattr(m / name, "user.k", name.encode())
    store = mounted.store_dir
    a, b = xattr_blob_path(store, keyfile, "a"), xattr_blob_path(store, keyfile, "b")
    raw = bytearray(a.read_bytes())
    raw[-1] ^= 1
    a.write_bytes(bytes(raw))
    assert errno_of(os.getxattr, m / "a", "user.k") == errno.EIO
    shutil.copy(b, a)                           # b's blob given to a: bound to b's id
    assert errno_of(os.getxattr, m / "a", "user.k") == errno.EIO
    assert os.getxattr(m / "b", "user.k") == b"b"
    # (c's blob was never read through the mount: no SMB handle of it is cached open)
    xattr_blob_path(store, keyfile, "c").unlink()      # the flag says there is one: damage
    assert errno_of(os.listxattr, m / "c") == errno.EIO


def test_acl_enforced_for_another_user(mounted):
    m = mounted.mountpoint
    p = m / "f"
    p.write_bytes(b"secret\n")
    os.chmod(p, 0o600)
    os.chmod(m, 0o755)
    assert _as_nobody(m, f"cat '{p}'").returncode != 0
    subprocess.run(["setfacl", "-m", "u:65534:r", str(p)], check=True)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640             # the mask is the group class
    out = subprocess.run(["getfacl", "-n", str(p)], check=True, capture_output=True,
                         text=True).stdout
    assert "user:65534:r--" in out and "mask::r--" in out
    assert _as_nobody(m, f"cat '{p}'").stdout == "secret\n"
    assert _as_nobody(m, f"echo x >> '{p}'").returncode != 0
    os.chmod(p, 0o600)                                          # chmod sets the mask
    out = subprocess.run(["getfacl", "-n", str(p)], check=True, capture_output=True,
                         text=True).stdout
    assert "mask::---" in out
    assert _as_nobody(m, f"cat '{p}'").returncode != 0
    os.chmod(p, 0o640)
    assert _as_nobody(m, f"cat '{p}'").stdout == "secret\n"
    subprocess.run(["setfacl", "-b", str(p)], check=True)       # back to the mode bits
    assert _as_nobody(m, f"cat '{p}'").returncode != 0
    assert "system.posix_acl_access" not in os.listxattr(p)
    mounted.remount()
    assert _as_nobody(m, f"cat '{p}'").returncode != 0


def test_default_acl_inherited(mounted):
    m = mounted.mountpoint
    d = m / "shared"
    d.mkdir()
    os.chmod(m, 0o755)
    os.chmod(d, 0o700)
    subprocess.run(["setfacl", "-m", "u:65534:rwx", "-d", "-m", "u:65534:rwx", str(d)],
                   check=True)
    assert _as_nobody(m, f"echo hi > '{d}/by-nobody'").returncode == 0
    old_umask = os.umask(0)
    try:
        (d / "f").write_bytes(b"mine\n")
        (d / "sub").mkdir()
    finally:
        os.umask(old_umask)
    # The difference from ext4 (README): the kernel applies the umask before sealfs sees
    # the mode, so it limits the inherited ACL's group class (the mask) too.
    (d / "masked").mkdir()
    masked = subprocess.run(["getfacl", "-n", str(d / "masked")], check=True,
                            capture_output=True, text=True).stdout
    assert "\nmask::r-x" in masked and "default:mask::rwx" in masked
    out = subprocess.run(["getfacl", "-n", str(d / "f")], check=True, capture_output=True,
                         text=True).stdout
    assert "user:65534:rwx" in out
    sub = subprocess.run(["getfacl", "-n", str(d / "sub")], check=True, capture_output=True,
                         text=True).stdout
    assert "default:user:65534:rwx" in sub
    assert _as_nobody(m, f"cat '{d}/f'").stdout == "mine\n"
    mounted.remount()
    assert _as_nobody(m, f"cat '{d}/f'").stdout == "mine\n"
    assert _as_nobody(m, f"echo x > '{d}/sub/g'").returncode == 0


def _xattrs_of(root: Path) -> dict:
    out = {}
    for p in sorted([root, *root.rglob("*")]):
        out[str(p.relative_to(root))] = {n: os.getxattr(p, n, follow_symlinks=False)
                                         for n in os.listxattr(p, follow_symlinks=False)}
    return out


@pytest.mark.heavy
def test_cp_rsync_tar_round_trips(mounted, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"file")
    (src / "d").mkdir()
    (src / "d" / "g").write_bytes(b"g")
    os.setxattr(src / "f", "user.one", b"1")
    os.setxattr(src / "d", "user.dir", b"2")
    os.setxattr(src / "d" / "g", "trusted.t", b"3")
    subprocess.run(["setfacl", "-m", "u:65534:r", str(src / "f")], check=True)
    want = _xattrs_of(src)
    m = mounted.mountpoint
    subprocess.run(["cp", "-a", str(src), str(m / "cp")], check=True)
    assert _xattrs_of(m / "cp") == want
    subprocess.run(["rsync", "-aAX", f"{src}/", f"{m / 'rsync'}/"], check=True)
    assert _xattrs_of(m / "rsync") == want
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--acls", "-C", str(src), "-cf",
                    str(tmp_path / "t.tar"), "."], check=True)
    (m / "tar").mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--acls", "-C", str(m / "tar"),
                    "-xf", str(tmp_path / "t.tar")], check=True)
    got = _xattrs_of(m / "tar")
    assert {k: v for k, v in got.items() if k != "."} == {k: v for k, v in want.items()
                                                          if k != "."}
    back = tmp_path / "back"
    subprocess.run(["cp", "-a", str(m / "cp"), str(back)], check=True)
    assert _xattrs_of(back) == want


def test_a_file_without_attributes_answers_from_its_listing_and_another_clients_shows(mounted):
    """`ls -l` asks every entry for security.selinux and its access ACL; a file without
    attributes answers both from the attributes its listing brought, for no longer than
    the kernel keeps those (ATTR_TIMEOUT): an attribute another client set shows after
    that, as its mode would (on SMB too: its change mark moved). Our own set shows at once."""
    from sealfs.fs.fuse.tuning import ATTR_TIMEOUT
    from tests.mounting import sealfs
    mnt = mounted.mountpoint
    (mnt / "d").mkdir()
    for name in ("mine", "theirs"):
        (mnt / "d" / name).write_bytes(b"x")
    os.listdir(mnt / "d")
    for name in ("mine", "theirs"):
        assert errno_of(os.getxattr, mnt / "d" / name, "security.selinux") == errno.ENODATA
        assert errno_of(os.getxattr, mnt / "d" / name, "user.k") == errno.ENODATA
        assert os.listxattr(mnt / "d" / name) == []
    assert errno_of(os.getxattr, mnt / "d" / "mine", "bogus.ns") == errno.EOPNOTSUPP
    os.setxattr(mnt / "d" / "mine", "user.k", b"here")
    assert os.getxattr(mnt / "d" / "mine", "user.k") == b"here"
    assert os.listxattr(mnt / "d" / "mine") == ["user.k"]

    sealfs("xattr", str(mounted.store), "/d/theirs", "-n", "user.k", "-v", "there",
           "--keyfile", str(mounted.keyfile), env=mounted.env)
    deadline = time.monotonic() + ATTR_TIMEOUT + 5
    while True:
        try:
            value = os.getxattr(mnt / "d" / "theirs", "user.k")
            break
        except OSError as exc:
            assert exc.errno == errno.ENODATA
            assert time.monotonic() < deadline, "another client's attribute never showed"
            time.sleep(0.1)
    assert value == b"there"
    assert os.listxattr(mnt / "d" / "theirs") == ["user.k"]
