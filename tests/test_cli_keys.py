"""Keys through the CLI: wrong keys change nothing, key-source precedence
(fs/cli/keysource.py), passphrase volumes, and secrets that never reach stdout/stderr."""

from __future__ import annotations

import base64
import json
import os

import pytest
import trio

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.config import WrappedDek
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.crypto.keys.kms_local import KeyfileKek
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.conftest import run_sealfs, tree_snapshot

PASSPHRASE = "correct horse battery staple 9431"
WRONG_PASSPHRASE = "correct horse battery stapler 9431"


@pytest.fixture
def key_volume(tmp_path, keyfile):
    """A keyfile volume with /hello and /dir (built in-process: fast)."""
    store = tmp_path / "kstore"
    store.mkdir()

    async def main():
        secrets = KeySecrets(keyfile=keyfile)
        await Volume.init(LocalBackend(store), provider_for_init(None, secrets), chunk_size=4096,
                          pins=PinStore())
        vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
        await vol.write_file("hello", b"hello keys")
        await vol.mkdir("dir")
        await vol.close()
    trio.run(main)
    src = tmp_path / "plain.txt"
    src.write_bytes(b"hello keys")
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)  # secret files: owner only (or they are refused)
    return store, keyfile, wrong, src


@pytest.fixture
def pass_volume(tmp_path):
    store = tmp_path / "pstore"
    pf = tmp_path / "pass.txt"
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)  # secret files: owner only (or they are refused)
    wrong = tmp_path / "wrong-pass.txt"
    wrong.write_text(WRONG_PASSPHRASE + "\n")
    wrong.chmod(0o600)  # secret files: owner only (or they are refused)
    res = run_sealfs("init", store, "--passphrase-file", pf, "--scrypt-n", "1024", "--chunk-size", "4K")
    assert res.code == 0, res.err
    cfg = json.loads((store / "sealfs.json").read_text())
    assert cfg["kek"]["provider"] == "passphrase" and cfg["kek"]["scrypt"]["n"] == 1024
    return store, pf, wrong


def assert_key_error(res, *needles: str) -> None:
    assert res.code == 5, (res.code, res.err)
    assert res.out == b""
    assert len(res.err_lines) == 1 and "Traceback" not in res.err, res.err
    for needle in needles:
        assert needle in res.err, (needle, res.err)


@pytest.mark.slow
def test_a_wrong_keyfile_fails_with_exit_5_and_writes_nothing(key_volume, tmp_path):
    store, keyfile, wrong, src = key_volume
    before = tree_snapshot(store)
    commands = [("info", store), ("ls", store), ("cat", store, "/hello"), ("put", store, src, "/new"),
                ("mkdir", store, "/d2"), ("rm", store, "/hello"), ("mv", store, "/hello", "/x"),
                ("get", store, "/hello", tmp_path / "out"), ("rm", store, "-r", "/dir")]
    for cmd in commands:
        res = run_sealfs(*cmd, "--keyfile", wrong)
        assert_key_error(res, "wrong keyfile")
        assert str(wrong) in res.err
    assert tree_snapshot(store) == before
    assert not (tmp_path / "out").exists()
    assert run_sealfs("cat", store, "/hello", "--keyfile", keyfile).out == b"hello keys"


@pytest.mark.parametrize("content,needle", [(os.urandom(31), "32 bytes"), (os.urandom(33), "32 bytes"),
                                            (None, "does not exist")],
                         ids=["31-bytes", "33-bytes", "missing"])   # the same ids in every xdist worker
def test_a_malformed_or_missing_keyfile_is_a_clear_key_error(key_volume, tmp_path, content, needle):
    store = key_volume[0]
    before = tree_snapshot(store)
    bad = tmp_path / "bad.key"
    if content is not None:
        bad.write_bytes(content)
        bad.chmod(0o600)  # secret files: owner only (or they are refused)
    assert_key_error(run_sealfs("ls", store, "--keyfile", bad), needle)
    assert tree_snapshot(store) == before


@pytest.mark.slow
def test_a_wrong_passphrase_fails_with_exit_5_and_writes_nothing(pass_volume, tmp_path):
    store, pf, wrong = pass_volume
    src = tmp_path / "f"
    src.write_bytes(b"x")
    assert run_sealfs("put", store, src, "/f", "--passphrase-file", pf).code == 0
    before = tree_snapshot(store)
    for cmd in [("ls", store), ("cat", store, "/f"), ("put", store, src, "/g"), ("mkdir", store, "/d")]:
        assert_key_error(run_sealfs(*cmd, "--passphrase-file", wrong), "wrong passphrase")
    assert_key_error(run_sealfs("ls", store, env={"SEALFS_PASSPHRASE": WRONG_PASSPHRASE}),
                     "wrong passphrase")
    assert tree_snapshot(store) == before
    res = run_sealfs("cat", store, "/f", "--passphrase-file", pf)
    assert res.code == 0 and res.out == b"x"


def test_a_passphrase_volume_asks_for_a_passphrase_not_a_keyfile(pass_volume, keyfile):
    store, _pf, _wrong = pass_volume
    assert_key_error(run_sealfs("ls", store, "--keyfile", keyfile), "passphrase")
    assert_key_error(run_sealfs("ls", store), "passphrase")


def test_an_empty_passphrase_file_is_refused(pass_volume, tmp_path):
    store = pass_volume[0]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    empty.chmod(0o600)  # secret files: owner only (or they are refused)
    assert_key_error(run_sealfs("ls", store, "--passphrase-file", empty), "empty")


# -- key-source precedence (fs/cli/keysource.py) --------------------------------------------------

@pytest.mark.slow
def test_the_command_line_keyfile_beats_the_environment(key_volume):
    store, keyfile, wrong, _ = key_volume
    res = run_sealfs("cat", store, "/hello", "--keyfile", keyfile, env={"SEALFS_KEYFILE": str(wrong)})
    assert res.code == 0 and res.out == b"hello keys"
    res = run_sealfs("cat", store, "/hello", "--keyfile", wrong, env={"SEALFS_KEYFILE": str(keyfile)})
    assert_key_error(res, str(wrong))


@pytest.mark.slow
def test_the_environment_beats_credentials_directory(key_volume, tmp_path):
    store, keyfile, wrong, _ = key_volume
    creds_wrong = tmp_path / "creds-wrong"
    creds_wrong.mkdir()
    (creds_wrong / "keyfile").write_bytes(wrong.read_bytes())
    creds_right = tmp_path / "creds-right"
    creds_right.mkdir()
    (creds_right / "keyfile").write_bytes(keyfile.read_bytes())
    res = run_sealfs("cat", store, "/hello",
                     env={"SEALFS_KEYFILE": str(keyfile), "CREDENTIALS_DIRECTORY": str(creds_wrong)})
    assert res.code == 0 and res.out == b"hello keys"
    res = run_sealfs("cat", store, "/hello",
                     env={"SEALFS_KEYFILE": str(wrong), "CREDENTIALS_DIRECTORY": str(creds_right)})
    assert_key_error(res, str(wrong))
    # on its own, the systemd credential is used
    res = run_sealfs("cat", store, "/hello", env={"CREDENTIALS_DIRECTORY": str(creds_right)})
    assert res.code == 0 and res.out == b"hello keys"


@pytest.mark.slow
def test_passphrase_sources_follow_the_same_precedence(pass_volume, tmp_path):
    store, pf, wrong = pass_volume
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "passphrase").write_text(WRONG_PASSPHRASE)
    ok = run_sealfs("ls", store, "--passphrase-file", pf, env={"SEALFS_PASSPHRASE": WRONG_PASSPHRASE})
    assert ok.code == 0, ok.err
    assert_key_error(run_sealfs("ls", store, "--passphrase-file", wrong,
                                env={"SEALFS_PASSPHRASE": PASSPHRASE}), "wrong passphrase")
    ok = run_sealfs("ls", store, env={"SEALFS_PASSPHRASE": PASSPHRASE, "CREDENTIALS_DIRECTORY": str(creds)})
    assert ok.code == 0, ok.err
    assert_key_error(run_sealfs("ls", store, env={"CREDENTIALS_DIRECTORY": str(creds)}), "wrong passphrase")
    (creds / "passphrase").write_text(PASSPHRASE + "\n")
    ok = run_sealfs("ls", store, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert ok.code == 0, ok.err


def test_keyfile_and_passphrase_file_together_is_a_usage_error(key_volume, pass_volume):
    store, keyfile, _w, _s = key_volume
    pf = pass_volume[1]
    before = tree_snapshot(store)
    res = run_sealfs("ls", store, "--keyfile", keyfile, "--passphrase-file", pf)
    assert res.code == 2 and len(res.err_lines) == 1 and "not both" in res.err, res.err
    assert tree_snapshot(store) == before


def test_no_key_and_no_terminal_is_a_clear_error(key_volume):
    store = key_volume[0]
    before = tree_snapshot(store)
    res = run_sealfs("ls", store)
    assert_key_error(res, "--keyfile", "SEALFS_KEYFILE")
    assert tree_snapshot(store) == before


# -- secrets never in logs or errors ----------------------------------------------------------

def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("="), repr(secret)[2:-1]]


def _assert_no_secret(res, texts: list[str], raw: list[bytes]) -> None:
    blob = res.out + res.err.encode()
    for t in texts:
        assert t.encode() not in blob, f"secret form {t[:8]}... leaked"
    for r in raw:
        assert r not in blob


@pytest.mark.slow
def test_passphrases_never_appear_in_output_even_with_debug(tmp_path):
    store = tmp_path / "store"
    pf = tmp_path / "pass.txt"
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)  # secret files: owner only (or they are refused)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(WRONG_PASSPHRASE + "\n")
    wrong.chmod(0o600)  # secret files: owner only (or they are refused)
    src = tmp_path / "src"
    src.write_bytes(b"data")
    texts = [PASSPHRASE, "battery staple", WRONG_PASSPHRASE]
    runs = [
        run_sealfs("--debug", "init", store, "--passphrase-file", pf, "--scrypt-n", "1024"),
        run_sealfs("-v", "info", store, "--passphrase-file", pf),
        run_sealfs("--debug", "put", store, src, "/f", "--passphrase-file", pf),
        run_sealfs("--debug", "-v", "ls", store, "-l", "-R", "--passphrase-file", pf),
        run_sealfs("--debug", "cat", store, "/f", "--passphrase-file", pf),
        run_sealfs("--debug", "cat", store, "/f", "--passphrase-file", wrong),
        run_sealfs("-v", "cat", store, "/f", "--passphrase-file", wrong),
        run_sealfs("--debug", "ls", store, env={"SEALFS_PASSPHRASE": PASSPHRASE}),
        run_sealfs("--debug", "ls", store, env={"SEALFS_PASSPHRASE": WRONG_PASSPHRASE}),
        run_sealfs("--debug", "cat", store, "/missing", "--passphrase-file", pf),
    ]
    assert [r.code for r in runs[:5]] == [0, 0, 0, 0, 0]
    assert runs[5].code != 0 and runs[6].code == 5 and runs[7].code == 0 and runs[8].code != 0
    for res in runs:
        _assert_no_secret(res, texts, [])


@pytest.mark.slow
def test_keyfile_bytes_and_deks_never_appear_in_output_even_with_debug(tmp_path, keyfile):
    store = tmp_path / "store"
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)  # secret files: owner only (or they are refused)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(5000))
    runs = [
        run_sealfs("--debug", "init", store, "--keyfile", keyfile),
        run_sealfs("--debug", "-v", "info", store, "--keyfile", keyfile),
        run_sealfs("--debug", "put", store, src, "/f", "--keyfile", keyfile),
        run_sealfs("--debug", "ls", store, "-l", "--keyfile", keyfile),
        run_sealfs("-v", "get", store, "/f", tmp_path / "out", "--keyfile", keyfile),
        run_sealfs("--debug", "ls", store, "--keyfile", wrong),
        run_sealfs("-v", "ls", store, "--keyfile", wrong),
    ]
    assert [r.code for r in runs[:5]] == [0] * 5 and runs[6].code == 5
    cfg = json.loads((store / "sealfs.json").read_text())
    dek = KeyfileKek(keyfile).unwrap(WrappedDek.from_json(cfg["deks"][0])).dek
    secrets = [keyfile.read_bytes(), wrong.read_bytes(), bytes(dek)]
    texts = [form for s in secrets for form in _forms(s)]
    for res in runs:
        _assert_no_secret(res, texts, secrets)
