"""PKCS#11 provider against real SoftHSM2 tokens made by softhsm2-util and pkcs11-tool."""

from __future__ import annotations

import os

import pkcs11
import pytest
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from sealfs.crypto.format.config import WrappedDek
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init, provider_from_config
from sealfs.errors import KeyAccessError, UsageError


@pytest.mark.parametrize("obj,mechanism,expect", [
    ("aes-kek", None, "CKM_AES_KEY_WRAP_PAD"),
    ("aes-kek", "CKM_AES_KEY_WRAP", "CKM_AES_KEY_WRAP"),
    ("rsa-kek", None, "CKM_RSA_PKCS_OAEP-SHA1"),
])
def test_round_trip_each_mechanism(softhsm, obj: str, mechanism: str | None, expect: str) -> None:
    opts = {"pkcs11_mechanism": mechanism} if mechanism else {}
    p = provider_for_init(softhsm.uri(obj), KeySecrets(options=opts))
    p.check()
    dek = os.urandom(32)
    res = p.wrap(dek)
    assert res.algorithm == expect and dek not in res.wrapped
    entry = p.config_entry()
    assert entry["mechanism"] == expect and softhsm.pin not in str(entry)
    p.close()
    q = provider_from_config(entry, KeySecrets())
    assert bytes(q.unwrap(WrappedDek(1, res.wrapped, res.algorithm)).dek) == dek
    # a later add-dek uses the recorded mechanism
    assert q.wrap(os.urandom(32)).algorithm == expect
    q.close()


def test_wrong_pin_is_one_line(softhsm) -> None:
    with pytest.raises(KeyAccessError) as err:
        provider_for_init(softhsm.uri("aes-kek", pin_file=softhsm.wrong_pin_file), KeySecrets())
    msg = str(err.value)
    assert "rejected the PIN" in msg and "\n" not in msg and "00000000" not in msg


def test_pin_from_environment_and_never_in_uri(softhsm, monkeypatch) -> None:
    monkeypatch.setenv("SEALFS_PKCS11_PIN", softhsm.pin)
    uri = f"pkcs11:token={softhsm.token};object=aes-kek?module-path={softhsm.module}"
    p = provider_for_init(uri, KeySecrets())
    dek = os.urandom(32)
    assert bytes(p.unwrap(WrappedDek(1, p.wrap(dek).wrapped, "CKM_AES_KEY_WRAP_PAD")).dek) == dek
    p.close()
    with pytest.raises(UsageError, match="pin-value"):
        provider_for_init(uri + "&pin-value=1234", KeySecrets())


def test_missing_pin_and_missing_key(softhsm, monkeypatch) -> None:
    monkeypatch.delenv("SEALFS_PKCS11_PIN", raising=False)
    with pytest.raises(KeyAccessError, match="needs a PIN"):
        provider_for_init(f"pkcs11:token={softhsm.token};object=aes-kek?module-path={softhsm.module}",
                          KeySecrets())
    with pytest.raises(KeyAccessError, match="no KEK"):
        provider_for_init(softhsm.uri("no-such-key"), KeySecrets())


def test_extractable_kek_is_refused(softhsm) -> None:
    p = provider_for_init(softhsm.uri("weak-aes"), KeySecrets())
    with pytest.raises(UsageError, match="can leave the token"):
        p.check()
    p.check(allow_purgeable=True)
    p.close()


def test_wrong_kek_cannot_unwrap(softhsm) -> None:
    a = provider_for_init(softhsm.uri("aes-kek"), KeySecrets())
    w = provider_for_init(softhsm.uri("weak-aes"), KeySecrets())   # same token: shared session
    res = a.wrap(os.urandom(32))
    with pytest.raises(KeyAccessError, match="wrong key or damaged"):
        w.unwrap(WrappedDek(7, res.wrapped, res.algorithm))
    w.close()                                   # closing one provider keeps the other's login
    assert len(a.unwrap(WrappedDek(7, res.wrapped, res.algorithm)).dek) == 32
    a.close()


def test_non_extractable_kek_cannot_be_read(softhsm) -> None:
    provider_for_init(softhsm.uri("aes-kek"), KeySecrets()).close()   # loads the library once
    try:
        lib = pkcs11.lib(softhsm.module)
        token = lib.get_token(token_label=softhsm.token)
        with token.open(user_pin=softhsm.pin) as s:
            kek = s.get_key(label="aes-kek", object_class=ObjectClass.SECRET_KEY)
            assert kek[Attribute.EXTRACTABLE] is False and kek[Attribute.SENSITIVE] is True
            with pytest.raises(p11e.AttributeSensitive):
                kek[Attribute.VALUE]
            other = s.get_key(label="weak-aes", object_class=ObjectClass.SECRET_KEY)
            with pytest.raises((p11e.KeyUnextractable, p11e.KeyNotWrappable)):
                other.wrap_key(kek, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    except p11e.UserAlreadyLoggedIn:
        pytest.skip("token already logged in by this process")
