"""Double encryption on the wire: what a mount sends to an SMB server, captured with tcpdump."""

from __future__ import annotations

import os
from pathlib import Path

from tests.mounting import Mount, init_store
from tests.servers.pcap import PacketCapture, assert_all_encrypted_after_setup
from tests.servers.samba import new_store

MARKER = b"SEALFS-WIRE-MARKER-51c0ffee"
NAME = "wire-marker-name-qz"


def test_nothing_plain_on_the_wire_or_on_the_share(tmp_path: Path, keyfile: Path, mount_env: dict,
                                                  samba):
    store = new_store(samba)
    env = dict(mount_env, SEALFS_SMB_PASSWORD=samba.password)
    init_store(store.url, keyfile, "64K", env=env)
    payload = (MARKER + os.urandom(100)) * 20_000          # ~2.5 MB, marker everywhere
    pcap = tmp_path / "wire.pcap"
    with PacketCapture(samba.port, pcap):
        mount = Mount(store.url, tmp_path / "mnt", keyfile, env=env).start()
        try:
            (mount.mountpoint / NAME).mkdir()
            (mount.mountpoint / NAME / (NAME + ".txt")).write_bytes(payload)
            mount.remount()
            assert (mount.mountpoint / NAME / (NAME + ".txt")).read_bytes() == payload
        finally:
            mount.stop()
    raw = pcap.read_bytes()
    assert len(raw) > len(payload)                         # the data crossed the wire
    for needle in (MARKER, NAME.encode(), NAME.encode("utf-16-le")):
        assert needle not in raw
    assert_all_encrypted_after_setup(pcap, samba.port, connections=2)
    for path in store.local.rglob("*"):
        assert NAME not in path.name
        if path.is_file():
            assert MARKER not in path.read_bytes()


def test_info_reports_the_negotiated_cipher(tmp_path: Path, keyfile: Path, mount_env: dict, samba):
    from tests.mounting import sealfs
    store = new_store(samba)
    env = dict(mount_env, SEALFS_SMB_PASSWORD=samba.password)
    init_store(store.url, keyfile, "64K", env=env)
    out = sealfs("info", store.url, "--keyfile", str(keyfile), env=env).stdout.decode()
    assert "transport:" in out and "SMB 3.1.1" in out and "AES-256-GCM" in out
