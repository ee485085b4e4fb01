"""`sealfs` commands on an https:// Azure Files store, as subprocesses against the test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_sealfs

pytestmark = pytest.mark.azfiles


def test_init_put_get_ls_fsck_and_no_plaintext_stored(azfiles_store, keyfile: Path, tmp_path: Path) -> None:
    url, key = azfiles_store.url, azfiles_store.key_file
    auth = ["--keyfile", keyfile, "--azure-account-key-file", key]
    res = run_sealfs("init", url, *auth, "--chunk-size", "4K")
    assert res.code == 0, res.err
    assert "account key" in res.err and "whole" in res.err       # the one-line warning
    marker = b"PLAINTEXT-MARKER-" * 4096                          # 68 KiB: many chunks
    src = tmp_path / "secret-name.txt"
    src.write_bytes(marker)
    assert run_sealfs("mkdir", url, "docs", *auth).code == 0
    res = run_sealfs("put", url, src, "docs/secret-name.txt", *auth)
    assert res.code == 0, res.err
    res = run_sealfs("ls", url, "docs", *auth)
    assert res.code == 0 and "secret-name.txt" in res.text, res.err
    out = tmp_path / "back"
    res = run_sealfs("get", url, "docs/secret-name.txt", out, *auth)
    assert res.code == 0, res.err
    assert out.read_bytes() == marker
    res = run_sealfs("fsck", url, *auth)
    assert res.code == 0, res.err
    stored = azfiles_store.server.stored_bytes()
    assert sum(len(b) for b in stored) > len(marker)
    for blob in stored:
        assert b"PLAINTEXT-MARKER" not in blob and b"secret-name" not in blob


def test_the_account_key_comes_from_the_environment_never_argv(azfiles_store, keyfile: Path) -> None:
    env = {"SEALFS_AZURE_ACCOUNT_KEY": azfiles_store.server.account_key}
    res = run_sealfs("init", azfiles_store.url, "--keyfile", keyfile, env=env)
    assert res.code == 0, res.err
    res = run_sealfs("info", azfiles_store.url, "--keyfile", keyfile, env=env)
    assert res.code == 0, res.err
    assert "HTTPS" in res.text


def test_plain_http_is_refused(azfiles_store, keyfile: Path) -> None:
    url = azfiles_store.url.replace("https://", "http://")
    res = run_sealfs("init", url, "--keyfile", keyfile, "--azure-account-key-file", azfiles_store.key_file)
    assert res.code == 2 and "http://" in res.err and "refused" in res.err, res.err
    assert azfiles_store.server.calls.total() == 0
