"""Azure Key Vault provider against the protocol-level test vault, with the real SDK and credential."""

from __future__ import annotations

import os
import time

import pytest

from sealfs.crypto.format.config import WrappedDek
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init, provider_from_config
from sealfs.crypto.keys.kms_azure import KV_ROLE, AzureKeyRef
from sealfs.errors import KeyAccessError, UsageError
from tests.servers.keyvault import BlackholeServer, KeyVaultServer
from tests.servers.ports import free_port


def _unwrap_fresh(entry: dict, res, secrets: KeySecrets) -> bytes:
    """Unwrap with a brand-new provider built from the config entry, as a later mount would."""
    p = provider_from_config(entry, secrets)
    try:
        return bytes(p.unwrap(WrappedDek(1, res.wrapped, res.algorithm, res.kek_version)).dek)
    finally:
        p.close()


def test_rsa_round_trip_uses_exact_version(keyvault: KeyVaultServer, kv_key_uri, azure_secrets) -> None:
    uri = kv_key_uri("rsa")
    p = provider_for_init(uri, azure_secrets)
    p.check()
    dek = os.urandom(32)
    res = p.wrap(dek)
    assert res.algorithm == "RSA-OAEP-256"
    name = uri.rsplit("/", 1)[1]
    assert res.kek_version == keyvault.keys[name].versions[-1].version
    assert keyvault.calls["wrapkey"] == 0          # RSA wrap runs locally with the public key
    entry = p.config_entry()
    assert entry == {"provider": "azure", "key": uri}
    p.close()
    keyvault.add_rsa_key(name)                     # the vault rotates: "latest" is now another version
    assert _unwrap_fresh(entry, res, azure_secrets) == dek
    assert keyvault.calls["unwrapkey"] == 1
    assert keyvault.calls["token"] >= 1            # a real managed-identity token was fetched


def test_hsm_oct_key_wraps_inside_the_vault(keyvault: KeyVaultServer, kv_key_uri, azure_secrets) -> None:
    """oct-HSM keys: A256KW by the vault. (The SDK would otherwise wrap with a random local key.)"""
    uri = kv_key_uri("oct")
    p = provider_for_init(uri, azure_secrets)
    p.check()
    dek = os.urandom(32)
    res = p.wrap(dek)
    assert res.algorithm == "A256KW"
    assert keyvault.calls["wrapkey"] == 1
    assert res.request_id in [rid for op, rid in keyvault.request_ids if op == "wrapkey"]
    p.close()
    assert _unwrap_fresh({"provider": "azure", "key": uri}, res, azure_secrets) == dek


def test_refuses_purgeable_key_unless_overridden(kv_key_uri, azure_secrets) -> None:
    p = provider_for_init(kv_key_uri("rsa", recovery_level="Purgeable"), azure_secrets)
    with pytest.raises(UsageError) as err:
        p.check()
    msg = str(err.value)
    assert "purgeable" in msg and "purge protection" in msg and "\n" not in msg
    p.check(allow_purgeable=True)
    p.close()


def test_refuses_disabled_and_expired_keys(kv_key_uri, azure_secrets) -> None:
    p = provider_for_init(kv_key_uri("rsa", enabled=False), azure_secrets)
    with pytest.raises(KeyAccessError, match="disabled"):
        p.check()
    with pytest.raises(KeyAccessError, match="disabled"):
        p.wrap(os.urandom(32))
    p.close()
    p = provider_for_init(kv_key_uri("rsa", exp=int(time.time()) - 60), azure_secrets)
    with pytest.raises(KeyAccessError, match="expired"):
        p.check()
    p.close()


def test_refuses_key_without_wrap_ops(kv_key_uri, azure_secrets) -> None:
    p = provider_for_init(kv_key_uri("rsa", key_ops=["encrypt", "decrypt", "wrapKey"]), azure_secrets)
    with pytest.raises(UsageError, match="does not permit unwrapKey"):
        p.check()
    p.close()


def test_403_names_the_missing_role(keyvault: KeyVaultServer, kv_key_uri, azure_secrets) -> None:
    uri = kv_key_uri("rsa")
    p = provider_for_init(uri, azure_secrets)
    res = p.wrap(os.urandom(32))
    keyvault.forbidden.add("unwrapkey")
    with pytest.raises(KeyAccessError) as err:
        p.unwrap(WrappedDek(1, res.wrapped, res.algorithm, res.kek_version))
    msg = str(err.value)
    assert KV_ROLE in msg and "unwrapKey" in msg and "403" in msg and "\n" not in msg
    keyvault.forbidden.clear()
    keyvault.forbidden.add("get")
    with pytest.raises(KeyAccessError, match=KV_ROLE):
        p.check()
    p.close()


@pytest.mark.slow
def test_429_with_retry_after_then_success(keyvault: KeyVaultServer, kv_key_uri, azure_secrets) -> None:
    p = provider_for_init(kv_key_uri("rsa"), azure_secrets)
    dek = os.urandom(32)
    res = p.wrap(dek)
    keyvault.fail_next("unwrapkey", 429, count=2, retry_after=1)
    t0 = time.monotonic()
    out = p.unwrap(WrappedDek(1, res.wrapped, res.algorithm, res.kek_version))
    assert bytes(out.dek) == dek
    assert keyvault.calls["unwrapkey"] == 3
    assert time.monotonic() - t0 >= 1.9            # Retry-After honoured
    # the retry kept the same client request id, so audit and vault logs line up
    ids = [rid for op, rid in keyvault.request_ids if op == "unwrapkey"]
    assert ids == [out.request_id] * 3
    # throttled for longer than the retry budget: one clear line, no hang
    keyvault.fail_next("unwrapkey", 429, count=10, retry_after=0)
    with pytest.raises(KeyAccessError, match="throttling"):
        p.unwrap(WrappedDek(1, res.wrapped, res.algorithm, res.kek_version))
    p.close()


def test_transient_500_is_retried(keyvault: KeyVaultServer, kv_key_uri, azure_secrets) -> None:
    p = provider_for_init(kv_key_uri("oct"), azure_secrets)
    dek = os.urandom(32)
    keyvault.fail_next("wrapkey", 503, count=1)
    res = p.wrap(dek)
    keyvault.fail_next("unwrapkey", 500, count=2)
    assert bytes(p.unwrap(WrappedDek(1, res.wrapped, res.algorithm, res.kek_version)).dek) == dek
    p.close()


def test_404_after_key_deletion(keyvault: KeyVaultServer, kv_key_uri, azure_secrets) -> None:
    uri = kv_key_uri("rsa")
    p = provider_for_init(uri, azure_secrets)
    res = p.wrap(os.urandom(32))
    keyvault.delete_key(AzureKeyRef.parse(uri).name)
    with pytest.raises(KeyAccessError, match="deleted, purged"):
        p.unwrap(WrappedDek(1, res.wrapped, res.algorithm, res.kek_version))
    p.close()


def test_unreachable_vault_fails_fast(keyvault: KeyVaultServer, azure_secrets) -> None:
    port = free_port()                              # nothing listens there (tests/servers/ports.py)
    p = provider_for_init(f"https://kv.example.test:{port}/keys/k", azure_secrets)
    t0 = time.monotonic()
    with pytest.raises(KeyAccessError, match="unreachable") as err:
        p.check()
    assert time.monotonic() - t0 < 15 and "\n" not in str(err.value)
    p.close()


@pytest.mark.slow
def test_hanging_vault_times_out(keyvault: KeyVaultServer, azure_secrets) -> None:
    hole = BlackholeServer()
    try:
        p = provider_for_init(f"https://kv.example.test:{hole.port}/keys/k", azure_secrets)
        t0 = time.monotonic()
        with pytest.raises(KeyAccessError):
            p.check()
        assert time.monotonic() - t0 < 30
        p.close()
    finally:
        hole.close()


def test_challenge_resource_check_stays_on(keyvault: KeyVaultServer, kv_key_uri, azure_secrets) -> None:
    """A host outside the challenge's resource domain is refused before any token is sent."""
    name = kv_key_uri("rsa").rsplit("/", 1)[1]
    p = provider_for_init(f"https://127.0.0.1:{keyvault.port}/keys/{name}", azure_secrets)
    tokens = keyvault.calls["token"]
    with pytest.raises(KeyAccessError, match="challenge"):
        p.check()
    assert keyvault.calls["token"] == tokens
    p.close()


def test_bad_uris() -> None:
    for bad in ("https://kv.example.test/secrets/x", "https://kv.example.test/keys/",
                "http://kv.example.test/keys/x", "https://kv.example.test/keys/a/b/c"):
        with pytest.raises(UsageError):
            AzureKeyRef.parse(bad)
    ref = AzureKeyRef.parse("https://h.managedhsm.azure.net/keys/k/v1")
    assert ref.is_managed_hsm and ref.version == "v1"


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("SEALFS_LIVE_KEYVAULT_URL"),
                    reason="set SEALFS_LIVE_KEYVAULT_URL=https://VAULT.vault.azure.net/keys/NAME to run")
def test_live_keyvault_round_trip() -> None:
    uri = os.environ["SEALFS_LIVE_KEYVAULT_URL"]
    p = provider_for_init(uri, KeySecrets())
    p.check(allow_purgeable=bool(os.environ.get("SEALFS_LIVE_ALLOW_PURGEABLE")))
    dek = os.urandom(32)
    res = p.wrap(dek)
    assert _unwrap_fresh(p.config_entry(), res, KeySecrets()) == dek
    p.close()

