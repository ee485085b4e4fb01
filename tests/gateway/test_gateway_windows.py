"""Windows semantics through the gateway, with smbprotocol as a Windows client would use
SMB (and Samba's smbclient): share modes, DOS attributes, renames, delete-on-close,
byte-range locks between clients, case-insensitive and long Unicode names, big listings
and files over 4 GiB, and two clients seeing each other's writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.servers.gateway import Client, Gateway, smbclient_cli

FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_ARCHIVE = 0x20


def _status(exc: BaseException) -> str:
    return str(getattr(exc, "ntstatus", "")) + " " + str(exc)


@contextmanager
def raw_tree(gw: Gateway, user: tuple[str, str] | None = None) -> Iterator[object]:
    """One connection, session and tree connect: the protocol level a Windows client works at."""
    from smbprotocol.connection import Connection
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect
    conn = Connection(uuid.uuid4(), "127.0.0.1", gw.port)
    conn.connect()
    try:
        name, password = user or gw.user
        session = Session(conn, name, password, require_encryption=True)
        session.connect()
        tree = TreeConnect(session, rf"\\127.0.0.1\{gw.share}")
        tree.connect()
        yield tree
    finally:
        conn.disconnect()


def raw_open(tree, name: str, *, share: int | None = None, disposition: int | None = None,
             options: int = 0, access: int | None = None):
    from smbprotocol.open import (
        CreateDisposition,
        CreateOptions,
        FileAttributes,
        FilePipePrinterAccessMask,
        ImpersonationLevel,
        Open,
        ShareAccess,
    )
    handle = Open(tree, name)
    handle.create(
        ImpersonationLevel.Impersonation,
        access if access is not None else (FilePipePrinterAccessMask.GENERIC_READ
                                           | FilePipePrinterAccessMask.GENERIC_WRITE
                                           | FilePipePrinterAccessMask.DELETE),
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        share if share is not None else (ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE),
        disposition if disposition is not None else CreateDisposition.FILE_OPEN_IF,
        options | CreateOptions.FILE_NON_DIRECTORY_FILE)
    return handle


def test_share_modes(gateway: Gateway) -> None:
    with Client(gateway) as a, Client(gateway, _second(gateway)) as b:
        exclusive = a.smb.open_file(a.path("sharemode-excl"), "wb", share_access=None, **a.kw)
        with pytest.raises(OSError, match="SHARING_VIOLATION|being used"):
            b.smb.open_file(b.path("sharemode-excl"), "rb", **b.kw)
        exclusive.close()
        b.smb.open_file(b.path("sharemode-excl"), "rb", **b.kw).close()
        reader = a.smb.open_file(a.path("sharemode-excl"), "rb", share_access="r", **a.kw)
        with pytest.raises(OSError, match="SHARING_VIOLATION|being used"):   # wants to write
            b.smb.open_file(b.path("sharemode-excl"), "ab", share_access="rw", **b.kw)
        b.smb.open_file(b.path("sharemode-excl"), "rb", share_access="rw", **b.kw).close()
        reader.close()


def test_dos_attributes_survive_a_new_connection(gateway: Gateway) -> None:
    smbclient_cli(gateway, "put /etc/hostname dosattr.txt", "setmode dosattr.txt +hra")
    with Client(gateway) as client:
        attrs = client.smb.stat(client.path("dosattr.txt"), **client.kw).st_file_attributes
    assert attrs & FILE_ATTRIBUTE_HIDDEN and attrs & FILE_ATTRIBUTE_READONLY
    assert attrs & FILE_ATTRIBUTE_ARCHIVE
    result = smbclient_cli(gateway, "put /etc/hostname dosattr.txt", check=False)
    assert result.returncode != 0 and "ACCESS_DENIED" in result.stdout + result.stderr
    smbclient_cli(gateway, "setmode dosattr.txt -hra")
    with Client(gateway) as client:
        attrs = client.smb.stat(client.path("dosattr.txt"), **client.kw).st_file_attributes
    assert not attrs & (FILE_ATTRIBUTE_HIDDEN | FILE_ATTRIBUTE_READONLY)
    # the attribute lives in the sealed xattrs on the mount, as user.DOSATTRIB
    assert os.getxattr(gateway.mountpoint / "dosattr.txt", "user.DOSATTRIB")


def test_rename_over_an_open_file_is_refused_then_works_once_closed(gateway: Gateway) -> None:
    with Client(gateway) as a, Client(gateway, _second(gateway)) as b:
        for name, data in (("rn-src", b"new"), ("rn-dst", b"old")):
            with a.smb.open_file(a.path(name), "wb", **a.kw) as f:
                f.write(data)
        held = b.smb.open_file(b.path("rn-dst"), "rb", share_access="rw", **b.kw)
        with pytest.raises(OSError):
            a.smb.replace(a.path("rn-src"), a.path("rn-dst"), **a.kw)
        held.close()
        a.smb.replace(a.path("rn-src"), a.path("rn-dst"), **a.kw)
        with b.smb.open_file(b.path("rn-dst"), "rb", **b.kw) as f:
            assert f.read() == b"new"
        assert "rn-src" not in b.smb.listdir(b.path(""), **b.kw)


def test_delete_on_close(gateway: Gateway) -> None:
    from smbprotocol.open import CreateOptions, ShareAccess
    with raw_tree(gateway) as a:
        handle = raw_open(a, "doc-temp", options=CreateOptions.FILE_DELETE_ON_CLOSE,
                          share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_DELETE)
        handle.write(b"scratch", 0)
        assert (gateway.mountpoint / "doc-temp").exists()
        handle.close()
    assert not (gateway.mountpoint / "doc-temp").exists()
    with Client(gateway) as client:
        assert "doc-temp" not in client.smb.listdir(client.path(""), **client.kw)


def test_byte_range_locks_between_two_clients(gateway: Gateway) -> None:
    from smbprotocol.exceptions import SMBResponseException
    from smbprotocol.open import LockFlags, SMB2LockElement

    def lock(offset: int, length: int, flags: int) -> SMB2LockElement:
        element = SMB2LockElement()
        element["offset"] = offset
        element["length"] = length
        element["flags"] = flags
        return element

    exclusive = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
    with Client(gateway) as a, Client(gateway, _second(gateway)) as b:
        with a.smb.open_file(a.path("locked"), "wb", **a.kw) as f:
            f.write(b"0123456789" * 10)
        fa = a.smb.open_file(a.path("locked"), "r+b", share_access="rw", **a.kw)
        fb = b.smb.open_file(b.path("locked"), "r+b", share_access="rw", **b.kw)
        ra, rb = fa.raw.fd, fb.raw.fd                  # the SMB opens under the file objects
        ra.lock([lock(0, 10, exclusive)])
        with pytest.raises(SMBResponseException) as info:
            rb.lock([lock(5, 10, exclusive)])
        assert "LOCK_NOT_GRANTED" in _status(info.value) or "0xc0000055" in _status(info.value)
        with pytest.raises(SMBResponseException) as info:
            rb.write(b"XX", 2)
        assert "FILE_LOCK_CONFLICT" in _status(info.value) or "0xc0000054" in _status(info.value)
        rb.write(b"YY", 50)                                  # outside the range: fine
        rb.lock([lock(20, 10, exclusive)])                   # a range of its own
        ra.lock([lock(0, 10, LockFlags.SMB2_LOCKFLAG_UNLOCK)])
        rb.lock([lock(0, 10, exclusive)])
        rb.write(b"ZZ", 2)
        with pytest.raises(SMBResponseException):            # an exclusive lock bars reads too
            ra.read(0, 4)
        rb.lock([lock(0, 10, LockFlags.SMB2_LOCKFLAG_UNLOCK)])
        assert ra.read(0, 4) == b"01ZZ"
        fa.close()
        fb.close()


def test_case_insensitive_names(gateway: Gateway) -> None:
    with Client(gateway) as client:
        with client.smb.open_file(client.path("report.docx"), "wb", **client.kw) as f:
            f.write(b"quarterly")
        with client.smb.open_file(client.path("Report.DOCX"), "rb", **client.kw) as f:
            assert f.read() == b"quarterly"
        names = client.smb.listdir(client.path(""), **client.kw)
    assert "report.docx" in names and "Report.DOCX" not in names   # case preserved


def test_long_unicode_names(gateway: Gateway) -> None:
    name = ("Überprüfung-日本語-ŝĉĥ-" * 20)[:100] + ".txt"      # up to 255 bytes in UTF-8
    assert len(name.encode()) <= 255
    with Client(gateway) as a, Client(gateway, _second(gateway)) as b:
        a.smb.mkdir(a.path("ünïcødé-dir"), **a.kw)
        with a.smb.open_file(a.path(f"ünïcødé-dir\\{name}"), "wb", **a.kw) as f:
            f.write(name.encode())
        assert b.smb.listdir(b.path("ünïcødé-dir"), **b.kw) == [name]
        with b.smb.open_file(b.path(f"ünïcødé-dir\\{name}"), "rb", **b.kw) as f:
            assert f.read() == name.encode()
    assert (gateway.mountpoint / "ünïcødé-dir" / name).exists()


def test_two_clients_see_each_others_writes_after_close(gateway: Gateway) -> None:
    with Client(gateway) as a, Client(gateway, _second(gateway)) as b:
        for round_, (writer, reader) in enumerate(((a, b), (b, a), (a, b))):
            data = f"round {round_} ".encode() * 1000
            with writer.smb.open_file(writer.path("shared.txt"), "wb", **writer.kw) as f:
                f.write(data)
            with reader.smb.open_file(reader.path("shared.txt"), "rb", **reader.kw) as f:
                assert f.read() == data


@pytest.mark.slow
def test_a_ten_thousand_file_listing(gateway: Gateway) -> None:
    big = gateway.mountpoint / "big-dir"
    big.mkdir()
    names = {f"file-{i:05d}.dat" for i in range(10_000)}
    for name in names:                     # through the mount (root): the listing is the test
        (big / name).touch()
    with Client(gateway) as client:
        assert set(client.smb.listdir(client.path("big-dir"), **client.kw)) == names
    out = smbclient_cli(gateway, "cd big-dir", "ls").stdout
    assert sum(1 for line in out.splitlines() if ".dat" in line) == 10_000


def test_a_file_over_4_gib(gateway: Gateway, tmp_path: Path) -> None:
    """Sparse: written at offsets past 4 GiB, read back there and as zeros in the hole."""
    at = 4 * 1024**3 + 12345
    tail = os.urandom(256 * 1024)
    with Client(gateway) as client:
        with client.smb.open_file(client.path("huge.bin"), "wb", **client.kw) as f:
            f.write(b"head")
            f.seek(at)
            f.write(tail)
        st = client.smb.stat(client.path("huge.bin"), **client.kw)
        assert st.st_size == at + len(tail) > 2**32
        with client.smb.open_file(client.path("huge.bin"), "rb", **client.kw) as f:
            assert f.read(4) == b"head"
            f.seek(2**32 - 10)
            assert f.read(20) == b"\0" * 20
            f.seek(at)
            assert f.read() == tail
    assert (gateway.mountpoint / "huge.bin").stat().st_size == at + len(tail)


def _second(gw: Gateway) -> tuple[str, str]:
    names = list(gw.users)
    return names[1], gw.users[names[1]]


def _smbtorture(gw: Gateway, test: str) -> subprocess.CompletedProcess:
    if shutil.which("smbtorture") is None:
        pytest.fail("smbtorture not found: apt-get install samba-testsuite")
    name, password = gw.user
    auth = gw.base / f"torture-auth-{test}"
    fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"username = {name}\npassword = {password}\n")
    return subprocess.run(["smbtorture", f"//127.0.0.1/{gw.share}", "-p", str(gw.port), "-A", str(auth),
                           "--client-protection=encrypt", test],
                          capture_output=True, text=True, timeout=300)


def test_a_lease_break_when_a_second_client_opens(gateway: Gateway) -> None:
    """smbtorture (samba-testsuite) receives the unsolicited LEASE_BREAK smbprotocol cannot."""
    result = _smbtorture(gateway, "smb2.lease.break")
    assert result.returncode == 0 and "success: break" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("test", ["smb2.oplock.exclusive1", "smb2.oplock.batch1"])
def test_an_exclusive_oplock_open_refuses_a_second_open(gateway: Gateway, test: str) -> None:
    """The second connection's smbd, working as its user, must see the first one alive
    (msg.lock/ in a lock directory it can enter), or it drops that open as stale."""
    result = _smbtorture(gateway, test)
    assert result.returncode == 0, result.stdout[-2000:]
