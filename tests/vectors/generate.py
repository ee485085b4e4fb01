"""Generate the sealfs format 2 test vectors (run once; the outputs are checked into git).

    python tests/vectors/generate.py            # writes format_v2.json and store_v2.json
    python tests/vectors/generate.py --check    # regenerates in memory, diffs against the files

Every value is produced by the sealfs code itself (sealfs.crypto) from fixed inputs and
fixed nonces. tests/test_format_vectors.py recomputes them with sealfs (so a format change
fails) and decrypts them with tests/independent_decryptor.py (so FORMAT.md is enough to
read them). Never regenerate to make a failing test pass: a diff here is a format change.

format_v2.json   primitives: HKDF outputs, locators, headers, sealfs.dir records, chunks,
                 names, layout sizes, sealfs.json (keyfile and passphrase), size resolution,
                 xattr blobs (key, locator, payload, bytes, and blobs that must fail).
store_v2.json    a complete small store (chunk size 4096) as {backend path: hex | null},
                 with the plaintext tree a reader must produce from it (xattrs and ACLs
                 included) and its orphans (storages, xattr blobs).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import struct
import sys
import tempfile
from pathlib import Path

from sealfs.crypto.format import kdf
from sealfs.crypto.format.chunks import ChunkCipher, chunk_aad
from sealfs.crypto.format.config import VolumeConfig, WrappedDek, canonical_json
from sealfs.crypto.format.constants import (
    CONFIG_NAME,
    DIR_META_NAME,
    HIDDEN_PREFIX,
    INFO_CONFIG,
    INFO_DIRS,
    INFO_FILE,
    INFO_LOCATOR,
    INFO_NAMES,
    INFO_PIN,
    INFO_XATTRS,
    META_FLAG_XATTRS,
    STORAGE_DIR,
    TEMP_PREFIX,
)
from sealfs.crypto.format.header import FileHeader, Kind, Metadata, seal_dir_meta, seal_header
from sealfs.crypto.format.layout import (
    chunk_plain_length,
    final_index,
    logical_size,
    slot_offset,
    stored_size,
)
from sealfs.crypto.format.locator import locator, storage_path
from sealfs.crypto.format.names import NameCipher, pad_name, sidecar_of
from sealfs.crypto.format.xattrs import (
    KIND_DIR,
    KIND_FILE,
    blob_path,
    pack_entries,
    seal_xattrs,
    xattr_locator,
)
from sealfs.crypto.keys.kms_local import KeyfileKek, PassphraseKek

HERE = Path(__file__).resolve().parent
CREATED = "2024-01-01T00:00:00Z"
CTIME_NS = 1_717_243_200_123_456_789          # 2024-06-01T12:00:00.123456789Z


def h(data: bytes) -> str:
    return data.hex()


def fixed(label: str, n: int) -> bytes:
    """Deterministic 'random' bytes: the first n bytes of SHA-256 chains over the label."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"sealfs-vectors/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(n))


# ---------------------------------------------------------------------------------------
INPUTS = {
    "dek1": bytes(range(0x00, 0x20)),          # DEK id 1: the volume's name DEK
    "dek2": bytes(range(0x20, 0x40)),          # DEK id 2: the current DEK for new files
    "keyfile": bytes(range(0x40, 0x60)),
    "file_id": bytes(range(0xa0, 0xb0)),
    "dir_id": bytes(range(0xd0, 0xe0)),
    "other_dir_id": bytes(range(0xe0, 0xf0)),
    "volume_id": bytes(range(0x70, 0x80)),
}


def hkdf_vectors() -> dict:
    dek = INPUTS["dek1"]
    fid = INPUTS["file_id"]
    pin_key = kdf.hkdf(dek, INFO_PIN, 32)
    return {
        "ikm": h(dek),
        "file_key": {"salt": h(fid), "info": INFO_FILE.decode(), "length": 32,
                     "okm": h(kdf.file_key(dek, fid))},
        "file_key_dek2": {"ikm": h(INPUTS["dek2"]), "salt": h(fid), "info": INFO_FILE.decode(),
                          "length": 32, "okm": h(kdf.file_key(INPUTS["dek2"], fid))},
        "name_key": {"salt": None, "info": INFO_NAMES.decode(), "length": 64,
                     "okm": h(kdf.name_key(dek))},
        "config_mac_key": {"salt": None, "info": INFO_CONFIG.decode(), "length": 32,
                           "okm": h(kdf.config_mac_key(dek))},
        "dir_meta_key": {"salt": None, "info": INFO_DIRS.decode(), "length": 32,
                         "okm": h(kdf.dir_meta_key(dek))},
        "locator_key": {"salt": None, "info": INFO_LOCATOR.decode(), "length": 32,
                        "okm": h(kdf.locator_key(dek))},
        "pin_key": {"salt": None, "info": INFO_PIN.decode(), "length": 32, "okm": h(pin_key)},
        "xattr_key": {"salt": None, "info": INFO_XATTRS.decode(), "length": 32,
                      "okm": h(kdf.xattr_key(dek))},
        "pin_fingerprint": kdf.pin_fingerprint(dek),
    }


def meta_json(meta: Metadata) -> dict:
    return {"kind": int(meta.kind), "flags": meta.flags, "mode": meta.mode, "uid": meta.uid,
            "gid": meta.gid, "rdev": meta.rdev, "size": meta.size, "ctime": meta.ctime_ns}


def header_vectors() -> list:
    out = []
    cases = [
        ("regular file, dek 2", 2, INPUTS["dek2"], Metadata(Kind.REGULAR, 0o644, 1000, 1000, 0, 12345)),
        ("empty file, dek 1", 1, INPUTS["dek1"], Metadata(Kind.REGULAR, 0o600, 0, 0, 0, 0)),
        ("symlink", 2, INPUTS["dek2"], Metadata(Kind.SYMLINK, 0o777, 1000, 100, 0, 14)),
        ("char device", 2, INPUTS["dek2"], Metadata(Kind.CHAR, 0o620, 0, 5, (4 << 8) | 1, 0)),
        ("setuid, large ids and size", 2, INPUTS["dek2"],
         Metadata(Kind.REGULAR, 0o4755, 0xfffffffe, 0xfffffffe, 0, (1 << 40) + 3)),
        ("sealed ctime", 2, INPUTS["dek2"],
         Metadata(Kind.REGULAR, 0o640, 1000, 1000, 0, 7, CTIME_NS)),
        ("xattr flag (the file has a blob)", 2, INPUTS["dek2"],
         Metadata(Kind.REGULAR, 0o644, 1000, 1000, 0, 5, CTIME_NS, META_FLAG_XATTRS)),
    ]
    for i, (label, dek_id, dek, meta) in enumerate(cases):
        key = kdf.file_key(dek, INPUTS["file_id"])
        nonce = fixed(f"header/{i}", 12)
        raw = seal_header(key, FileHeader(dek_id, INPUTS["file_id"], meta), nonce=nonce)
        out.append({"label": label, "dek_id": dek_id, "file_id": h(INPUTS["file_id"]),
                    "file_key": h(key), "nonce": h(nonce), "meta": meta_json(meta),
                    "aad": h(raw[:28]), "bytes": h(raw)})
    return out


def dir_meta_vectors() -> list:
    out = []
    key = kdf.dir_meta_key(INPUTS["dek1"])
    cases = [("root", INPUTS["dir_id"], Metadata(Kind.DIRECTORY, 0o755, 1000, 1000)),
             ("sticky tmp", INPUTS["other_dir_id"], Metadata(Kind.DIRECTORY, 0o1777, 0, 0)),
             ("setgid, sealed ctime", INPUTS["dir_id"],
              Metadata(Kind.DIRECTORY, 0o2775, 1000, 50, ctime_ns=CTIME_NS)),
             ("xattr flag (the directory has a blob)", INPUTS["other_dir_id"],
              Metadata(Kind.DIRECTORY, 0o755, 0, 0, ctime_ns=CTIME_NS, flags=META_FLAG_XATTRS))]
    for i, (label, dir_id, meta) in enumerate(cases):
        nonce = fixed(f"dir/{i}", 12)
        raw = seal_dir_meta(key, dir_id, meta, nonce=nonce)
        out.append({"label": label, "dir_id": h(dir_id), "dir_meta_key": h(key), "nonce": h(nonce),
                    "meta": meta_json(meta), "aad": h(b"sealfs.dir" + raw[:8]),
                    "plaintext": h(dir_id + _meta_bytes(meta)), "bytes": h(raw)})
    return out


def _meta_bytes(meta: Metadata) -> bytes:
    """The 40-byte sealed metadata, packed from FORMAT.md 7.2 (struct ">BB2xIIIQQQ")."""
    return struct.pack(">BB2xIIIQQQ", int(meta.kind), meta.flags, meta.mode, meta.uid, meta.gid,
                       meta.rdev, meta.size, meta.ctime_ns)


def locator_vectors() -> dict:
    """FORMAT.md 1: L = b32(HMAC-SHA256(locator key, id))[0:32], storage = d/L[0:2]/L[2:32]."""
    key = kdf.locator_key(INPUTS["dek1"])
    out = []
    for label, dir_id in (("dir_id", INPUTS["dir_id"]), ("other_dir_id", INPUTS["other_dir_id"]),
                          ("all zero", bytes(16)), ("all ones", b"\xff" * 16)):
        loc = locator(key, dir_id)
        out.append({"label": label, "dir_id": h(dir_id),
                    "hmac": h(hmac.new(key, dir_id, hashlib.sha256).digest()),
                    "locator": loc, "storage": storage_path(loc)})
    return {"locator_key": h(key), "locators": out}


def chunk_vectors() -> dict:
    cs = 4096
    key = kdf.file_key(INPUTS["dek2"], INPUTS["file_id"])
    cipher = ChunkCipher(key, INPUTS["file_id"])
    cases = [
        ("empty final (empty file)", 0, b"", True),
        ("1-byte final", 0, b"A", True),
        ("full non-final", 0, pattern(cs, 1), False),
        ("full final", 1, pattern(cs, 2), True),
        ("partial final at index 2", 2, pattern(100, 3), True),
        ("index above 2^32", (1 << 32) + 5, b"big index", True),
    ]
    out = []
    for i, (label, index, plain, final) in enumerate(cases):
        nonce = fixed(f"chunk/{i}", 12)
        sealed = cipher.seal(index, plain, final, nonce=nonce)
        out.append({"label": label, "index": index, "final": final, "nonce": h(nonce),
                    "plaintext": h(plain), "aad": h(chunk_aad(INPUTS["file_id"], index, final)),
                    "sealed": h(sealed)})
    return {"chunk_size": cs, "dek_id": 2, "file_id": h(INPUTS["file_id"]), "file_key": h(key),
            "chunks": out}


def name_vectors() -> dict:
    nk = kdf.name_key(INPUTS["dek1"])
    names = NameCipher(nk)
    cases = [
        ("short", "hello.txt", INPUTS["dir_id"]),
        ("same name, other directory", "hello.txt", INPUTS["other_dir_id"]),
        ("15 bytes", "a" * 15, INPUTS["dir_id"]),
        ("16 bytes: no extra padding block", "b" * 16, INPUTS["dir_id"]),
        ("17 bytes: two blocks", "c" * 17, INPUTS["dir_id"]),
        ("128 bytes: longest short form", "d" * 128, INPUTS["dir_id"]),
        ("129 bytes: long-name form", "e" * 129, INPUTS["dir_id"]),
        ("255 bytes: longest name", "f" * 255, INPUTS["dir_id"]),
        ("unicode", "Grüße, 日本語 🎉.txt", INPUTS["dir_id"]),
        ("unicode, long (3-byte chars)", "日" * 60, INPUTS["dir_id"]),
        ("leading dot", ".bashrc", INPUTS["dir_id"]),
    ]
    out = []
    for label, name, dir_id in cases:
        raw = name.encode("utf-8")
        encoded = names.encode(name, dir_id)
        entry, long = names.entry_for(name, dir_id)
        out.append({"label": label, "name": name, "name_utf8": h(raw), "dir_id": h(dir_id),
                    "padded": h(pad_name(raw)), "encoded": encoded, "entry": entry,
                    "sidecar_name": sidecar_of(entry) if long else None,
                    "sidecar_content": long})
    errors = [
        {"label": "256 bytes", "name": "g" * 256, "error": "ENAMETOOLONG"},
        {"label": "86 x 3-byte chars = 258 bytes", "name": "日" * 86, "error": "ENAMETOOLONG"},
        {"label": "empty", "name": "", "error": "EINVAL"},
        {"label": "dot", "name": ".", "error": "EINVAL"},
        {"label": "dotdot", "name": "..", "error": "EINVAL"},
        {"label": "slash", "name": "a/b", "error": "EINVAL"},
        {"label": "NUL", "name": "a\0b", "error": "EINVAL"},
    ]
    return {"name_key": h(nk), "names": out, "errors": errors}


def layout_vectors() -> list:
    out = []
    for cs in (4096, 65536):
        for size in (0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * cs + 100, 10**6):
            out.append({"chunk_size": cs, "size": size, "stored": stored_size(size, cs),
                        "final_index": final_index(size, cs),
                        "final_length": chunk_plain_length(final_index(size, cs), size, cs),
                        "final_offset": slot_offset(final_index(size, cs), cs)})
    invalid = []
    for cs in (4096,):
        for stored in (0, 95, 96, 96 + 27, 96 + 4096 + 28 + 1, 96 + 4096 + 28 + 27):
            invalid.append({"chunk_size": cs, "stored": stored,
                            "size": logical_size(stored, cs)})
    return out + invalid


def config_vectors(tmp: Path) -> dict:
    keyfile = tmp / "vectors.key"
    keyfile.write_bytes(INPUTS["keyfile"])
    keyfile.chmod(0o600)  # secret files: owner only (or they are refused)
    kek = KeyfileKek(keyfile)
    w1, w2 = kek.wrap(INPUTS["dek1"]), kek.wrap(INPUTS["dek2"])
    cfg = VolumeConfig(
        volume_id=INPUTS["volume_id"], chunk_size=4096, kek=kek.config_entry(),
        deks=[WrappedDek(1, w1.wrapped, w1.algorithm, w1.kek_version, CREATED),
              WrappedDek(2, w2.wrapped, w2.algorithm, w2.kek_version, "2024-06-01T12:00:00Z")],
        name_dek_id=1, current_dek_id=2, created=CREATED)
    mac_key = kdf.config_mac_key(INPUTS["dek1"])
    keyfile_vol = {
        "keyfile": h(INPUTS["keyfile"]),
        "deks": {"1": h(INPUTS["dek1"]), "2": h(INPUTS["dek2"])},
        "wrapped": {"1": h(w1.wrapped), "2": h(w2.wrapped)},
        "config_mac_key": h(mac_key),
        "canonical_body": canonical_json(cfg.body()).decode("ascii"),
        "mac": cfg.mac(mac_key),
        "pin": {"volume_id": INPUTS["volume_id"].hex(), "fingerprint": kdf.pin_fingerprint(INPUTS["dek1"])},
        "sealfs_json": cfg.serialize(mac_key).decode("utf-8"),
    }
    # Passphrase volume: a small scrypt cost so that tests stay fast (real volumes use 2^17).
    salt = fixed("scrypt-salt", 32)
    passphrase = b"correct horse battery staple"
    pk = PassphraseKek(passphrase, salt, 1 << 10, 8, 1)
    pw = pk.wrap(INPUTS["dek1"])
    pcfg = VolumeConfig(volume_id=fixed("pp-volume", 16), chunk_size=65536, kek=pk.config_entry(),
                        deks=[WrappedDek(1, pw.wrapped, pw.algorithm, pw.kek_version, CREATED)],
                        name_dek_id=1, current_dek_id=1, created=CREATED)
    import hashlib as _h
    passphrase_vol = {
        "passphrase": passphrase.decode(),
        "scrypt": {"salt": h(salt), "n": 1 << 10, "r": 8, "p": 1, "length": 32},
        "kek": h(_h.scrypt(passphrase, salt=salt, n=1 << 10, r=8, p=1, dklen=32)),
        "dek": h(INPUTS["dek1"]),
        "wrapped": h(pw.wrapped),
        "mac": pcfg.mac(mac_key),
        "sealfs_json": pcfg.serialize(mac_key).decode("utf-8"),
    }
    return {"keyfile_volume": keyfile_vol, "passphrase_volume": passphrase_vol}


# -- extended attributes (FORMAT.md 12) ------------------------------------------------------
def acl_value(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL in the kernel's xattr form: u32le version 2, then (u16le tag, u16le perm,
    u32le id) per entry (id 0xffffffff where the tag has none)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


NO_ID = 0xFFFFFFFF
#: a minimal-plus-named-user access ACL: user::rw- user:1001:r-- group::r-- mask::r-- other::---
ACCESS_ACL = acl_value((0x01, 6, NO_ID), (0x02, 4, 1001), (0x04, 4, NO_ID), (0x10, 4, NO_ID),
                       (0x20, 0, NO_ID))
#: a default ACL: user::rwx group::r-x group:50:rwx mask::rwx other::---
DEFAULT_ACL = acl_value((0x01, 7, NO_ID), (0x04, 5, NO_ID), (0x08, 7, 50), (0x10, 7, NO_ID),
                        (0x20, 0, NO_ID))


def xattr_json(entries: dict[bytes, bytes]) -> dict[str, str]:
    """{name (ASCII): value hex}, sorted by name."""
    return {n.decode("ascii"): h(v) for n, v in sorted(entries.items())}


def xattr_vectors() -> dict:
    key = kdf.xattr_key(INPUTS["dek1"])
    loc_key = kdf.locator_key(INPUTS["dek1"])
    cases = [
        ("a file, one user attribute", KIND_FILE, INPUTS["file_id"], {b"user.mime": b"text/plain"}),
        ("a file, several, unsorted on input", KIND_FILE, INPUTS["file_id"],
         {b"user.z": b"last", b"security.capability": bytes.fromhex("0100000200200000" + "00" * 12),
          b"trusted.t": b"", b"user.a": b"\x00\xff"}),
        ("a file, an access ACL", KIND_FILE, INPUTS["file_id"],
         {b"system.posix_acl_access": ACCESS_ACL}),
        ("a directory, a default ACL", KIND_DIR, INPUTS["dir_id"],
         {b"system.posix_acl_default": DEFAULT_ACL, b"user.d": b"dir value"}),
        ("the same directory id as a file id: another owner", KIND_FILE, INPUTS["dir_id"],
         {b"user.d": b"dir value"}),
        ("a 255-byte name, a 64 KiB value", KIND_FILE, INPUTS["file_id"],
         {b"user." + b"n" * 250: pattern(65536, 9)}),
    ]
    out = []
    for i, (label, kind, ident, entries) in enumerate(cases):
        nonce = fixed(f"xattr/{i}", 12)
        raw = seal_xattrs(key, kind, ident, entries, nonce=nonce)
        loc = xattr_locator(loc_key, kind, ident)
        out.append({"label": label, "kind": kind.decode(), "id": h(ident),
                    "entries": xattr_json(entries), "nonce": h(nonce),
                    "hmac": h(hmac.new(loc_key, b"x" + kind + ident, hashlib.sha256).digest()),
                    "locator": loc, "blob_path": blob_path(loc),
                    "payload": h(pack_entries(entries)), "aad": h(b"sealfs.xattr" + raw[:8] + kind + ident),
                    "bytes": h(raw)})
    # blobs every reader must refuse for the owner given (IntegrityError / EIO)
    good = seal_xattrs(key, KIND_FILE, INPUTS["file_id"], {b"user.a": b"1"}, nonce=fixed("xattr/bad", 12))
    flipped = bytearray(good)
    flipped[-1] ^= 1
    bad_version = bytearray(good)
    bad_version[6] = 1
    aesgcm = __import__("cryptography.hazmat.primitives.ciphers.aead", fromlist=["AESGCM"]).AESGCM

    def sealed_payload(payload: bytes, n: int) -> bytes:
        public = good[:8]
        nonce = fixed(f"xattr/bad/{n}", 12)
        return public + nonce + aesgcm(key).encrypt(
            nonce, payload, b"sealfs.xattr" + public + KIND_FILE + INPUTS["file_id"])

    bad = [
        ("another file's blob (owner in the AAD)", KIND_FILE, INPUTS["file_id"],
         seal_xattrs(key, KIND_FILE, INPUTS["dir_id"], {b"user.a": b"1"}, nonce=fixed("xattr/other", 12))),
        ("a directory's blob, same 16 bytes as the file id", KIND_FILE, INPUTS["dir_id"],
         seal_xattrs(key, KIND_DIR, INPUTS["dir_id"], {b"user.a": b"1"}, nonce=fixed("xattr/kind", 12))),
        ("tag flipped", KIND_FILE, INPUTS["file_id"], bytes(flipped)),
        ("version 1", KIND_FILE, INPUTS["file_id"], bytes(bad_version)),
        ("truncated below nonce and tag", KIND_FILE, INPUTS["file_id"], good[:35]),
        ("names unsorted (authentic)", KIND_FILE, INPUTS["file_id"],
         sealed_payload(b"\x06user.b\x00\x00\x00\x00\x06user.a\x00\x00\x00\x00", 0)),
        ("a name twice (authentic)", KIND_FILE, INPUTS["file_id"],
         sealed_payload(b"\x06user.a\x00\x00\x00\x00\x06user.a\x00\x00\x00\x00", 1)),
        ("an empty name (authentic)", KIND_FILE, INPUTS["file_id"],
         sealed_payload(b"\x00\x00\x00\x00\x00", 2)),
        ("a value longer than its payload (authentic)", KIND_FILE, INPUTS["file_id"],
         sealed_payload(b"\x06user.a\x00\x00\x00\x09abc", 3)),
    ]
    return {"xattr_key": h(key), "locator_key": h(loc_key), "blobs": out,
            "invalid": [{"label": label, "kind": kind.decode(), "id": h(ident), "bytes": h(raw)}
                        for label, kind, ident, raw in bad]}


# -- size resolution (crash ordering) ------------------------------------------------------
def _file_bytes(cipher: ChunkCipher, key: bytes, dek_id: int, header_size: int,
                content: bytes, cs: int, label: str, final_at: int | None = None) -> bytes:
    """A backend file: header recording header_size, then chunks of content; the chunk at
    final_at (default: the last) is sealed final, all others non-final."""
    count = max(1, -(-len(content) // cs))
    if final_at is None:
        final_at = count - 1
    meta = Metadata(Kind.REGULAR, 0o644, 1000, 1000, 0, header_size)
    out = bytearray(seal_header(key, FileHeader(dek_id, INPUTS["file_id"], meta),
                                nonce=fixed(f"{label}/header", 12)))
    for i in range(count):
        piece = content[i * cs:(i + 1) * cs]
        out += cipher.seal(i, piece, i == final_at, nonce=fixed(f"{label}/chunk/{i}", 12))
    return bytes(out)


def size_resolution_vectors() -> dict:
    cs = 4096
    dek_id, dek = 2, INPUTS["dek2"]
    key = kdf.file_key(dek, INPUTS["file_id"])
    cipher = ChunkCipher(key, INPUTS["file_id"])
    old = pattern(5000, 11)          # committed old content: 2 chunks, final chunk 1 (904 bytes)
    new = old + pattern(4000, 12)    # grown content: 3 chunks, final chunk 2 (712 bytes)
    small = old[:100]                # shrunk content: 1 chunk
    cases = []

    def add(label: str, data: bytes, size: int | None, explain: str, plaintext: bytes | None = None):
        cases.append({"label": label, "file": h(data), "expected_size": size,
                      "expected_sha256": (hashlib.sha256(plaintext).hexdigest()
                                          if plaintext is not None else None),
                      "explain": explain})

    committed_old = _file_bytes(cipher, key, dek_id, 5000, old, cs, "old")
    committed_new = _file_bytes(cipher, key, dek_id, 9000, new, cs, "new")
    add("consistent", committed_old, 5000, "header and length agree", old)

    # growth 5000 -> 9000, crash after step 1 (new chunk 2 written sealed final, old final
    # chunk 1 untouched, header old): S_h=5000 authenticates; chunk 2 is an uncommitted tail.
    grow1 = bytearray(committed_old)
    grow1 += b"\0" * (slot_offset(1, cs) + cs + 28 - len(grow1))
    grow1 += cipher.seal(2, new[2 * cs:], True, nonce=fixed("grow1/chunk/2", 12))
    add("growth, crash after new chunks", bytes(grow1), 5000,
        "S_h=5000: chunk 1 (904 bytes) authenticates final; the rest is an uncommitted tail", old)

    # ... crash after step 2 (old final chunk 1 resealed full non-final): header stale.
    grow2 = _file_bytes(cipher, key, dek_id, 5000, new, cs, "new")
    add("growth, crash before header", grow2, 9000,
        "S_h=5000: chunk 1 is now a full non-final chunk, fails; S_b=9000: chunk 2 authenticates final",
        new)
    add("growth, committed", committed_new, 9000, "header rewritten", new)

    # shrink 5000 -> 100: step 1 header first (crash here: S_h=100 fails, S_b=5000 wins).
    shrink1 = _file_bytes(cipher, key, dek_id, 100, old, cs, "old")
    add("shrink, crash after header", shrink1, 5000,
        "S_h=100: chunk 0 is a full non-final chunk, fails; S_b=5000: chunk 1 authenticates final", old)
    # step 2: new final chunk 0 (100 bytes) written over the start of slot 0; old bytes remain.
    shrink2 = bytearray(shrink1)
    sealed0 = cipher.seal(0, small, True, nonce=fixed("small/chunk/0", 12))
    shrink2[96:96 + len(sealed0)] = sealed0
    add("shrink, crash before truncate", bytes(shrink2), 100,
        "S_h=100: chunk 0 (100 bytes at its exact extent) authenticates final; the rest is a tail",
        small)
    add("shrink, committed", bytes(shrink2[:stored_size(100, cs)]), 100, "truncated", small)

    # damage
    add("truncated at a chunk boundary", committed_new[:stored_size(8192, cs)], None,
        "S_h=9000 needs chunk 2; S_b=8192: chunk 1 is not final -> EIO")
    flipped = bytearray(committed_old)
    flipped[slot_offset(1, cs) + 20] ^= 1
    add("final chunk flipped", bytes(flipped), None, "neither candidate authenticates -> EIO")
    add("garbage appended", committed_old + b"x" * 50, 5000,
        "S_h=5000 authenticates; the appended bytes are ignored as a tail", old)
    add("final chunk sealed non-final", _file_bytes(cipher, key, dek_id, 5000, old, cs, "nf",
                                                     final_at=-1), None,
        "no chunk carries the final flag -> EIO")
    # a hole: chunk 0 slot all zeros (non-final) reads as zeros
    hole = bytearray(committed_old)
    hole[96:96 + cs + 28] = bytes(cs + 28)
    add("zeroed non-final slot is a hole", bytes(hole), 5000,
        "size from S_h; chunk 0 reads as 4096 zero bytes", bytes(cs) + old[cs:])
    return {"chunk_size": cs, "dek_id": dek_id, "dek": h(dek), "file_id": h(INPUTS["file_id"]),
            "cases": cases}


# -- a complete store ---------------------------------------------------------------------
def store_vectors(tmp: Path, config_json: str) -> dict:
    """A format-2 store: every directory a stub (its record) in its parent's storage and a
    storage d/<locator of its id> holding its children (FORMAT.md 1)."""
    cs = 4096
    nk = NameCipher(kdf.name_key(INPUTS["dek1"]))
    dir_key = kdf.dir_meta_key(INPUTS["dek1"])
    loc_key = kdf.locator_key(INPUTS["dek1"])
    x_key = kdf.xattr_key(INPUTS["dek1"])
    files: dict[str, str | None] = {CONFIG_NAME: config_json.encode().hex()}
    tree: dict[str, dict] = {}
    counter = iter(range(10_000))

    def storage_of(dir_id: bytes) -> str:
        return storage_path(locator(loc_key, dir_id))

    def add_storage(dir_id: bytes) -> str:
        storage = storage_of(dir_id)
        files[STORAGE_DIR] = None
        files[storage.rsplit("/", 1)[0]] = None
        files[storage] = None
        return storage

    def add_blob(kind: bytes, ident: bytes, entries: dict[bytes, bytes], n: int) -> str:
        """The sealed xattr blob of an inode at its keyed locator (FORMAT.md 12)."""
        bpath = blob_path(xattr_locator(loc_key, kind, ident))
        files["x"] = None
        files[bpath.rsplit("/", 1)[0]] = None
        files[bpath] = seal_xattrs(x_key, kind, ident, entries,
                                   nonce=fixed(f"store/xattr/{n}", 12)).hex()
        return bpath

    def record(stub: str, dir_id: bytes, mode: int, n: int,
               xattrs: dict[bytes, bytes] | None = None) -> None:
        meta = Metadata(Kind.DIRECTORY, mode, 1000, 1000,
                        flags=META_FLAG_XATTRS if xattrs else 0)
        if xattrs:
            add_blob(KIND_DIR, dir_id, xattrs, n)
        files[f"{stub}/{DIR_META_NAME}".lstrip("/")] = seal_dir_meta(
            dir_key, dir_id, meta, nonce=fixed(f"store/dirmeta/{n}", 12)).hex()

    def mkdir(parent: str, parent_id: bytes, path: str, name: str | None, mode: int,
              xattrs: dict[bytes, bytes] | None = None) -> tuple[str, bytes]:
        """A directory (the root when name is None); returns (its storage, its id)."""
        n = next(counter)
        dir_id = fixed(f"store/dir/{n}", 16)
        storage = add_storage(dir_id)
        if name is None:
            stub = ""
        else:
            entry, long = nk.entry_for(name, parent_id)
            stub = f"{parent}/{entry}"
            files[stub] = None
            if long:
                files[sidecar_of(stub)] = long.encode().hex()
            tree[path] = {"kind": int(Kind.DIRECTORY), "mode": mode, "uid": 1000, "gid": 1000,
                          "storage": storage, "stub": stub}
            if xattrs:
                tree[path]["xattrs"] = xattr_json(xattrs)
        record(stub, dir_id, mode, n, xattrs)
        return storage, dir_id

    def mkfile(parent: str, parent_id: bytes, path: str, name: str, content: bytes,
               kind: Kind = Kind.REGULAR, mode: int = 0o644, rdev: int = 0,
               dek_id: int = 2, holes: tuple[int, ...] = (), raw: bytes | None = None,
               xattrs: dict[bytes, bytes] | None = None) -> bytes:
        n = next(counter)
        dek = INPUTS["dek1"] if dek_id == 1 else INPUTS["dek2"]
        fid = fixed(f"store/file/{n}", 16)
        key = kdf.file_key(dek, fid)
        cipher = ChunkCipher(key, fid)
        entry, long = nk.entry_for(name, parent_id)
        bpath = f"{parent}/{entry}"
        if raw is None:
            meta = Metadata(kind, mode, 1000, 1000, rdev, len(content),
                            flags=META_FLAG_XATTRS if xattrs else 0)
            data = bytearray(seal_header(key, FileHeader(dek_id, fid, meta),
                                         nonce=fixed(f"store/header/{n}", 12)))
            count = max(1, -(-len(content) // cs))
            for i in range(count):
                if i in holes:
                    data += bytes(cs + 28)
                else:
                    data += cipher.seal(i, content[i * cs:(i + 1) * cs], i == count - 1,
                                        nonce=fixed(f"store/chunk/{n}/{i}", 12))
            raw = bytes(data)
        files[bpath] = raw.hex()
        if long:
            files[sidecar_of(bpath)] = long.encode().hex()
        tree[path] = {"kind": int(kind), "mode": mode, "uid": 1000, "gid": 1000, "rdev": rdev,
                      "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
                      "backend_path": bpath}
        if kind == Kind.SYMLINK:
            tree[path]["target"] = content.decode()
        if xattrs:
            tree[path]["xattrs"] = xattr_json(xattrs)
            tree[path]["xattr_blob"] = add_blob(KIND_FILE, fid, xattrs, n)
        return fid

    root, root_id = mkdir("", b"", "", None, 0o755)
    mkfile(root, root_id, "hello.txt", "hello.txt", b"hello, sealfs\n")
    mkfile(root, root_id, "empty", "empty", b"", mode=0o600, dek_id=1)
    docs, docs_id = mkdir(root, root_id, "docs", "docs", 0o750)
    mkfile(docs, docs_id, "docs/multi.bin", "multi.bin", pattern(3 * cs + 100, 5))
    mkfile(docs, docs_id, "docs/exact.bin", "exact.bin", pattern(2 * cs, 6))
    long_name = "L" * 100 + "-long-name-" + "x" * 40          # 151 bytes -> long-name form
    mkfile(docs, docs_id, f"docs/{long_name}", long_name, b"long name content\n")
    long_dir = "D" * 200                                       # a long-named directory's stub
    ld, ld_id = mkdir(docs, docs_id, f"docs/{long_dir}", long_dir, 0o755)
    mkfile(ld, ld_id, f"docs/{long_dir}/inner.txt", "inner.txt", b"inside a long-named directory\n")
    deep, deep_id = mkdir(ld, ld_id, f"docs/{long_dir}/deeper", "deeper", 0o700)
    mkfile(deep, deep_id, f"docs/{long_dir}/deeper/leaf", "leaf", b"three levels down\n")
    mkdir(docs, docs_id, "docs/empty-dir", "empty-dir", 0o755)
    uni, uni_id = mkdir(root, root_id, "Grüße", "Grüße", 0o755)
    mkfile(uni, uni_id, "Grüße/日本語 🎉.txt", "日本語 🎉.txt", "こんにちは\n".encode())
    mkfile(root, root_id, "link", "link", b"docs/multi.bin", kind=Kind.SYMLINK, mode=0o777)
    mkfile(root, root_id, "fifo", "fifo", b"", kind=Kind.FIFO, mode=0o644)
    mkfile(root, root_id, "sparse", "sparse", bytes(2 * cs) + b"tail", holes=(0, 1))
    # crash states (see format_v2.json "size_resolution")
    n = next(counter)
    fid = fixed(f"store/file/{n}", 16)
    key = kdf.file_key(INPUTS["dek2"], fid)
    cipher = ChunkCipher(key, fid)
    content = pattern(5000, 21)
    hdr = seal_header(key, FileHeader(2, fid, Metadata(Kind.REGULAR, 0o644, 1000, 1000, 0, 5000)),
                      nonce=fixed("store/tail/header", 12))
    body = cipher.seal(0, content[:cs], False, nonce=fixed("store/tail/0", 12)) + \
        cipher.seal(1, content[cs:], True, nonce=fixed("store/tail/1", 12))
    tail = bytes(cs - len(content[cs:])) + cipher.seal(2, pattern(10, 1), True, nonce=fixed("store/tail/2", 12))
    mkfile(root, root_id, "crash-tail", "crash-tail", content, raw=hdr + body + tail)
    stale_hdr = seal_header(key, FileHeader(2, fid, Metadata(Kind.REGULAR, 0o644, 1000, 1000, 0, 10)),
                            nonce=fixed("store/stale/header", 12))
    mkfile(root, root_id, "crash-stale-header", "crash-stale-header", content, raw=stale_hdr + body)
    # leftovers every reader ignores
    files[f"{root}/{TEMP_PREFIX}0123456789abcdef"] = _file_bytes(
        cipher, key, 2, 3, b"tmp", cs, "store/tmp").hex()
    files[f"{docs}/{HIDDEN_PREFIX}fedcba9876543210"] = _file_bytes(
        cipher, key, 2, 3, b"del", cs, "store/del").hex()
    files[f"{root}/{TEMP_PREFIX}00dir"] = None
    # an interrupted mkdir (FORMAT.md 9.2, crash after step 2): a temporary stub whose
    # record names a storage, and that storage, an orphan (no live record names it)
    n = next(counter)
    orphan_id = fixed(f"store/dir/{n}", 16)
    orphan = add_storage(orphan_id)
    files[f"{docs}/{TEMP_PREFIX}5eed5eed5eed5eed"] = None
    record(f"{docs}/{TEMP_PREFIX}5eed5eed5eed5eed", orphan_id, 0o755, n)
    # extended attributes (FORMAT.md 12): a file with an access ACL (mode 0640: the ACL's
    # owner, mask and other), a directory with a default ACL and a user attribute
    mkfile(docs, docs_id, "docs/acl.txt", "acl.txt", b"readable by uid 1001\n", mode=0o640,
           xattrs={b"system.posix_acl_access": ACCESS_ACL, b"user.origin": b"vectors",
                   b"security.capability": bytes.fromhex("0100000200200000" + "00" * 12)})
    mkdir(docs, docs_id, "docs/shared", "shared", 0o2770,
          xattrs={b"system.posix_acl_default": DEFAULT_ACL, b"user.note": "ünïcode".encode()})
    # an orphan xattr blob (a removal or a last unlink interrupted after the inode's flag
    # went: no inode with the flag names it) and an interrupted blob update's temporary
    n = next(counter)
    orphan_blob = add_blob(KIND_FILE, fixed(f"store/file/{n}", 16), {b"user.gone": b"1"}, n)
    files[f"{orphan_blob.rsplit('/', 1)[0]}/{TEMP_PREFIX}0badc0ffee0badc0"] = seal_xattrs(
        x_key, KIND_FILE, fixed(f"store/file/{n}", 16), {b"user.half": b"1"},
        nonce=fixed("store/xattr/tmp", 12)).hex()
    # a directory's link count: 2 + its subdirectories (the stubs in its storage)
    parents = [p.rpartition("/")[0] for p, t in tree.items() if t["kind"] == int(Kind.DIRECTORY)]
    for path, t in tree.items():
        if t["kind"] == int(Kind.DIRECTORY):
            t["nlink"] = 2 + parents.count(path)
    return {"chunk_size": cs, "keyfile": h(INPUTS["keyfile"]),
            "root": {"dir_id": h(root_id), "mode": 0o755, "uid": 1000, "gid": 1000,
                     "storage": root, "nlink": 2 + parents.count("")},
            "orphans": [orphan], "xattr_orphans": [orphan_blob],
            "files": dict(sorted(files.items())), "tree": dict(sorted(tree.items()))}


def generate() -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        config = config_vectors(tmp)
        fmt = {
            "format": "sealfs", "version": 2,
            "inputs": {k: h(v) for k, v in INPUTS.items()},
            "hkdf": hkdf_vectors(),
            "locator": locator_vectors(),
            "headers": header_vectors(),
            "dir_meta": dir_meta_vectors(),
            "chunks": chunk_vectors(),
            "names": name_vectors(),
            "layout": layout_vectors(),
            "config": config,
            "size_resolution": size_resolution_vectors(),
            "xattrs": xattr_vectors(),
        }
        store = store_vectors(tmp, config["keyfile_volume"]["sealfs_json"])
    return fmt, store


def dump(obj: dict) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    fmt, store = generate()
    outputs = {HERE / "format_v2.json": dump(fmt), HERE / "store_v2.json": dump(store)}
    status = 0
    for path, text in outputs.items():
        if args.check:
            same = path.exists() and path.read_text(encoding="utf-8") == text
            print(f"{path.name}: {'unchanged' if same else 'DIFFERS'}")
            status |= 0 if same else 1
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
