"""Volumes whose KEK lives in Key Vault or a PKCS#11 HSM, end to end through the CLI and a mount.

The vault is the protocol-level test server (real SDK, real credential class, real
RSA-OAEP-256); the HSM is a real SoftHSM2 token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.mounting import Mount, sealfs


@pytest.fixture
def env(tmp_path: Path, keyvault) -> dict:
    """The environment a sealfs subprocess needs to reach the test vault."""
    e = dict(os.environ)
    e["SEALFS_STATE_DIR"] = str(tmp_path / "state")
    e["SEALFS_RUN_DIR"] = str(tmp_path / "run")
    e["SEALFS_AUDIT_LOG"] = str(tmp_path / "audit.jsonl")
    return e


def _audit(env: dict) -> list[dict]:
    path = Path(env["SEALFS_AUDIT_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_key_vault_volume_mount_makes_one_unwrap_for_thousands_of_opens(tmp_path, env, keyvault,
                                                                         kv_key_uri):
    uri = kv_key_uri("rsa")
    store = tmp_path / "store"
    sealfs("init", str(store), "--kek", uri, env=env)
    cfg = json.loads((store / "sealfs.json").read_text())
    assert cfg["kek"]["provider"] == "azure" and cfg["deks"][0]["algorithm"] == "RSA-OAEP-256"
    keyvault.calls.clear()
    mount = Mount(store, tmp_path / "mnt", keyfile=None, env=env)
    mount.start()
    try:
        for i in range(300):
            (mount.mountpoint / f"f{i}").write_bytes(f"file {i}".encode())
        for _round in range(10):
            for i in range(300):
                assert (mount.mountpoint / f"f{i}").read_bytes() == f"file {i}".encode()
    finally:
        mount.stop()
    assert keyvault.calls["unwrapkey"] == 1, keyvault.calls
    ops = [line["operation"] for line in _audit(env)]
    assert ops.count("unwrap") >= 1
    assert all("dek" not in k.lower() or k == "dek_id" for line in _audit(env) for k in line)


def test_purgeable_disabled_and_wrong_ops_keys_are_refused_at_init(tmp_path, env, kv_key_uri):
    cases = {
        "purg": (kv_key_uri("rsa", recovery_level="Purgeable"), "purge"),
        "off": (kv_key_uri("rsa", enabled=False), "disabled"),
        "ops": (kv_key_uri("rsa", key_ops=["encrypt", "decrypt"]), "wrapKey"),
    }
    for name, (uri, word) in cases.items():
        store = tmp_path / name
        result = sealfs("init", str(store), "--kek", uri, env=env, check=False)
        err = result.stderr.decode()
        assert result.returncode != 0 and word.lower() in err.lower(), err
        assert err.strip().count("\n") == 0
        assert not (store / "sealfs.json").exists()
    ok = sealfs("init", str(tmp_path / "override"), "--kek", cases["purg"][0],
                "--allow-purgeable-kek", env=env)
    assert ok.returncode == 0


def test_throttled_vault_is_retried_and_mount_succeeds(tmp_path, env, keyvault, kv_key_uri):
    uri = kv_key_uri("rsa")
    store = tmp_path / "store"
    sealfs("init", str(store), "--kek", uri, env=env)
    (tmp_path / "x").write_text("payload")
    keyvault.fail_next("unwrapkey", 429, count=2, retry_after=1)
    sealfs("put", str(store), str(tmp_path / "x"), "/x", env=env)
    assert sealfs("cat", str(store), "/x", env=env).stdout == b"payload"


def test_unreachable_vault_is_a_clear_error_not_a_hang(tmp_path, env, keyvault_server, kv_key_uri):
    uri = kv_key_uri("rsa")
    store = tmp_path / "store"
    sealfs("init", str(store), "--kek", uri, env=env)
    keyvault_server.go_down()
    try:
        result = sealfs("ls", str(store), env=env, check=False, timeout=200)
    finally:
        keyvault_server.start()
    assert result.returncode == 5, result.stderr
    assert result.stderr.decode().strip().count("\n") == 0


def test_rotate_kek_to_a_new_version_then_old_version_deleted_reads_everything(
        tmp_path, env, keyvault, kv_key_uri):
    uri = kv_key_uri("rsa")
    name = uri.rsplit("/", 1)[1]
    store = tmp_path / "store"
    sealfs("init", str(store), "--kek", uri, env=env)
    files = {f"/f{i}": os.urandom(1000 * i + 1) for i in range(5)}
    for path, data in files.items():
        local = tmp_path / "src"
        local.write_bytes(data)
        sealfs("put", str(store), str(local), path, env=env)
    old_version = keyvault.keys[name].versions[-1].version
    keyvault.add_rsa_key(name)                 # a new key version
    new_version = keyvault.keys[name].versions[-1].version
    sealfs("keys", "rotate-kek", str(store), "--to", uri, env=env)
    cfg = json.loads((store / "sealfs.json").read_text())
    assert {d["kek_version"] for d in cfg["deks"]} == {new_version}
    keyvault.delete_version(name, old_version)
    for path, data in files.items():
        assert sealfs("cat", str(store), path, env=env).stdout == data
    assert any(line["operation"] == "rotate" for line in _audit(env))


def test_add_dek_then_rekey_leaves_no_file_on_the_old_dek(tmp_path, env, keyvault, kv_key_uri):
    uri = kv_key_uri("rsa")
    store = tmp_path / "store"
    sealfs("init", str(store), "--kek", uri, env=env)
    sealfs("mkdir", str(store), "/d", env=env)
    for i in range(4):
        (tmp_path / "src").write_bytes(os.urandom(70_000 * i + 5))
        sealfs("put", str(store), str(tmp_path / "src"), f"/d/f{i}", env=env)
    sealfs("keys", "add-dek", str(store), env=env)
    before = sealfs("keys", "list", str(store), env=env).stdout.decode()
    assert "DEK 1:" in before and "4 files" in before
    out = sealfs("rekey", str(store), env=env).stdout.decode()
    assert "re-sealed 4 files" in out
    after = sealfs("keys", "list", str(store), env=env).stdout.decode()
    assert "DEK 1: " in after and " 0 files" in after.split("DEK 2")[0]
    assert "4 files (current)" in after


def test_pkcs11_volume_round_trip_and_wrong_pin(tmp_path, softhsm, monkeypatch):
    env = dict(os.environ, SEALFS_STATE_DIR=str(tmp_path / "state"), SOFTHSM2_CONF=str(softhsm.conf))
    store = tmp_path / "store"
    sealfs("init", str(store), "--kek", softhsm.uri("aes-kek"), env=env)
    cfg = json.loads((store / "sealfs.json").read_text())
    assert cfg["kek"]["provider"] == "pkcs11"
    (tmp_path / "x").write_bytes(b"hsm-protected")
    sealfs("put", str(store), str(tmp_path / "x"), "/x", env=env)
    assert sealfs("cat", str(store), "/x", env=env).stdout == b"hsm-protected"
    # A wrong PIN is one clear line, never the PIN itself, and creates nothing.
    other = tmp_path / "other"
    result = sealfs("init", str(other), "--kek", softhsm.uri("aes-kek", pin_file=softhsm.wrong_pin_file),
                    env=env, check=False)
    assert result.returncode == 5, result.stderr
    assert b"00000000" not in result.stderr and result.stderr.decode().strip().count("\n") == 0
    assert not (other / "sealfs.json").exists()
