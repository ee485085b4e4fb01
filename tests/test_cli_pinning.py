"""Volume pinning (docs/FORMAT.md section 5; fs/core/pins.py): the first use pins a volume
(id + config-key fingerprint); a substituted sealfs.json is refused with exit 6 until
`sealfs repin STORE`."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import trio

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.config import VolumeConfig, WrappedDek
from sealfs.crypto.format.constants import CONFIG_NAME, DIR_META_NAME
from sealfs.crypto.format.header import Kind, Metadata, new_dir_id, seal_dir_meta
from sealfs.crypto.format.kdf import config_mac_key, dir_meta_key, locator_key
from sealfs.crypto.format.locator import locator, storage_path
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.crypto.keys.kms_local import KeyfileKek
from sealfs.fs.core.pins import default_pin_path
from sealfs.fs.core.volume import Volume
from tests.conftest import run_sealfs, tree_snapshot


def make_store(path, keyfile, files=("a",)):
    """A volume made without touching the pin store (so the CLI's use is the first use)."""
    path.mkdir()

    async def main():
        secrets = KeySecrets(keyfile=keyfile)
        await Volume.init(LocalBackend(path), provider_for_init(None, secrets), chunk_size=4096, pins=None)
        vol = await Volume.load(LocalBackend(path), secrets, pins=None)
        for name in files:
            await vol.write_file(name, name.encode())
        await vol.close()
    trio.run(main)
    return path


def pins() -> dict:
    path = default_pin_path()
    return json.loads(path.read_text()) if path.exists() else {}


def assert_pin_refused(res) -> None:
    assert res.code == 6, (res.code, res.err)
    assert res.out == b""
    assert len(res.err_lines) == 1 and "Traceback" not in res.err, res.err
    assert "sealfs repin" in res.err


def craft_config_with_attacker_dek(store, keyfile, replace_root: bool = True) -> bytes:
    """Same volume id and KEK, but a DEK the attacker chose, wrapped under the same keyfile
    and MACed correctly: only the pin can tell."""
    orig, _mac = VolumeConfig.parse((store / CONFIG_NAME).read_bytes())
    dek = os.urandom(32)
    wrapped = KeyfileKek(keyfile).wrap(dek)
    cfg = VolumeConfig(orig.volume_id, orig.chunk_size, dict(orig.kek),
                       [WrappedDek(1, wrapped.wrapped, wrapped.algorithm)], 1, 1, orig.created)
    (store / CONFIG_NAME).write_bytes(cfg.serialize(config_mac_key(dek)))
    if replace_root:
        meta = Metadata(Kind.DIRECTORY, 0o755, os.getuid(), os.getgid())
        root_id = new_dir_id()
        (store / storage_path(locator(locator_key(dek), root_id))).mkdir(parents=True)
        (store / DIR_META_NAME).write_bytes(seal_dir_meta(dir_meta_key(dek), root_id, meta))
    return dek


@pytest.mark.slow
def test_first_use_records_the_pin(tmp_path, keyfile):
    store = make_store(tmp_path / "s", keyfile)
    assert pins() == {}
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert res.code == 0 and res.text.splitlines() == ["a"]
    recorded = pins()
    volume_id = json.loads((store / CONFIG_NAME).read_text())["volume_id"]
    assert list(recorded) == [str(store.resolve())]
    assert recorded[str(store.resolve())]["volume_id"] == volume_id
    assert len(recorded[str(store.resolve())]["fingerprint"]) == 64
    # the pin holds nothing secret: not the keyfile, not a wrapped DEK
    text = default_pin_path().read_text()
    assert keyfile.read_bytes().hex() not in text
    assert json.loads((store / CONFIG_NAME).read_text())["deks"][0]["wrapped"] not in text
    assert run_sealfs("ls", store, "--keyfile", keyfile).code == 0


def test_init_pins_the_new_volume(tmp_path, keyfile):
    store = tmp_path / "s"
    assert run_sealfs("init", store, "--keyfile", keyfile).code == 0
    assert str(store.resolve()) in pins()


@pytest.mark.slow
@pytest.mark.parametrize("swap", ["config-only", "config-and-root"])
def test_a_config_from_another_volume_with_the_same_keyfile_is_refused(tmp_path, keyfile, swap):
    store = make_store(tmp_path / "s", keyfile, files=("mine",))
    other = make_store(tmp_path / "other", keyfile, files=("theirs",))
    assert run_sealfs("ls", store, "--keyfile", keyfile).code == 0        # pins it
    (store / CONFIG_NAME).write_bytes((other / CONFIG_NAME).read_bytes())
    if swap == "config-and-root":
        (store / DIR_META_NAME).write_bytes((other / DIR_META_NAME).read_bytes())
    before = tree_snapshot(store)
    pinned = pins()
    for cmd in (("ls", store), ("cat", store, "/mine"), ("info", store), ("mkdir", store, "/x")):
        assert_pin_refused(run_sealfs(*cmd, "--keyfile", keyfile))
    assert tree_snapshot(store) == before
    assert pins() == pinned


@pytest.mark.slow
def test_a_config_wrapping_an_attacker_chosen_dek_with_the_same_volume_id_is_refused(tmp_path, keyfile):
    store = make_store(tmp_path / "s", keyfile)
    assert run_sealfs("ls", store, "--keyfile", keyfile).code == 0
    volume_id = pins()[str(store.resolve())]["volume_id"]
    craft_config_with_attacker_dek(store, keyfile)
    assert json.loads((store / CONFIG_NAME).read_text())["volume_id"] == volume_id
    before = tree_snapshot(store)
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert_pin_refused(res)
    src = tmp_path / "upload"
    src.write_bytes(b"would be sealed under the attacker's DEK")
    assert_pin_refused(run_sealfs("put", store, src, "/upload", "--keyfile", keyfile))
    assert tree_snapshot(store) == before


@pytest.mark.slow
def test_repin_accepts_a_legitimately_replaced_volume(tmp_path, keyfile):
    store = make_store(tmp_path / "s", keyfile, files=("mine",))
    other = make_store(tmp_path / "other", keyfile, files=("theirs",))
    assert run_sealfs("ls", store, "--keyfile", keyfile).code == 0
    old_pin = pins()[str(store.resolve())]
    shutil.rmtree(store)                             # the whole volume was replaced
    shutil.copytree(other, store)
    assert_pin_refused(run_sealfs("ls", store, "--keyfile", keyfile))
    res = run_sealfs("repin", store, "--keyfile", keyfile)
    assert res.code == 0, res.err
    assert "re-pinned" in res.text
    assert pins()[str(store.resolve())] != old_pin
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert res.code == 0 and res.text.splitlines() == ["theirs"]


@pytest.mark.slow
def test_repin_accepts_a_crafted_config_once_the_user_says_so(tmp_path, keyfile):
    store = make_store(tmp_path / "s", keyfile)
    assert run_sealfs("ls", store, "--keyfile", keyfile).code == 0
    craft_config_with_attacker_dek(store, keyfile)
    assert_pin_refused(run_sealfs("ls", store, "--keyfile", keyfile))
    res = run_sealfs("repin", store, "--keyfile", keyfile)
    assert res.code == 0, res.err
    # the volume opens as the crafted one: its root (a new dir id, so a new storage) does
    # not hold the old entry, which shows nowhere (and no pin mismatch is reported)
    res = run_sealfs("ls", store, "--keyfile", keyfile)
    assert res.code == 0 and res.text == "", res.err
    assert "pinned" not in res.err


@pytest.mark.slow
def test_a_failed_repin_keeps_the_old_pin(tmp_path, keyfile):
    store = make_store(tmp_path / "s", keyfile)
    assert run_sealfs("ls", store, "--keyfile", keyfile).code == 0
    old_pins = pins()
    craft_config_with_attacker_dek(store, keyfile, replace_root=False)
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)  # secret files: owner only (or they are refused)
    res = run_sealfs("repin", store, "--keyfile", wrong)
    assert res.code == 5 and len(res.err_lines) == 1, res.err
    assert pins() == old_pins
    # the crafted config cannot open the root directory: repin fails and keeps the pin
    res = run_sealfs("repin", store, "--keyfile", keyfile)
    assert res.code == 4 and len(res.err_lines) == 1, res.err
    assert pins() == old_pins
    assert_pin_refused(run_sealfs("ls", store, "--keyfile", keyfile))


def test_repin_of_an_unpinned_volume_pins_it(tmp_path, keyfile):
    store = make_store(tmp_path / "s", keyfile)
    res = run_sealfs("repin", store, "--keyfile", keyfile)
    assert res.code == 0 and "pinned volume" in res.text
    assert str(store.resolve()) in pins()
