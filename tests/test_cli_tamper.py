"""Tampering seen through `sealfs cat`: a non-zero exit (4) and never a wrong byte.

stdout may hold a prefix of the true plaintext made of whole authenticated chunks
(what was already streamed before the damage was met), or nothing. On local, smb and
azfiles stores: the ciphertext is damaged on disk, under the server.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import trio

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.config import VolumeConfig
from sealfs.crypto.format.constants import CHUNK_OVERHEAD
from sealfs.crypto.format.header import HEADER_SIZE
from sealfs.crypto.format.kdf import config_mac_key
from sealfs.crypto.format.layout import slot_offset, stored_size
from sealfs.crypto.keys.kms import KeySecrets, provider_from_config
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.conftest import run_sealfs, tree_snapshot
from tests.storepaths import entry_of, storage_of
from tests.stores import StoreKit

CS = 4096
SLOT = CS + CHUNK_OVERHEAD


def backend_path(kit: StoreKit, keyfile, path: str):
    """Where path's entry is on disk, found through the store's own backend."""
    return kit.local_path(keyfile, path, entry_of)


def shown(kit: StoreKit, ciphertext) -> str:
    """How the CLI names a ciphertext path: the store's location, then the backend path."""
    return f"{kit.url.rstrip('/')}/{ciphertext.relative_to(kit.root)} (ciphertext path)"


_SIZE = 2 * 1024 * 1024 + 123          # cat streams it in several 1 MiB blocks


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A pristine 4 KiB-chunk volume with two files, built once with the library."""
    root = tmp_path_factory.mktemp("tamper-template")
    keyfile = root / "key"
    keyfile.write_bytes(os.urandom(32))
    keyfile.chmod(0o600)
    store = root / "store"
    store.mkdir()
    files = {name: os.urandom(_SIZE) for name in ("victim", "donor")}

    async def main():
        from sealfs.crypto.keys.kms import provider_for_init
        secrets = KeySecrets(keyfile=keyfile)
        pins = PinStore(root / "pins.json")
        await Volume.init(LocalBackend(store), provider_for_init(None, secrets), chunk_size=CS, pins=pins)
        vol = await Volume.load(LocalBackend(store), secrets, pins=pins)
        for name, data in files.items():
            await vol.write_file(name, data)
        await vol.close()
    trio.run(main)
    return store, keyfile, files


@pytest.fixture
def volume(template, store_kit: StoreKit):
    """A copy of the template in a fresh store on each backend kind (its files copied on
    disk, as another client would have written them)."""
    store, keyfile, files = template
    shutil.copytree(store, store_kit.root, dirs_exist_ok=True)
    return store_kit, keyfile, files


def cat(kit: StoreKit, keyfile, path="/victim"):
    return run_sealfs("cat", kit.url, path, "--keyfile", keyfile)


def assert_refused_without_wrong_bytes(res, plaintext: bytes, code: int = 4) -> None:
    assert res.code == code, (res.code, res.err)
    assert len(res.err_lines) == 1 and "Traceback" not in res.err, res.err
    assert res.out == plaintext[:len(res.out)], "cat printed bytes that are not the plaintext"
    assert len(res.out) % CS == 0, "cat printed part of a chunk"
    assert len(res.out) < len(plaintext)


@pytest.mark.parametrize("where", ["header-public", "header-tag", "chunk0-nonce", "chunk0-body",
                                   "chunk400-body", "final-tag"])
def test_one_flipped_byte_makes_cat_fail_without_printing_a_wrong_byte(volume, where):
    kit, keyfile, files = volume
    target = backend_path(kit, keyfile, "/victim")
    raw = bytearray(target.read_bytes())
    pos = {"header-public": 10, "header-tag": HEADER_SIZE - 3, "chunk0-nonce": slot_offset(0, CS) + 1,
           "chunk0-body": slot_offset(0, CS) + 100, "chunk400-body": slot_offset(400, CS) + 2000,
           "final-tag": len(raw) - 1}[where]
    raw[pos] ^= 0x04
    target.write_bytes(raw)
    res = cat(kit, keyfile)
    assert_refused_without_wrong_bytes(res, files["victim"])
    if where == "chunk400-body":
        assert len(res.out) <= 400 * CS


def test_two_swapped_chunks_make_cat_fail(volume):
    kit, keyfile, files = volume
    target = backend_path(kit, keyfile, "/victim")
    raw = bytearray(target.read_bytes())
    a, b = slot_offset(300, CS), slot_offset(301, CS)
    raw[a:a + SLOT], raw[b:b + SLOT] = raw[b:b + SLOT], raw[a:a + SLOT]
    target.write_bytes(raw)
    res = cat(kit, keyfile)
    assert_refused_without_wrong_bytes(res, files["victim"])
    assert len(res.out) <= 300 * CS


def test_a_chunk_copied_from_another_file_at_the_same_index_makes_cat_fail(volume):
    kit, keyfile, files = volume
    target = backend_path(kit, keyfile, "/victim")
    donor = backend_path(kit, keyfile, "/donor").read_bytes()
    raw = bytearray(target.read_bytes())
    at = slot_offset(5, CS)
    raw[at:at + SLOT] = donor[at:at + SLOT]
    target.write_bytes(raw)
    assert_refused_without_wrong_bytes(cat(kit, keyfile), files["victim"])
    assert cat(kit, keyfile, "/donor").out == files["donor"]


@pytest.mark.parametrize("chunks", [1, 256, 512])
def test_a_file_truncated_at_a_chunk_boundary_makes_cat_fail(volume, chunks):
    kit, keyfile, files = volume
    target = backend_path(kit, keyfile, "/victim")
    with open(target, "r+b") as fh:
        fh.truncate(stored_size(chunks * CS, CS))
    assert_refused_without_wrong_bytes(cat(kit, keyfile), files["victim"])


@pytest.mark.slow
def test_a_file_moved_into_another_directory_is_not_listed_and_cat_fails(tmp_path, keyfile, store_kit):
    kit, store = store_kit, store_kit.url
    assert run_sealfs("init", store, "--keyfile", keyfile, "--chunk-size", "4K").code == 0
    src = tmp_path / "f"
    src.write_bytes(b"moved secret")
    for cmd in (("mkdir", store, "/a"), ("mkdir", store, "/b"), ("put", store, src, "/a/secret"),
                ("put", store, src, "/b/other")):
        assert run_sealfs(*cmd, "--keyfile", keyfile).code == 0
    moved = backend_path(kit, keyfile, "/a/secret")
    bdir = kit.local_path(keyfile, "/b", storage_of)
    shutil.move(moved, bdir / moved.name)
    res = run_sealfs("ls", store, "/b", "--keyfile", keyfile)
    assert res.code == 4                  # integrity: listed by its ciphertext path only
    assert res.text.splitlines() == ["other"]
    assert shown(kit, bdir / moved.name) in res.err, res.err
    res = run_sealfs("ls", store, "-R", "--keyfile", keyfile)
    assert res.code == 4 and shown(kit, bdir / moved.name) in res.err
    assert sorted(res.text.splitlines()) == ["a/", "b/", "b/other"]
    for path in ("/a/secret", "/b/secret"):
        res = run_sealfs("cat", store, path, "--keyfile", keyfile)
        assert res.code != 0 and res.out == b""
        assert "No such file" in res.err and "Traceback" not in res.err


DAMAGES = {
    "garbage": lambda raw: os.urandom(len(raw)),
    "empty": lambda raw: b"",
    "truncated-json": lambda raw: raw[:len(raw) // 2],
    "not-an-object": lambda raw: b"[1, 2, 3]\n",
    "mac-flipped": lambda raw: _edit(raw, lambda d: d.update(mac=("0" if d["mac"][0] != "0" else "1") + d["mac"][1:])),
    "chunk-size-changed": lambda raw: _edit(raw, lambda d: d.update(chunk_size=8192)),
    "chunk-size-invalid": lambda raw: _edit(raw, lambda d: d.update(chunk_size=3000)),
    "created-changed": lambda raw: _edit(raw, lambda d: d.update(created="2001-01-01T00:00:00Z")),
    "volume-id-changed": lambda raw: _edit(raw, lambda d: d.update(volume_id="00" * 16)),
    "name-dek-unknown": lambda raw: _edit(raw, lambda d: d.update(name_dek=7)),
    "mac-missing": lambda raw: _edit(raw, lambda d: d.pop("mac")),
    "deks-empty": lambda raw: _edit(raw, lambda d: d.update(deks=[])),
    "version-future": lambda raw: _edit(raw, lambda d: d.update(version=99)),
    "binary-junk-inside": lambda raw: raw[:20] + b"\xff\xfe\x00" + raw[23:],
}


def _edit(raw: bytes, change) -> bytes:
    doc = json.loads(raw)
    change(doc)
    return json.dumps(doc, indent=2).encode()


# Parsing and authenticating sealfs.json happens after the bytes arrive, whatever carried
# them: these run on one backend (the transport's own faults are tested in tests/smb,
# tests/azfiles and test_config_limits).
@pytest.mark.parametrize("store_kit", ["local"], indirect=True)
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_volume_config_is_refused_with_a_clear_message(volume, damage):
    kit, keyfile, _files = volume
    store = kit.url
    cfg = kit.root / "sealfs.json"
    cfg.write_bytes(DAMAGES[damage](cfg.read_bytes()))
    res = run_sealfs("cat", store, "/victim", "--keyfile", keyfile)
    assert res.code in (3, 4), (res.code, res.err)
    assert res.out == b""
    assert len(res.err_lines) == 1 and "Traceback" not in res.err, res.err
    assert "sealfs.json" in res.err or "volume config" in res.err \
        or f"{store} is a format-99 store" in res.err, res.err


@pytest.mark.slow
def test_a_format_1_store_is_refused_with_one_line_naming_its_version(volume):
    """No format-1 volume was released: its store (here, a config of version 1 with a
    valid MAC) is refused in one line, by every command, before anything is read."""
    kit, keyfile, _files = volume
    store = kit.url
    cfg_path = kit.root / "sealfs.json"
    cfg, _mac = VolumeConfig.parse(cfg_path.read_bytes())
    kek = KeySecrets(keyfile=keyfile)
    dek = provider_from_config(cfg.kek, kek).unwrap(cfg.dek(cfg.name_dek_id)).dek
    cfg.version = 1
    cfg_path.write_bytes(cfg.serialize(config_mac_key(bytes(dek))))
    before = tree_snapshot(kit.root)
    expected = f"sealfs: error: {store} is a format-1 store; this sealfs reads format 2 only"
    for cmd in (("ls", store), ("cat", store, "/victim"), ("info", store), ("fsck", store),
                ("mkdir", store, "/x")):
        res = run_sealfs(*cmd, "--keyfile", keyfile)
        assert res.code == 3 and res.out == b"", (cmd, res.code, res.err)
        assert res.err_lines == [expected], res.err
    assert tree_snapshot(kit.root) == before
