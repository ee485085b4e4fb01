"""`sealfs gateway`: what clients and the store see, what is refused, and supervision."""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import need_smbd
from tests.servers.gateway import Client, Gateway, smbclient_cli
from tests.servers.pcap import PacketCapture, assert_all_encrypted_after_setup

MARKER = b"SEALFS-GW-MARKER-0ddba11"
NAME = "gw-marker-name-kq"


def test_clients_read_and_write_encrypted_and_nothing_plain_on_the_wire_or_in_the_store(
        tmp_path: Path, gateway: Gateway) -> None:
    payload = (MARKER + os.urandom(64)) * 20_000            # ~1.8 MB, marker everywhere
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    pcap = tmp_path / "wire.pcap"
    with PacketCapture(gateway.port, pcap):
        smbclient_cli(gateway, f"mkdir {NAME}", f"put {local} {NAME}\\{NAME}.txt")
        with Client(gateway) as client:
            with client.smb.open_file(client.path(f"{NAME}\\{NAME}.txt"), "rb", **client.kw) as f:
                assert f.read() == payload
            with client.smb.open_file(client.path(f"{NAME}\\second-{NAME}"), "wb", **client.kw) as f:
                f.write(payload)
        back = tmp_path / "back.bin"
        smbclient_cli(gateway, f"get {NAME}\\second-{NAME} {back}")
        assert back.read_bytes() == payload
    raw = pcap.read_bytes()
    assert len(raw) > 3 * len(payload)
    for needle in (MARKER, NAME.encode(), NAME.encode("utf-16-le")):
        assert needle not in raw
    assert_all_encrypted_after_setup(pcap, gateway.port, connections=3)
    found = 0
    for path in gateway.store.rglob("*"):
        assert NAME not in path.name
        if path.is_file():
            found += 1
            assert MARKER not in path.read_bytes()
    assert found > 3
    # smbd kept the NT ACL and DOS attributes in xattrs, which sealfs sealed: none in the store
    out = subprocess.run(["getfattr", "-R", "-d", "-m", "-", str(gateway.store)],
                         capture_output=True, text=True)
    assert "NTACL" not in out.stdout and "DOSATTRIB" not in out.stdout


def test_the_generated_config_requires_encryption_and_serves_one_share(gateway: Gateway) -> None:
    conf = (gateway.state_dir / "smb.conf").read_text()
    for line in ("server smb encrypt = required", "server min protocol = SMB3_00",
                 "server signing = mandatory", "map to guest = Never", "restrict anonymous = 2",
                 "kernel oplocks = no", "kernel share modes = no", "vfs objects = acl_xattr",
                 "store dos attributes = yes", "hosts allow = 127.0.0.1 ::1",
                 "server smb3 encryption algorithms = AES-256-GCM"):
        assert line in conf
    assert conf.count("\n[") == 2            # [global] and the share
    assert stat.S_IMODE(os.stat(gateway.state_dir).st_mode) == 0o700
    out = smbclient_cli(gateway, "ls").stdout
    assert "blocks" in out
    listing = subprocess.run(["smbclient", "-L", "127.0.0.1", "-p", str(gateway.port), "-N"],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode != 0            # no anonymous share listing


def test_smbclient_asking_for_signing_only_is_made_to_encrypt(tmp_path: Path, gateway: Gateway) -> None:
    """Samba's client obeys the server's SESSION_FLAG_ENCRYPT_DATA even when told
    --client-protection=sign: it works, and everything after session setup is encrypted."""
    pcap = tmp_path / "sign.pcap"
    with PacketCapture(gateway.port, pcap):
        result = smbclient_cli(gateway, f"mkdir {NAME}-sign", extra=("--client-protection=sign",))
    assert result.returncode == 0
    raw = pcap.read_bytes()
    assert NAME.encode("utf-16-le") not in raw
    assert_all_encrypted_after_setup(pcap, gateway.port, connections=1)


@pytest.mark.parametrize("client", ["smbprotocol-encrypt-false", "sends-plain-tree-connect"])
def test_a_client_that_will_not_encrypt_is_refused(gateway: Gateway, client: str) -> None:
    """smbprotocol with encrypt=False still obeys the server's flag; a client that really
    sends its TREE_CONNECT in the clear (the flag ignored) gets ACCESS_DENIED."""
    import uuid

    from smbprotocol.connection import Connection
    from smbprotocol.exceptions import AccessDenied
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect
    conn = Connection(uuid.uuid4(), "127.0.0.1", gateway.port)
    conn.connect()
    try:
        name, password = gateway.user
        session = Session(conn, name, password, require_encryption=False)
        session.connect()
        assert session.encrypt_data                 # the server demanded it
        tree = TreeConnect(session, rf"\\127.0.0.1\{gateway.share}")
        if client == "smbprotocol-encrypt-false":
            tree.connect()
            assert tree.encrypt_data or session.encrypt_data
            tree.disconnect()
            return
        session.encrypt_data = False                # a client that will not encrypt
        with pytest.raises(AccessDenied):
            tree.connect()
        session.encrypt_data = True                 # so that the logoff is accepted
    finally:
        conn.disconnect()


def test_aes_256_gcm_is_negotiated(gateway: Gateway) -> None:
    import uuid

    from smbprotocol.connection import Connection
    from smbprotocol.session import Session
    conn = Connection(uuid.uuid4(), "127.0.0.1", gateway.port)
    conn.connect()
    try:
        name, password = gateway.user
        session = Session(conn, name, password, require_encryption=True)
        session.connect()
        assert conn.dialect == 0x0311 and conn.cipher_id == 0x0004    # AES-256-GCM
        session.disconnect()
    finally:
        conn.disconnect()


@pytest.mark.parametrize("how", ["guest", "anonymous", "wrong-password"])
def test_guest_anonymous_and_a_wrong_password_are_refused(gateway: Gateway, how: str) -> None:
    name, password = gateway.user
    user = {"guest": ("guest", ""), "anonymous": ("", ""),
            "wrong-password": (name, password + "x")}[how]
    result = smbclient_cli(gateway, "ls", user=user, check=False)
    assert result.returncode != 0
    assert "LOGON_FAILURE" in result.stdout + result.stderr or "ACCESS_DENIED" in result.stdout


@pytest.mark.parametrize("protocol", ["NT1", "SMB2_02", "SMB2_10"])
def test_smb1_and_smb2_are_refused(gateway: Gateway, protocol: str) -> None:
    result = smbclient_cli(gateway, "ls", check=False,
                           extra=("--option=client min protocol=NT1",
                                  f"--option=client max protocol={protocol}"))
    assert result.returncode != 0
    assert "NT_STATUS_" in result.stdout + result.stderr


def test_smbprotocol_offering_smb_2_1_is_refused(gateway: Gateway) -> None:
    import uuid

    from smbprotocol.connection import Connection, Dialects
    conn = Connection(uuid.uuid4(), "127.0.0.1", gateway.port)
    with pytest.raises(Exception):             # noqa: B017 (refused at negotiate, however worded)
        conn.connect(dialect=Dialects.SMB_2_1_0)
    conn.disconnect()


def _fresh_gateway() -> Gateway:
    need_smbd()
    return Gateway(users=1)


def test_killing_the_mount_stops_smbd_and_nothing_lands_in_the_bare_mount_point(tmp_path: Path) -> None:
    with _fresh_gateway() as gw:
        smbclient_cli(gw, "mkdir before")
        with Client(gw) as client:
            f = client.smb.open_file(client.path("open-while-killed"), "wb", **client.kw)
            f.write(b"x" * 1000)
            smbd = gw.smbd_pid()
            assert smbd is not None
            os.kill(gw.mount_pid(), signal.SIGKILL)
            assert gw.proc is not None
            assert gw.proc.wait(30) == 1
            assert "the sealfs mount exited" in gw.log_text()
            with pytest.raises(Exception):  # noqa: B017 (the connection is gone)
                f.write(b"y" * 1000)
                f.close()
        assert not os.path.exists(f"/proc/{smbd}")
        result = smbclient_cli(gw, "put /etc/hostname after", check=False)
        assert result.returncode != 0
        assert not os.path.ismount(gw.mountpoint)
        assert os.listdir(gw.mountpoint) == []
        st = os.stat(gw.mountpoint)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0)


def test_smbd_running_without_the_mount_refuses_the_tree_connect(tmp_path: Path) -> None:
    """The share's `root preexec` refuses a connect when the path is not the mount (the
    second line of defence behind stopping smbd)."""
    with _fresh_gateway() as gw:
        conf = gw.state_dir / "smb.conf"
        log = gw.base / "bare-smbd.log"
        gw.stop()
        assert not os.path.ismount(gw.mountpoint)
        with open(log, "wb") as out:
            smbd = subprocess.Popen(["smbd", "--foreground", "--no-process-group",
                                     f"--configfile={conf}"], stdout=out, stderr=out,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            result = None
            while time.monotonic() < deadline:
                result = smbclient_cli(gw, "put /etc/hostname planted", check=False)
                if "CONNECTION_REFUSED" not in result.stdout + result.stderr:
                    break
                time.sleep(0.1)
            assert result is not None and result.returncode != 0
            assert "ACCESS_DENIED" in result.stdout + result.stderr
            assert os.listdir(gw.mountpoint) == []
        finally:
            os.killpg(smbd.pid, signal.SIGKILL)
            smbd.wait()


def test_killing_smbd_restarts_it_and_clients_reconnect(tmp_path: Path) -> None:
    with _fresh_gateway() as gw:
        smbclient_cli(gw, "put /etc/hostname one")
        with Client(gw) as client:
            client.smb.listdir(client.path(""), **client.kw)
            old = gw.smbd_pid()
            assert old is not None
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while gw.smbd_pid() in (None, old):
                assert time.monotonic() < deadline, gw.log_text()
                time.sleep(0.05)
            gw.wait_listening()
            assert "smbd exited with status" in gw.log_text()
            client.close()
        with Client(gw) as again:
            assert "one" in again.smb.listdir(again.path(""), **again.kw)
        smbclient_cli(gw, "put /etc/hostname two")
        assert gw.stop() == 0


def test_sigterm_stops_smbd_then_flushes_and_unmounts(tmp_path: Path) -> None:
    with _fresh_gateway() as gw:
        data = os.urandom(3 * 1024 * 1024)
        with Client(gw) as client, client.smb.open_file(client.path("big"), "wb", **client.kw) as f:
            f.write(data)
        smbd = gw.smbd_pid()
        assert gw.stop() == 0
        assert smbd is not None and not os.path.exists(f"/proc/{smbd}")
        assert not os.path.ismount(gw.mountpoint)
        out = subprocess.run([*_sealfs(), "cat", str(gw.store), "/big", "--keyfile", str(gw.keyfile)],
                             env=gw.env, capture_output=True, timeout=120)
        assert out.returncode == 0 and out.stdout == data


def _sealfs() -> list[str]:
    from tests.mounting import SEALFS
    return SEALFS


def test_users_list_and_remove(tmp_path: Path) -> None:
    need_smbd()
    gw = Gateway(users=2)
    try:
        names = sorted(gw.users)
        listed = gw.users_cmd("list").stdout.decode().split()
        assert listed == names
        for name in names:
            entry = subprocess.run(["getent", "passwd", name], capture_output=True, text=True).stdout
            assert entry.rstrip().endswith(":/usr/sbin/nologin")
        gw.users_cmd("remove", names[0])
        assert gw.users_cmd("list").stdout.decode().split() == names[1:]
        assert subprocess.run(["getent", "passwd", names[0]]).returncode != 0
        # no password in argv: the command line takes none
        bad = gw.users_cmd("add", "gwextra", "--password", "x", check=False)
        assert bad.returncode == 2
    finally:
        gw.close()


def test_force_user_owns_every_file_whoever_writes(tmp_path: Path) -> None:
    """With force_user every SMB user works as that one account: what any of them writes
    is owned by it on the volume; each still authenticates with their own password."""
    need_smbd()
    owner = "gwown" + secrets.token_hex(3)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", owner],
                   check=True)
    gw = Gateway(users=2, force_user=owner)
    try:
        gw.start()
        local = tmp_path / "f.txt"
        local.write_bytes(b"forced")
        for i, user in enumerate(gw.users.items()):
            smbclient_cli(gw, f"put {local} by{i}.txt", user=user)
        uid = pwd.getpwnam(owner).pw_uid
        for i in range(2):
            st = os.stat(gw.mountpoint / f"by{i}.txt")
            assert st.st_uid == uid, (i, st.st_uid, uid)
        bad = smbclient_cli(gw, "ls", user=(next(iter(gw.users)), "wrong"), check=False)
        assert bad.returncode != 0
    finally:
        gw.close()
        subprocess.run(["userdel", owner], capture_output=True)
