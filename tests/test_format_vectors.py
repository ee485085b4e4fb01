"""The format 2 vectors (tests/vectors/*.json) against sealfs and the independent reader.

Each vector is checked twice: sealfs must produce exactly the stored bytes from the stored
inputs (so any format change fails here), and tests/independent_decryptor.py, written from
docs/FORMAT.md alone, must read them back.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import importlib.util
import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format import kdf
from sealfs.crypto.format.chunks import ChunkCipher, chunk_aad
from sealfs.crypto.format.config import VolumeConfig, canonical_json
from sealfs.crypto.format.header import (
    FileHeader,
    Kind,
    Metadata,
    open_dir_meta,
    open_header,
    seal_dir_meta,
    seal_header,
)
from sealfs.crypto.format.layout import (
    chunk_plain_length,
    final_index,
    logical_size,
    slot_offset,
    stored_size,
)
from sealfs.crypto.format.locator import locator, storage_path
from sealfs.crypto.format.names import NameCipher, check_name, long_name_entry, pad_name
from sealfs.crypto.format.xattrs import blob_path as xattr_blob_path
from sealfs.crypto.format.xattrs import open_xattrs, pack_entries, seal_xattrs, xattr_locator
from sealfs.crypto.keys.kms import KeySecrets
from sealfs.crypto.keys.kms_local import KeyfileKek, PassphraseKek
from sealfs.errors import ConfigError, IntegrityError, KeyAccessError
from sealfs.fs.core.files import FileState
from sealfs.fs.core.volume import Volume

sys.path.insert(0, str(Path(__file__).parent))
import independent_decryptor as ind

VECTORS = Path(__file__).parent / "vectors"
FMT = json.loads((VECTORS / "format_v2.json").read_text(encoding="utf-8"))
STORE = json.loads((VECTORS / "store_v2.json").read_text(encoding="utf-8"))
IN = {k: bytes.fromhex(v) for k, v in FMT["inputs"].items()}
X = bytes.fromhex


def meta_of(d: dict) -> Metadata:
    return Metadata(Kind(d["kind"]), d["mode"], d["uid"], d["gid"], d["rdev"], d["size"], d["ctime"],
                    d["flags"])


def ind_keys(chunk_size: int = 4096) -> ind.Keys:
    return ind.Keys({1: IN["dek1"], 2: IN["dek2"]}, 1, chunk_size, IN["volume_id"].hex(), {})


# -- the vectors are what the generator produces -------------------------------------------
def test_generator_reproduces_the_checked_in_vectors():
    spec = importlib.util.spec_from_file_location("vectors_generate", VECTORS / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fmt, store = gen.generate()
    assert json.loads(gen.dump(fmt)) == FMT, "format_v2.json differs: the format changed"
    assert json.loads(gen.dump(store)) == STORE, "store_v2.json differs: the format changed"
    assert FMT["version"] == 2 and not list(VECTORS.glob("*_v1.json"))


# -- key hierarchy ---------------------------------------------------------------------------
def test_hkdf():
    v = FMT["hkdf"]
    dek = X(v["ikm"])
    fid = IN["file_id"]
    assert kdf.file_key(dek, fid).hex() == v["file_key"]["okm"]
    assert kdf.file_key(IN["dek2"], fid).hex() == v["file_key_dek2"]["okm"]
    assert kdf.name_key(dek).hex() == v["name_key"]["okm"]
    assert kdf.config_mac_key(dek).hex() == v["config_mac_key"]["okm"]
    assert kdf.dir_meta_key(dek).hex() == v["dir_meta_key"]["okm"]
    assert kdf.locator_key(dek).hex() == v["locator_key"]["okm"]
    assert kdf.xattr_key(dek).hex() == v["xattr_key"]["okm"]
    assert v["xattr_key"]["info"] == "sealfs/v2/xattrs"
    assert v["locator_key"]["info"] == "sealfs/v2/locator"
    assert kdf.pin_fingerprint(dek) == v["pin_fingerprint"]
    for name in ("file_key", "name_key", "config_mac_key", "dir_meta_key", "locator_key", "pin_key",
                 "xattr_key"):
        e = v[name]
        salt = X(e["salt"]) if e["salt"] else None
        assert ind.hkdf(dek, e["info"].encode(), e["length"], salt).hex() == e["okm"], name
    assert hashlib.sha256(X(v["pin_key"]["okm"])).hexdigest() == v["pin_fingerprint"]
    assert ind_keys().pin_fingerprint == v["pin_fingerprint"]


# -- headers and directory records --------------------------------------------------------------
@pytest.mark.parametrize("v", FMT["headers"], ids=lambda v: v["label"])
def test_header(v):
    raw = X(v["bytes"])
    assert len(raw) == 96
    key = X(v["file_key"])
    dek = IN["dek1"] if v["dek_id"] == 1 else IN["dek2"]
    assert kdf.file_key(dek, X(v["file_id"])) == key
    header = FileHeader(v["dek_id"], X(v["file_id"]), meta_of(v["meta"]))
    assert seal_header(key, header, nonce=X(v["nonce"])) == raw
    assert open_header(key, raw) == header
    # independent: public part, AAD, sealed struct
    assert raw[:6] == b"SEALFS" and raw[6] == 1 and raw[7] == 0
    dek_id, file_id = struct.unpack(">I16s", raw[8:28])
    assert (dek_id, file_id.hex()) == (v["dek_id"], v["file_id"])
    assert raw[:28].hex() == v["aad"]
    plain = AESGCM(ind_keys().file_key(dek_id, file_id)).decrypt(raw[28:40], raw[40:], raw[:28])
    m = ind.unpack_meta(plain)
    assert (m.kind, m.flags, m.mode, m.uid, m.gid, m.rdev, m.size, m.ctime) == tuple(
        v["meta"][k] for k in ("kind", "flags", "mode", "uid", "gid", "rdev", "size", "ctime"))
    assert plain[1] == v["meta"]["flags"]                  # FORMAT.md 7.2: byte 1
    for bit in range(1, 8):                                # any other flag bit: refused
        bad = plain[:1] + bytes([plain[1] | 1 << bit]) + plain[2:]
        with pytest.raises(ind.FormatError):
            ind.unpack_meta(bad)
        with pytest.raises(IntegrityError):
            open_header(key, _reseal(key, raw, bad))


def _reseal(key: bytes, raw: bytes, meta40: bytes) -> bytes:
    """A header of the same public part and nonce whose sealed metadata is meta40."""
    return raw[:28] + raw[28:40] + AESGCM(key).encrypt(raw[28:40], meta40, raw[:28])


@pytest.mark.parametrize("v", FMT["dir_meta"], ids=lambda v: v["label"])
def test_dir_record(v):
    raw = X(v["bytes"])
    assert len(raw) == 92
    key = kdf.dir_meta_key(IN["dek1"])
    assert key.hex() == v["dir_meta_key"]
    assert seal_dir_meta(key, X(v["dir_id"]), meta_of(v["meta"]), nonce=X(v["nonce"])) == raw
    assert open_dir_meta(key, raw) == (X(v["dir_id"]), meta_of(v["meta"]))
    # FORMAT.md 6, byte by byte: public part, nonce, sealed id || metadata, tag
    assert raw[:8] == b"SEALFS\x02D" and raw[8:20].hex() == v["nonce"]
    assert (b"sealfs.dir" + raw[:8]).hex() == v["aad"]
    plain = AESGCM(key).decrypt(raw[8:20], raw[20:], X(v["aad"]))
    assert plain.hex() == v["plaintext"] and plain[:16].hex() == v["dir_id"]
    assert X(v["dir_id"]) not in raw                       # the id is sealed
    dir_id, m = ind.open_dir_record(ind_keys(), raw)
    assert dir_id.hex() == v["dir_id"] and m.kind == 7 and m.mode == v["meta"]["mode"]
    assert m.ctime == v["meta"]["ctime"] and m.flags == v["meta"]["flags"]
    format1 = raw[:6] + b"\x01" + raw[7:]                  # a format-1 record's version byte
    flipped = raw[:30] + bytes([raw[30] ^ 1]) + raw[31:]   # a bit of the sealed id
    for bad in (format1, flipped, raw[:91], raw + b"\0"):
        with pytest.raises(ind.FormatError):
            ind.open_dir_record(ind_keys(), bad)
        with pytest.raises(IntegrityError):
            open_dir_meta(key, bad)


# -- locators ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", FMT["locator"]["locators"], ids=lambda v: v["label"])
def test_locator(v):
    key = kdf.locator_key(IN["dek1"])
    assert key.hex() == FMT["locator"]["locator_key"]
    dir_id = X(v["dir_id"])
    assert locator(key, dir_id) == v["locator"]
    assert storage_path(v["locator"]) == v["storage"]
    # FORMAT.md 1: L = b32(HMAC-SHA256(locator key, id))[0:32]; storage d/L[0:2]/L[2:32]
    assert ind.b32encode(X(v["hmac"]))[:32] == v["locator"]
    assert len(v["locator"]) == 32 and set(v["locator"]) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert v["storage"] == f"d/{v['locator'][:2]}/{v['locator'][2:]}" and len(v["storage"]) == 35
    assert ind_keys().storage(dir_id) == v["storage"]


# -- chunks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", FMT["chunks"]["chunks"], ids=lambda v: v["label"])
def test_chunk(v):
    c = FMT["chunks"]
    key, fid = X(c["file_key"]), X(c["file_id"])
    assert kdf.file_key(IN["dek2"], fid) == key
    sealed, plain = X(v["sealed"]), X(v["plaintext"])
    assert len(sealed) == len(plain) + 28
    assert chunk_aad(fid, v["index"], v["final"]).hex() == v["aad"]
    assert ind.chunk_aad(fid, v["index"], v["final"]).hex() == v["aad"]
    cipher = ChunkCipher(key, fid)
    assert cipher.seal(v["index"], plain, v["final"], nonce=X(v["nonce"])) == sealed
    assert cipher.open(v["index"], sealed, v["final"]) == plain
    with pytest.raises(IntegrityError):
        cipher.open(v["index"], sealed, not v["final"])
    gcm = AESGCM(ind.hkdf(IN["dek2"], b"sealfs/v1/file", 32, salt=fid))
    assert gcm.decrypt(sealed[:12], sealed[12:], ind.chunk_aad(fid, v["index"], v["final"])) == plain


# -- names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", FMT["names"]["names"], ids=lambda v: v["label"])
def test_name(v):
    nk = kdf.name_key(IN["dek1"])
    assert nk.hex() == FMT["names"]["name_key"]
    names = NameCipher(nk)
    dir_id = X(v["dir_id"])
    raw = v["name"].encode("utf-8")
    assert raw.hex() == v["name_utf8"]
    assert pad_name(raw).hex() == v["padded"] and len(X(v["padded"])) % 16 == 0
    assert names.encode(v["name"], dir_id) == v["encoded"]
    entry, long = names.entry_for(v["name"], dir_id)
    assert entry == v["entry"]
    assert long == v["sidecar_content"]
    assert names.decode(v["encoded"], dir_id) == v["name"]
    # FORMAT.md: short iff the padded name is at most 128 bytes
    assert (len(X(v["padded"])) <= 128) == (v["sidecar_name"] is None)
    if v["sidecar_name"]:
        assert entry == long_name_entry(v["encoded"]) and len(entry) == 62
        assert v["sidecar_name"] == entry + ".name"
        assert ind.LONG_NAME.match(entry)
        assert entry == "sealfs.ln." + ind.b32encode(hashlib.sha256(v["encoded"].encode()).digest())
    else:
        assert len(entry) <= 255 and not entry.startswith("sealfs.")
    assert ind.decode_name(ind_keys(), v["encoded"], dir_id) == v["name"]
    sealed = ind.b32decode_canonical(v["encoded"])
    assert len(sealed) == len(X(v["padded"])) + 16
    with pytest.raises(ind.FormatError):
        ind.decode_name(ind_keys(), v["encoded"], bytes(16))


@pytest.mark.parametrize("v", FMT["names"]["errors"], ids=lambda v: v["label"])
def test_name_errors(v):
    with pytest.raises(OSError) as info:
        check_name(v["name"])
    assert info.value.errno == getattr(errno, v["error"])


# -- layout -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", FMT["layout"], ids=lambda v: f"cs{v['chunk_size']}-{v.get('size')}-{v['stored']}")
def test_layout(v):
    cs = v["chunk_size"]
    if "final_index" in v:
        size = v["size"]
        assert stored_size(size, cs) == v["stored"] == ind.stored_size(size, cs)
        assert logical_size(v["stored"], cs) == size == ind.size_from_length(v["stored"], cs)
        f = final_index(size, cs)
        assert f == v["final_index"]
        assert chunk_plain_length(f, size, cs) == v["final_length"]
        assert slot_offset(f, cs) == v["final_offset"] == ind.slot_offset(f, cs)
        assert v["final_offset"] + v["final_length"] + 28 == v["stored"]
    else:
        assert logical_size(v["stored"], cs) is None and v["size"] is None
        assert ind.size_from_length(v["stored"], cs) is None


def test_layout_inverse_exhaustive():
    for cs in (4096, 8192):
        for size in range(0, 4 * cs + 3, 7):
            assert logical_size(stored_size(size, cs), cs) == size
            assert ind.size_from_length(ind.stored_size(size, cs), cs) == size


# -- sealfs.json --------------------------------------------------------------------------------------
def test_keyfile_config(tmp_path: Path):
    v = FMT["config"]["keyfile_volume"]
    raw = v["sealfs_json"].encode()
    cfg, mac = VolumeConfig.parse(raw)
    assert mac == v["mac"]
    mac_key = kdf.config_mac_key(IN["dek1"])
    assert mac_key.hex() == v["config_mac_key"]
    assert canonical_json(cfg.body()).decode() == v["canonical_body"]
    assert cfg.mac(mac_key) == v["mac"]
    cfg.verify(mac_key, mac)
    assert cfg.serialize(mac_key) == raw
    keyfile = tmp_path / "k"
    keyfile.write_bytes(X(v["keyfile"]))
    keyfile.chmod(0o600)  # secret files: owner only (or they are refused)
    kek = KeyfileKek(keyfile)
    for dek_id in (1, 2):
        assert kek.wrap(X(v["deks"][str(dek_id)])).wrapped.hex() == v["wrapped"][str(dek_id)]
        assert bytes(kek.unwrap(cfg.dek(dek_id)).dek).hex() == v["deks"][str(dek_id)]
    # independent
    keys = ind.open_config(raw, keyfile=X(v["keyfile"]))
    assert keys.deks == {1: IN["dek1"], 2: IN["dek2"]} and keys.name_dek_id == 1
    assert keys.pin_fingerprint == v["pin"]["fingerprint"]
    doc = json.loads(raw)
    assert ind.canonical_json({k: x for k, x in doc.items() if k != "mac"}).decode() == v["canonical_body"]
    with pytest.raises(ind.KeyError_):
        ind.open_config(raw, keyfile=bytes(32))


@pytest.mark.parametrize("field,value", [("chunk_size", 8192), ("current_dek", 1),
                                         ("volume_id", "00" * 16), ("name_dek", 2)])
def test_config_tamper_is_refused(field, value):
    v = FMT["config"]["keyfile_volume"]
    doc = json.loads(v["sealfs_json"])
    doc[field] = value
    raw = json.dumps(doc).encode()
    cfg, mac = VolumeConfig.parse(raw)
    with pytest.raises(IntegrityError):
        cfg.verify(kdf.config_mac_key(IN[f"dek{cfg.name_dek_id}"]), mac)
    with pytest.raises(ind.FormatError):
        ind.open_config(raw, keyfile=X(v["keyfile"]))


def test_passphrase_config():
    v = FMT["config"]["passphrase_volume"]
    raw = v["sealfs_json"].encode()
    cfg, mac = VolumeConfig.parse(raw)
    s = v["scrypt"]
    assert cfg.kek == {"provider": "passphrase", "scrypt": {
        "salt": __import__("base64").b64encode(X(s["salt"])).decode(), "n": s["n"], "r": s["r"], "p": s["p"]}}
    kek = PassphraseKek(v["passphrase"].encode(), X(s["salt"]), s["n"], s["r"], s["p"])
    assert kek.wrap(X(v["dek"])).wrapped.hex() == v["wrapped"]
    assert bytes(kek.unwrap(cfg.dek(1)).dek).hex() == v["dek"]
    cfg.verify(kdf.config_mac_key(X(v["dek"])), mac)
    assert mac == v["mac"]
    with pytest.raises(KeyAccessError):
        PassphraseKek(b"wrong", X(s["salt"]), s["n"], s["r"], s["p"]).unwrap(cfg.dek(1))
    keys = ind.open_config(raw, passphrase=v["passphrase"].encode())
    assert keys.deks[1].hex() == v["dek"] and keys.chunk_size == 65536
    with pytest.raises(ind.KeyError_):
        ind.open_config(raw, passphrase=b"wrong")


# -- size resolution (crash ordering) -------------------------------------------------------------
SR = FMT["size_resolution"]


@pytest.mark.parametrize("v", SR["cases"], ids=lambda v: v["label"])
async def test_size_resolution_sealfs(v, tmp_path: Path):
    data = X(v["file"])
    (tmp_path / "f").write_bytes(data)
    backend = LocalBackend(tmp_path)
    handle = await backend.open("f")
    try:
        header = open_header(kdf.file_key(X(SR["dek"]), X(SR["file_id"])), data)
        cipher = ChunkCipher(kdf.file_key(X(SR["dek"]), header.file_id), header.file_id)
        cs = SR["chunk_size"]

        async def resolve_and_open_final() -> int:
            # When S_h = S_b sealfs skips the check (FORMAT.md 9.1 allows it); the final
            # chunk is authenticated when read, so read it here.
            size = await FileState.resolve_size(backend, handle, header, cipher, cs, len(data))
            f = final_index(size, cs)
            sealed = data[slot_offset(f, cs):stored_size(size, cs)]
            cipher.open(f, sealed, True)
            return size

        if v["expected_size"] is None:
            with pytest.raises(IntegrityError):
                await resolve_and_open_final()
        else:
            assert await resolve_and_open_final() == v["expected_size"]
    finally:
        await backend.close(handle)
        await backend.aclose()


@pytest.mark.parametrize("v", SR["cases"], ids=lambda v: v["label"])
def test_size_resolution_independent(v):
    data = X(v["file"])
    keys = ind.Keys({SR["dek_id"]: X(SR["dek"])}, SR["dek_id"], SR["chunk_size"], "", {})
    if v["expected_size"] is None:
        with pytest.raises(ind.FormatError):
            ind.decrypt_file(keys, data)
        return
    f = ind.decrypt_file(keys, data)
    assert f.size == v["expected_size"]
    assert hashlib.sha256(f.content).hexdigest() == v["expected_sha256"]


async def test_size_resolution_through_volume(tmp_path: Path):
    """sealfs's reader returns the same bytes as the independent one for every readable case."""
    store = materialize(tmp_path / "s")
    keyfile = tmp_path / "k"
    keyfile.write_bytes(X(STORE["keyfile"]))
    keyfile.chmod(0o600)  # secret files: owner only (or they are refused)
    root_id = X(STORE["root"]["dir_id"])
    root_storage = store / STORE["root"]["storage"]
    names = NameCipher(kdf.name_key(IN["dek1"]))
    cases = [v for v in SR["cases"] if v["expected_size"] is not None]
    # Re-key each case's file into the store (same DEK 2 and file id: only names are new).
    for n, v in enumerate(cases):
        (root_storage / names.entry_for(f"case{n}", root_id)[0]).write_bytes(X(v["file"]))
    # One Volume per case: every case file has the same file id, and sealfs keys its chunk
    # cache by file id (two backend files with one file id are taken for hard links).
    for n, v in enumerate(cases):
        vol = await Volume.load(LocalBackend(store), KeySecrets(keyfile=keyfile))
        try:
            data = await vol.read_file(f"case{n}")
        finally:
            await vol.close()
        assert len(data) == v["expected_size"], v["label"]
        assert hashlib.sha256(data).hexdigest() == v["expected_sha256"], v["label"]


# -- extended attributes (FORMAT.md 12) -------------------------------------------------------------
@pytest.mark.parametrize("v", FMT["xattrs"]["blobs"], ids=lambda v: v["label"])
def test_xattr_blob(v):
    x = FMT["xattrs"]
    key, loc_key = X(x["xattr_key"]), X(x["locator_key"])
    assert key == kdf.xattr_key(IN["dek1"]) and loc_key == kdf.locator_key(IN["dek1"])
    kind, ident, raw = v["kind"].encode(), X(v["id"]), X(v["bytes"])
    entries = {k.encode(): X(val) for k, val in v["entries"].items()}
    # sealfs writes exactly these bytes and reads them back
    assert seal_xattrs(key, kind, ident, entries, nonce=X(v["nonce"])) == raw
    assert open_xattrs(key, kind, ident, raw) == entries
    assert pack_entries(entries).hex() == v["payload"]
    loc = xattr_locator(loc_key, kind, ident)
    assert (loc, xattr_blob_path(loc)) == (v["locator"], v["blob_path"])
    # FORMAT.md 12, byte by byte
    assert raw[:8] == b"SEALFS\x02X" and raw[8:20].hex() == v["nonce"]
    assert v["aad"] == (b"sealfs.xattr" + raw[:8] + kind + ident).hex()
    assert AESGCM(key).decrypt(raw[8:20], raw[20:], X(v["aad"])).hex() == v["payload"]
    assert hmac.new(loc_key, b"x" + kind + ident, hashlib.sha256).hexdigest() == v["hmac"]
    assert base64_b32(X(v["hmac"]))[:32] == v["locator"]
    # the independent reader
    keys = ind_keys()
    assert keys.xattr_blob(kind, ident) == v["blob_path"]
    assert ind.open_xattr_blob(keys, kind, ident, raw) == entries
    for name in entries:                   # nothing in clear
        assert name not in raw
    # bound to its owner: the other kind, or another id, fails
    other = (b"d" if kind == b"f" else b"f", ident)
    for owner in (other, (kind, bytes(16))):
        with pytest.raises(IntegrityError):
            open_xattrs(key, *owner, raw)
        with pytest.raises(ind.FormatError):
            ind.open_xattr_blob(keys, *owner, raw)


def base64_b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


@pytest.mark.parametrize("v", FMT["xattrs"]["invalid"], ids=lambda v: v["label"])
def test_xattr_blob_invalid(v):
    key = X(FMT["xattrs"]["xattr_key"])
    kind, ident, raw = v["kind"].encode(), X(v["id"]), X(v["bytes"])
    with pytest.raises(IntegrityError):
        open_xattrs(key, kind, ident, raw)
    with pytest.raises(ind.FormatError):
        ind.open_xattr_blob(ind_keys(), kind, ident, raw)


# -- a complete store ------------------------------------------------------------------------------
def materialize(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for bpath, content in STORE["files"].items():
        p = dest / bpath
        if content is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(X(content))
    return dest


def check_tree(entries: dict, files: dict, extra_links: dict | None = None) -> None:
    """entries against the store's tree; extra_links: links a reader's directory link
    counts may add to 2 + subdirectories (by path)."""
    tree = STORE["tree"]
    extra_links = extra_links or {}
    assert set(entries) == set(tree)
    for path, t in tree.items():
        e = entries[path]
        assert (e["kind"], e["mode"], e["uid"], e["gid"]) == (t["kind"], t["mode"], t["uid"], t["gid"]), path
        if t["kind"] != int(Kind.DIRECTORY):
            assert e["size"] == t["size"], path
            assert e["rdev"] == t["rdev"], path
            if path in files:
                assert hashlib.sha256(files[path]).hexdigest() == t["sha256"], path
        else:
            assert e["nlink"] == t["nlink"] + extra_links.get(path, 0), path


def test_store_independent(tmp_path: Path):
    store = materialize(tmp_path / "s")
    r = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    assert r.errors == []
    assert r.orphans == STORE["orphans"]
    assert r.root.identity.hex() == STORE["root"]["dir_id"]
    assert (r.root.storage, r.root.nlink) == (STORE["root"]["storage"], STORE["root"]["nlink"])
    kind_num = {v: k for k, v in ind.KINDS.items()}
    entries = {p: {"kind": kind_num[e.kind], "mode": e.mode, "uid": e.uid, "gid": e.gid,
                   "size": e.size, "rdev": e.rdev, "nlink": e.nlink} for p, e in r.entries.items()}
    check_tree(entries, r.files)
    for path, t in STORE["tree"].items():       # where each entry lives (FORMAT.md 1)
        e = r.entries[path]
        if e.kind == "directory":
            assert (e.backend_path, e.storage) == (t["stub"], t["storage"]), path
        else:
            assert e.backend_path == t["backend_path"], path
    assert r.entries["link"].target == STORE["tree"]["link"]["target"]
    assert r.xattr_orphans == STORE["xattr_orphans"]
    for path, t in STORE["tree"].items():       # xattrs and ACLs (FORMAT.md 12)
        want = {k.encode(): X(val) for k, val in t.get("xattrs", {}).items()}
        assert r.entries[path].xattrs == want, path
    assert r.root.xattrs == {}
    assert r.entries["crash-tail"].size_source == "tail"
    assert r.entries["crash-stale-header"].size_source == "stale-header"
    assert r.pin_fingerprint == FMT["config"]["keyfile_volume"]["pin"]["fingerprint"]


def test_store_shape():
    """FORMAT.md 1: a flat store. Every entry lives in a storage d/<2>/<30>, at most a stub
    deeper, whatever the plaintext depth; no store path comes near the 300-character bound."""
    paths = [p for p in STORE["files"] if p not in ("sealfs.json", "sealfs.dir")
             and p != "x" and not p.startswith("x/")]             # xattr blobs: x/<2>/<30>
    assert all(p == "d" or p.startswith("d/") for p in paths)
    blobs = [p for p in STORE["files"] if p.startswith("x/")]
    assert blobs and all(p.count("/") in (1, 2) for p in blobs)
    assert max(p.count("/") for p in paths) == 4          # d/xx/storage/stub/sealfs.dir
    assert max(len(p) for p in STORE["files"]) <= 300
    deepest = max(STORE["tree"], key=lambda p: p.count("/"))
    assert deepest.count("/") == 3                         # docs/<long>/deeper/leaf
    assert STORE["tree"][deepest]["backend_path"].count("/") == 3


async def test_store_sealfs(tmp_path: Path):
    store = materialize(tmp_path / "s")
    keyfile = tmp_path / "k"
    keyfile.write_bytes(X(STORE["keyfile"]))
    keyfile.chmod(0o600)  # secret files: owner only (or they are refused)
    vol = await Volume.load(LocalBackend(store), KeySecrets(keyfile=keyfile))
    try:
        entries, files = {}, {}
        listing = await vol.walk()
        for path, attr in listing:
            entries[path] = {"kind": int(attr.kind), "mode": attr.mode, "uid": attr.uid,
                             "gid": attr.gid, "size": attr.size, "rdev": attr.rdev,
                             "nlink": attr.nlink}
            if attr.kind in (Kind.REGULAR, Kind.SYMLINK):
                files[path] = await vol.read_file(path)
        assert listing.problems == []
        # Locally a directory's link count is its storage's (FORMAT.md 1), which also
        # counts a leftover temporary stub (sealfs.tmp.*) until it is removed.
        temp_stubs = {path: sum(1 for p, v in STORE["files"].items() if v is None
                                and p.startswith(t.get("storage", "-") + "/sealfs.tmp."))
                      for path, t in list(STORE["tree"].items()) + [("", STORE["root"])]}
        assert temp_stubs["docs"] == 1 and temp_stubs[""] == 1
        check_tree(entries, files, temp_stubs)
        assert (await vol.stat("")).nlink == STORE["root"]["nlink"] + temp_stubs[""]
        assert (await vol.stat("")).identity.hex() == STORE["root"]["dir_id"]
        assert await vol.readlink("link") == STORE["tree"]["link"]["target"]
        for path, t in STORE["tree"].items():   # xattrs and ACLs (FORMAT.md 12)
            want = {k.encode(): X(val) for k, val in t.get("xattrs", {}).items()}
            assert sorted(await vol.listxattr(path)) == sorted(want), path
            for name, value in want.items():
                assert await vol.getxattr(path, name) == value, (path, name)
        assert (await vol.stat("docs/acl.txt")).mode & 0o777 == 0o640   # the ACL's bits
    finally:
        await vol.close()
    # Reading never writes: the crash states are still there for the independent reader.
    r = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    assert r.errors == []
    assert r.entries["crash-tail"].size_source == "tail"
    assert r.entries["crash-stale-header"].size_source == "stale-header"
    # The first writer repairs them (cuts the tail, rewrites the stale header).
    vol = await Volume.load(LocalBackend(store), KeySecrets(keyfile=keyfile))
    try:
        for path in ("crash-tail", "crash-stale-header"):
            f = await vol.open(path, write=True)
            await f.close()
    finally:
        await vol.close()
    r = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    assert r.errors == []
    assert r.entries["crash-tail"].size_source == "header"
    assert r.entries["crash-stale-header"].size_source == "header"


def test_moved_entry_is_reported_not_renamed(tmp_path: Path):
    store = materialize(tmp_path / "s")
    r0 = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    src = store / r0.entries["hello.txt"].backend_path
    docs = store / r0.entries["docs"].storage
    shutil.move(src, docs / src.name)
    r = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    assert "hello.txt" not in r.entries and "docs/hello.txt" not in r.entries
    assert [b for b, _ in r.errors] == [f"{r0.entries['docs'].storage}/{src.name}"]


def test_copied_stub_is_reported_once(tmp_path: Path):
    """FORMAT.md 6 and 11: a stub's record copied over another's shows one directory under
    two names; the second record reached is an error, and the storage the overwritten
    record named becomes an orphan."""
    store = materialize(tmp_path / "s")
    r0 = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    docs, uni = r0.entries["docs"], r0.entries["Grüße"]
    (store / uni.backend_path / "sealfs.dir").write_bytes(
        (store / docs.backend_path / "sealfs.dir").read_bytes())
    r = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    first, second = sorted([docs.backend_path, uni.backend_path])
    assert [b for b, _ in r.errors] == [second]
    assert "copied stub" in r.errors[0][1]
    assert sorted(r.orphans) == sorted(STORE["orphans"] + [uni.storage])


def test_foreign_entry_is_reported_never_followed(tmp_path: Path):
    """FORMAT.md 1, rule 3: a symlink in a storage is reported, never followed, even when
    it points at a stub or a file sealfs wrote."""
    store = materialize(tmp_path / "s")
    r0 = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    storage = store / STORE["root"]["storage"]
    docs_stub = r0.entries["docs"].backend_path.rsplit("/", 1)[1]
    names = NameCipher(kdf.name_key(IN["dek1"]))
    evil = names.entry_for("evil", X(STORE["root"]["dir_id"]))[0]
    (storage / evil).symlink_to(docs_stub)
    r = ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    assert "evil" not in r.entries
    assert [b for b, _ in r.errors] == [f"{STORE['root']['storage']}/{evil}"]
    assert "never opened" in r.errors[0][1]


async def test_format1_store_is_refused_in_one_line(tmp_path: Path):
    """FORMAT.md 3: a format-1 store is refused with one line naming its version."""
    store = materialize(tmp_path / "s")
    doc = json.loads((store / "sealfs.json").read_text())
    doc["version"] = 1
    (store / "sealfs.json").write_text(json.dumps(doc))
    with pytest.raises(ind.FormatError, match="format-1 store"):
        ind.decrypt_store(store, keyfile=X(STORE["keyfile"]))
    keyfile = tmp_path / "k"
    keyfile.write_bytes(X(STORE["keyfile"]))
    keyfile.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        await Volume.load(LocalBackend(store), KeySecrets(keyfile=keyfile))
    message = str(info.value)
    assert "format-1 store" in message and "format 2" in message and "\n" not in message
