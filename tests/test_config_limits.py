"""What a store (or a bad argument) can make a client do before anything is authenticated.

sealfs.json comes from the store and is read before its MAC can be checked: its scrypt
parameters and its nesting must not cost the client more than a legitimate volume needs.
`init` must check its arguments and the store before it creates a keyfile or a directory.
Reaching a wrong SMB address must be reported as what it is. Every case runs the CLI as a
user would and expects one line on stderr and the documented exit code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from sealfs.backends.base import BackendError
from sealfs.backends.registry import BackendOptions, open_backend
from sealfs.crypto.format.config import canonical_json
from sealfs.crypto.format.kdf import config_mac_key
from sealfs.crypto.keys.kms_local import scrypt_problem
from tests.conftest import run_sealfs
from tests.servers.ports import free_port


def assert_one_line_error(res, code: int, *needles: str) -> None:
    assert res.code == code, (res.code, res.err)
    assert len(res.err_lines) == 1 and "Traceback" not in res.err, res.err
    for needle in needles:
        assert needle in res.err, (needle, res.err)


@pytest.fixture
def keyvol(tmp_path, keyfile) -> tuple[Path, Path]:
    store = tmp_path / "store"
    res = run_sealfs("init", store, "--keyfile", keyfile, "--chunk-size", "4K")
    assert res.code == 0, res.err
    return store, keyfile


@pytest.fixture
def passvol(tmp_path) -> tuple[Path, Path]:
    store = tmp_path / "pstore"
    pf = tmp_path / "pass"
    pf.write_text("correct horse\n")
    pf.chmod(0o600)
    res = run_sealfs("init", store, "--passphrase-file", pf, "--scrypt-n", "1024", "--chunk-size", "4K")
    assert res.code == 0, res.err
    return store, pf


def edit_config(store: Path, change) -> None:
    cfg = store / "sealfs.json"
    doc = json.loads(cfg.read_text())
    change(doc)
    cfg.write_text(json.dumps(doc, indent=2))


# -- scrypt parameters from the store -------------------------------------------------------------
@pytest.mark.parametrize("n,r,p,why", [
    (1 << 21, 8, 1, "2048 MiB of memory"),        # inside the old caps (N <= 2^22): 2 GiB
    (1 << 10, 32768, 1, "4096 MiB of memory"),    # memory through r instead of N
    (1 << 17, 8, 9, "units of work"),             # 9x the default's work, small memory
    (1000, 8, 1, "not valid scrypt parameters"),  # not a power of two
    (1 << 10, 8, 0, "not valid scrypt parameters"),
])
def test_a_store_cannot_ask_for_more_scrypt_than_a_volume_needs(passvol, n, r, p, why):
    store, pf = passvol
    edit_config(store, lambda d: d["kek"]["scrypt"].update(n=n, r=r, p=p))
    res = run_sealfs("ls", store, "--passphrase-file", pf, timeout=20)
    assert_one_line_error(res, 3, "sealfs.json asks for unreasonable scrypt parameters", why)


def test_the_caps_allow_what_init_can_write_and_no_more():
    assert scrypt_problem(1 << 17, 8, 1) is None                 # the default
    assert scrypt_problem(1 << 20, 8, 1) is None                 # 1 GiB, 8x the default's work
    assert scrypt_problem(1 << 17, 8, 8) is None                 # 8x the work in 128 MiB
    assert "memory" in scrypt_problem(1 << 21, 8, 1)
    assert "memory" in scrypt_problem(1 << 20, 9, 1)
    assert "work" in scrypt_problem(1 << 17, 8, 9)
    assert "work" in scrypt_problem(2, 1, (1 << 23) + 1)


@pytest.mark.parametrize("n", ["2097152", "4194304", "1000", "1"])
def test_init_cannot_create_a_passphrase_volume_beyond_the_caps(tmp_path, n):
    store = tmp_path / "s"
    pf = tmp_path / "pass"
    pf.write_text("correct horse\n")
    pf.chmod(0o600)
    res = run_sealfs("init", store, "--passphrase-file", pf, "--scrypt-n", n, timeout=30)
    assert_one_line_error(res, 2, "--scrypt-n")
    assert not store.exists()


# -- nesting ----------------------------------------------------------------------------------------
DEEP = 100_000


@pytest.mark.parametrize("shape", ["arrays", "objects-in-kek", "nine-levels-in-a-dek"])
def test_a_deeply_nested_config_is_a_config_error(keyvol, shape):
    store, keyfile = keyvol
    cfg = store / "sealfs.json"
    if shape == "arrays":
        cfg.write_text("[" * DEEP + "]" * DEEP)
    elif shape == "objects-in-kek":
        doc = cfg.read_text()
        nested = '{"a":' * DEEP + "1" + "}" * DEEP
        cfg.write_text(doc.replace('"kek": {', f'"kek": {{"x": {nested}, ', 1))
    else:   # shallow enough for json.loads, deeper than any sealfs.json needs
        edit_config(store, lambda d: d["deks"][0].update(created=json.loads("[" * 9 + "]" * 9)))
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert_one_line_error(res, 3, "sealfs.json", "nested")


def test_a_deeply_nested_pin_file_is_a_config_error(keyvol, isolated_state):
    store, keyfile = keyvol
    pins = isolated_state / "known_volumes.json"
    pins.write_text("[" * DEEP + "]" * DEEP)
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert_one_line_error(res, 3, "pin file", "nested")


def test_a_deeply_nested_config_file_is_a_config_error(tmp_path, keyvol):
    store, keyfile = keyvol
    conf = tmp_path / "vol.toml"
    conf.write_text(f'store = "{store}"\nx = ' + "[" * DEEP + "]" * DEEP + "\n")
    res = run_sealfs("ls", "--config", conf, "--keyfile", keyfile)
    assert_one_line_error(res, 3, str(conf), "deeply")


# -- what the config MAC covers (FORMAT.md 3, THREAT_MODEL.md row 15) -----------------------------
def test_unknown_fields_are_refused_before_any_key_is_used(keyvol, tmp_path):
    store, keyfile = keyvol
    edit_config(store, lambda d: d.update(comment="harmless?"))
    # a wrong keyfile: the document is refused before the key is even tried
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    res = run_sealfs("ls", store, "--keyfile", wrong)
    assert_one_line_error(res, 3, "sealfs.json has unknown fields: comment")
    edit_config(store, lambda d: (d.pop("comment"), d["deks"][0].update(note="x")))
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert_one_line_error(res, 3, "sealfs.json has unknown fields: note")


@pytest.mark.parametrize("change", [
    lambda d: d.update(chunk_size="4096"),               # same value as a string
    lambda d: d.update(chunk_size=4096.0),               # same value as a float
    lambda d: d.update(name_dek=True),                   # 1 as a boolean
    lambda d: d["kek"].update(note="x"),                 # provider entries are opaque but MACed
    lambda d: d.update(created=d["created"] + " "),
], ids=["chunk-size-string", "chunk-size-float", "name-dek-bool", "kek-extra-field", "created"])
def test_any_change_to_a_value_fails_authentication(keyvol, change):
    store, keyfile = keyvol
    assert json.loads((store / "sealfs.json").read_text())["name_dek"] == 1
    edit_config(store, change)
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert_one_line_error(res, 4, "sealfs.json failed authentication")


def _mac_as_stored(store: Path, keyfile: Path, doc: dict) -> str:
    """What a writer holding the key would compute over the document as stored."""
    wrapped = base64.b64decode(next(d for d in doc["deks"] if d["id"] == doc["name_dek"])["wrapped"])
    names_dek = aes_key_unwrap(keyfile.read_bytes(), wrapped)
    body = {k: v for k, v in doc.items() if k != "mac"}
    return hmac.new(config_mac_key(names_dek), canonical_json(body), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("field,value", [("chunk_size", "4096"), ("chunk_size", 4096.0),
                                         ("name_dek", True)])
def test_a_value_of_another_json_type_is_refused_even_under_a_valid_mac(keyvol, field, value):
    """What is MACed is what sealfs uses: a writer holding the key cannot make them differ."""
    store, keyfile = keyvol
    doc = json.loads((store / "sealfs.json").read_text())
    doc[field] = value
    doc["mac"] = _mac_as_stored(store, keyfile, doc)
    (store / "sealfs.json").write_text(json.dumps(doc))
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert_one_line_error(res, 4, "sealfs.json failed authentication")


def test_layout_is_not_authenticated_and_changes_nothing(keyvol):
    store, keyfile = keyvol
    doc = json.loads((store / "sealfs.json").read_text())
    (store / "sealfs.json").write_text(json.dumps(dict(reversed(list(doc.items()))), ensure_ascii=False))
    res = run_sealfs("info", store, "--keyfile", keyfile)
    assert res.code == 0, res.err
    assert "chunk size:   4K" in res.text


# -- init validates first and leaves nothing behind -----------------------------------------------
@pytest.mark.parametrize("text", ["3000", "8M", "1K", "banana", "-4K"])
def test_init_with_a_bad_chunk_size_is_a_usage_error_and_creates_nothing(tmp_path, text):
    store, key = tmp_path / "s", tmp_path / "new.key"
    res = run_sealfs("init", store, "--keyfile", key, f"--chunk-size={text}")
    assert_one_line_error(res, 2, "--chunk-size")
    assert not store.exists() and not key.exists()


def test_init_of_an_existing_volume_creates_no_keyfile(keyvol, tmp_path):
    store, _keyfile = keyvol
    key = tmp_path / "other.key"
    res = run_sealfs("init", store, "--keyfile", key)
    assert_one_line_error(res, 2, "already holds a sealfs volume")
    assert not key.exists()


def test_init_into_a_store_it_cannot_create_leaves_no_keyfile(tmp_path):
    key = tmp_path / "new.key"
    res = run_sealfs("init", "/proc/sealfs-no-such-dir/store", "--keyfile", key)
    assert res.code == 1 and len(res.err_lines) == 1 and "Traceback" not in res.err, res.err
    assert not key.exists()


# -- SMB addresses that are not SMB servers -------------------------------------------------------
@pytest.fixture
def tcp_listener() -> Iterator[tuple[int, list]]:
    """A TCP port on 127.0.0.1 that accepts and then does what `behaviour[0]` says."""
    behaviour = ["close"]
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if behaviour[0] == "close":
                conn.close()
            else:
                held.append(conn)      # silent: never answers

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], behaviour
    server.close()
    for conn in held:
        conn.close()


def smb_ls(host_port: str, keyfile: Path):
    return run_sealfs("ls", f"smb://user@{host_port}/share/store", "--keyfile", keyfile,
                      env={"SEALFS_SMB_PASSWORD": "x"})


def test_an_unknown_smb_host_is_reported_as_a_name_resolution_failure(keyfile):
    res = smb_ls("nosuchhost.invalid", keyfile)
    assert_one_line_error(res, 1, "nosuchhost.invalid:445", "cannot resolve the host name")
    assert "dialect" not in res.err


def test_a_closed_smb_port_is_reported_as_connection_refused(keyfile):
    port = free_port()            # nothing listens there (tests/servers/ports.py)
    res = smb_ls(f"127.0.0.1:{port}", keyfile)
    assert_one_line_error(res, 1, f"127.0.0.1:{port}", "connection refused")
    assert "dialect" not in res.err


@pytest.mark.slow
def test_a_port_that_closes_without_answering_is_not_a_dialect_problem(keyfile, tcp_listener):
    port, _behaviour = tcp_listener
    res = smb_ls(f"127.0.0.1:{port}", keyfile)
    assert_one_line_error(res, 1, f"127.0.0.1:{port}", "cannot reach SMB server", "no SMB reply")
    assert "dialect" not in res.err


@pytest.mark.slow
def test_init_on_an_unreachable_smb_store_creates_no_keyfile(tmp_path):
    key = tmp_path / "new.key"
    port = free_port()            # nothing listens there (tests/servers/ports.py)
    res = run_sealfs("init", f"smb://user@127.0.0.1:{port}/share/store", "--keyfile", key,
                     env={"SEALFS_SMB_PASSWORD": "x"})
    assert_one_line_error(res, 1, "connection refused")
    assert not key.exists()


@pytest.mark.slow
async def test_a_silent_smb_port_is_reported_as_no_reply_within_the_timeout(tcp_listener):
    port, behaviour = tcp_listener
    behaviour[0] = "silent"
    backend = open_backend(f"smb://user@127.0.0.1:{port}/share/store",
                           BackendOptions(smb_password=lambda: "x", extra={"smb_connect_timeout": 1}))
    with pytest.raises(BackendError) as info:
        await backend.connect()
    await backend.aclose()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "no SMB reply" in message, message
    assert "dialect" not in message and "\n" not in message


def test_init_over_smb_checks_the_store_before_it_creates_a_keyfile(samba, tmp_path):
    from tests.servers.samba import new_store
    store = new_store(samba)
    url = f"{store.url}/not/yet"          # init creates the missing directories
    env = {"SEALFS_SMB_PASSWORD": samba.password}
    first, second = tmp_path / "first.key", tmp_path / "second.key"
    res = run_sealfs("init", url, "--keyfile", first, "--chunk-size", "4K", env=env)
    assert res.code == 0 and first.exists(), res.err
    assert (store.local / "not" / "yet" / "sealfs.json").exists()
    res = run_sealfs("init", url, "--keyfile", second, env=env)
    assert_one_line_error(res, 2, "already holds a sealfs volume")
    assert not second.exists()
