"""`sealfs rekey` and `keys list` on a store with users' odd names and damaged entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_sealfs
from tests.storepaths import storage_path


def _volume_with_files(tmp_path: Path, keyfile: Path) -> Path:
    store = tmp_path / "store"
    assert run_sealfs("init", store, "--keyfile", keyfile).code == 0
    for name in ("a", ".sealfs-rekey.0a1b2c3d4e5f", "b"):
        local = tmp_path / name
        local.write_bytes(b"content of " + name.encode())
        assert run_sealfs("put", store, local, "/" + name, "--keyfile", keyfile).code == 0
    assert run_sealfs("keys", "add-dek", store, "--keyfile", keyfile).code == 0
    return store


def _largest_store_file(store: Path, keyfile: Path) -> Path:
    root = storage_path(store, keyfile, "")
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith("sealfs.")]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.slow
def test_rekey_keeps_a_users_file_named_like_its_old_temporaries(tmp_path, keyfile):
    store = _volume_with_files(tmp_path, keyfile)
    res = run_sealfs("rekey", store, "--keyfile", keyfile)
    assert res.code == 0, res.err
    assert res.out.decode().startswith("re-sealed 3 files")
    listed = run_sealfs("ls", store, "/", "--keyfile", keyfile)
    assert listed.out.decode().split() == [".sealfs-rekey.0a1b2c3d4e5f", "a", "b"]
    got = run_sealfs("cat", store, "/.sealfs-rekey.0a1b2c3d4e5f", "--keyfile", keyfile)
    assert got.out == b"content of .sealfs-rekey.0a1b2c3d4e5f"
    again = run_sealfs("rekey", store, "--keyfile", keyfile)    # a rerun deletes nothing either
    assert again.code == 0 and "re-sealed 0 files; 3 already" in again.out.decode()
    assert not [p for p in store.iterdir() if p.name.startswith("sealfs.tmp.")]


@pytest.mark.slow
def test_a_damaged_file_makes_rekey_and_keys_list_fail_naming_it(tmp_path, keyfile):
    """A file whose header fails authentication may still be sealed by the old DEK: its
    count is unknown and it was not re-sealed, so neither command may say all is well."""
    store = _volume_with_files(tmp_path, keyfile)
    victim = _largest_store_file(store, keyfile)
    data = bytearray(victim.read_bytes())
    data[50] ^= 1                                   # inside the sealed header
    victim.write_bytes(bytes(data))
    for args in (("keys", "list"), ("rekey",)):
        res = run_sealfs(*args, store, "--keyfile", keyfile)
        assert res.code == 4, (args, res.err)
        assert victim.name in res.err, res.err
    listed = run_sealfs("keys", "list", store, "--keyfile", keyfile)
    assert "DEK 2" in listed.out.decode()           # the good counts are still shown
