"""Key broker: de-duplication, TTL of idle keys, outage behaviour, rotation, audit."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest
import trio
from azure.keyvault.keys import KeyClient

from sealfs.crypto.format.config import VolumeConfig
from sealfs.crypto.keys.audit import AuditLog
from sealfs.crypto.keys.broker import KeyBroker, harden_process, wrap_new_dek
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init, provider_from_config
from sealfs.crypto.keys.kms_azure import AzureKeyRef
from sealfs.errors import KeyAccessError
from tests.kms.conftest import point_env_at
from tests.servers.keyvault import KeyVaultServer


class FakeClock:
    """KeyBroker's clock, moved by the test: TTLs expire without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _volume(provider, n: int = 1, audit: AuditLog | None = None) -> tuple[VolumeConfig, list[bytes]]:
    """A volume config with n DEKs wrapped under provider (as init + add-dek do)."""
    first, dek = wrap_new_dek(provider, 1, audit=audit)
    cfg = VolumeConfig.new(65536, provider.config_entry(), first)
    plain = [bytes(dek)]
    for i in range(2, n + 1):
        w, d = wrap_new_dek(provider, i, audit=audit, verify=False)
        cfg.deks.append(w)
        plain.append(bytes(d))
    return cfg, plain


async def test_one_unwrap_for_a_thousand_concurrent_requests(keyvault, kv_key_uri, azure_secrets) -> None:
    provider = provider_for_init(kv_key_uri("rsa"), azure_secrets)
    cfg, plain = _volume(provider)
    keyvault.calls.clear()
    broker = KeyBroker(provider, cfg)
    results: list[bytes] = []

    async def one() -> None:
        results.append(await broker.dek(1))

    async with trio.open_nursery() as nursery:
        for _ in range(1000):
            nursery.start_soon(one)
    assert results == [plain[0]] * 1000
    assert keyvault.calls["unwrapkey"] == 1 and broker.stats.unwraps == 1
    broker.close()


async def test_failed_unwrap_reaches_every_waiter_then_retries(keyvault, kv_key_uri, azure_secrets) -> None:
    provider = provider_for_init(kv_key_uri("rsa"), azure_secrets)
    cfg, plain = _volume(provider)
    broker = KeyBroker(provider, cfg)
    keyvault.calls.clear()
    keyvault.forbidden.add("unwrapkey")
    errors: list[str] = []

    async def one() -> None:
        try:
            await broker.dek(1)
        except KeyAccessError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert len(errors) == 50 and all("Key Vault Crypto Service Encryption User" in e for e in errors)
    assert keyvault.calls["unwrapkey"] == 1
    keyvault.forbidden.clear()
    assert await broker.dek(1) == plain[0]
    broker.close()


async def test_ttl_evicts_only_idle_keys_and_zeroes_them(keyvault, kv_key_uri, azure_secrets) -> None:
    provider = provider_for_init(kv_key_uri("rsa"), azure_secrets)
    cfg, plain = _volume(provider, 2)
    keyvault.calls.clear()
    clock = FakeClock()
    broker = KeyBroker(provider, cfg, ttl=0.3, clock=clock)
    async with broker.using(1) as key:            # an open file holds DEK 1
        assert key == plain[0]
        key2 = await broker.dek(2)                # a view of the cached key, not a copy
        assert key2 == plain[1]
        clock.advance(0.2)
        assert broker.evict_expired() == 0        # within the TTL: nothing goes
        clock.advance(0.2)
        assert broker.evict_expired() == 1        # DEK 2 idle past TTL; DEK 1 in use stays
        assert broker.cached_ids() == [1]
        assert bytes(key2) == bytes(32)           # zeroed wherever sealfs handed it out
        assert await broker.dek(1) == plain[0]
    assert keyvault.calls["unwrapkey"] == 2
    clock.advance(0.2)                            # released, idle within the TTL: kept
    assert await broker.dek(1) == plain[0]
    assert keyvault.calls["unwrapkey"] == 2
    clock.advance(0.4)                            # released and idle past TTL
    assert await broker.dek(1) == plain[0]
    assert keyvault.calls["unwrapkey"] == 3
    broker.close()
    assert broker.cached_ids() == []


async def test_max_entries_drops_least_recently_used_idle(tmp_path) -> None:
    from sealfs.crypto.keys.kms_local import KeyfileKek, create_keyfile

    create_keyfile(tmp_path / "k")
    provider = KeyfileKek(tmp_path / "k")
    cfg, plain = _volume(provider, 4)
    broker = KeyBroker(provider, cfg, max_entries=2)
    await broker.acquire(1)
    for i in (2, 3, 4):
        assert await broker.dek(i) == plain[i - 1]
    assert broker.cached_ids() == [1, 4]          # 1 is in use, 4 most recent
    broker.release(1)
    broker.close()


@pytest.mark.slow
async def test_vault_outage_serves_cached_keys_until_ttl(tmp_path, monkeypatch, azure_secrets) -> None:
    server = KeyVaultServer(tmp_path / "kv2").start()   # private server: this test takes it down
    try:
        point_env_at(server, monkeypatch)
        server.add_rsa_key("outage")
        provider = provider_for_init(f"{server.url}/keys/outage", azure_secrets)
        cfg, plain = _volume(provider, 2)
        clock = FakeClock()
        broker = KeyBroker(provider, cfg, ttl=1.0, clock=clock)
        assert await broker.dek(1) == plain[0]
        server.go_down()
        t0 = time.monotonic()
        for _ in range(100):
            assert await broker.dek(1) == plain[0]
        with pytest.raises(KeyAccessError, match="unreachable|did not answer"):
            await broker.dek(2)
        assert time.monotonic() - t0 < 15
        clock.advance(1.2)
        with pytest.raises(KeyAccessError):
            await broker.dek(1)
        broker.close()
    finally:
        server.stop()


def test_rotate_kek_to_new_version_then_to_pkcs11(keyvault, kv_key_uri, azure_secrets, softhsm,
                                                  audit_path, monkeypatch) -> None:
    uri = kv_key_uri("rsa")
    ref = AzureKeyRef.parse(uri)
    audit = AuditLog()                            # from SEALFS_AUDIT_LOG
    old = provider_for_init(uri, azure_secrets)
    cfg, plain = _volume(old, 3, audit)
    audit.volume_id = cfg.volume_id.hex()
    v1 = cfg.deks[0].kek_version
    broker = KeyBroker(old, cfg, audit=audit)

    # the vault gets a new key version (created through the real SDK), and we re-wrap under it
    with KeyClient(ref.vault_url, _credential()) as kc:
        v2 = kc.create_rsa_key(ref.name, size=2048).properties.version
    new = provider_for_init(uri, azure_secrets)
    rewrapped = broker.rewrap_all(new)
    assert [d.id for d in rewrapped] == [1, 2, 3] and {d.kek_version for d in rewrapped} == {v2}
    broker.adopt(new, rewrapped)
    broker.close()
    keyvault.delete_version(ref.name, v1)         # the old version's material is gone

    fresh = KeyBroker(provider_from_config(cfg.kek, azure_secrets), cfg, audit=audit)
    assert [fresh.dek_sync(i) for i in (1, 2, 3)] == plain

    # then hold-your-own-key: move the volume to the SoftHSM AES KEK and delete the vault key
    hsm = provider_for_init(softhsm.uri("aes-kek"), KeySecrets())
    moved = fresh.rewrap_all(hsm)
    fresh.adopt(hsm, moved)
    fresh.close()
    keyvault.delete_key(ref.name)
    last = KeyBroker(provider_from_config(cfg.kek, KeySecrets()), cfg, audit=audit)
    assert cfg.kek["provider"] == "pkcs11"
    assert [last.dek_sync(i) for i in (1, 2, 3)] == plain
    last.close()
    audit.close()

    text = audit_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    ops = {line["operation"] for line in lines}
    assert {"wrap", "unwrap", "cache_miss", "rotate"} <= ops
    for line in lines:
        assert set(line) >= {"time", "operation", "provider", "kek_id", "kek_version", "dek_id",
                             "volume_id", "outcome", "latency_ms", "request_id"}
    vault_unwraps = [line for line in lines if line["operation"] == "unwrap" and line["provider"] == "azure"]
    seen = {rid for op, rid in keyvault.request_ids if op == "unwrapkey"}
    assert vault_unwraps and all(line["request_id"] in seen for line in vault_unwraps)
    assert any(line["operation"] == "rotate" and line.get("from_kek_version") == v1 for line in lines)
    _assert_no_key_material(text, plain)


def _credential():
    from azure.identity import ManagedIdentityCredential
    return ManagedIdentityCredential()


def _assert_no_key_material(text: str, keys: list[bytes]) -> None:
    low = text.lower()
    for k in keys:
        for form in (k.hex(), base64.b64encode(k).decode(), base64.urlsafe_b64encode(k).decode().rstrip("="),
                     base64.b64encode(k).decode().rstrip("=")):
            assert form.lower() not in low


def test_audit_records_failures_and_refuses_bytes(tmp_path) -> None:
    from sealfs.crypto.keys.kms_local import KeyfileKek, create_keyfile

    create_keyfile(tmp_path / "k")
    log = AuditLog(tmp_path / "a.jsonl", volume_id="v")
    provider = KeyfileKek(tmp_path / "k")
    cfg, plain = _volume(provider, 1, log)
    create_keyfile(tmp_path / "other")
    broker = KeyBroker(KeyfileKek(tmp_path / "other"), cfg, audit=log)
    with pytest.raises(KeyAccessError, match="wrong keyfile"):
        broker.dek_sync(1)
    with pytest.raises(TypeError):
        log.record("unwrap", secret=b"\x00" * 32)  # type: ignore[arg-type]
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert lines[-1]["operation"] == "unwrap" and lines[-1]["outcome"] == "error"
    assert "wrong keyfile" in lines[-1]["error"]
    assert oct((tmp_path / "a.jsonl").stat().st_mode & 0o777) == "0o600"
    _assert_no_key_material((tmp_path / "a.jsonl").read_text(), plain)


def test_wrap_new_dek_verifies_unwrap_permission(keyvault, kv_key_uri, azure_secrets) -> None:
    """RSA wrap needs only the public key; init must still prove the identity can unwrap."""
    provider = provider_for_init(kv_key_uri("rsa"), azure_secrets)
    keyvault.forbidden.add("unwrapkey")
    with pytest.raises(KeyAccessError, match="Crypto Service Encryption User"):
        wrap_new_dek(provider, 1)
    provider.close()


def test_harden_process_in_a_child() -> None:
    code = ("import ctypes; from sealfs.crypto.keys.broker import harden_process; r = harden_process(); "
            "print(r['dumpable_off'], ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["True", "0"], out.stderr
    assert callable(harden_process)
