"""An independent reader of sealfs format 2, written from docs/FORMAT.md only.

It imports nothing from sealfs: only the standard library and `cryptography` (for
AES-GCM, AES-SIV and the AES key wrap). HKDF, the canonical JSON and the base32 codec
are written out here. Use it to check that FORMAT.md is enough to read a store, and
that sealfs writes what FORMAT.md says.

    result = decrypt_store("/path/to/store", keyfile=Path("vol.key").read_bytes())
    result.files["docs/report.pdf"]      # bytes (regular files and symlink targets)
    result.entries["docs"]               # Entry(kind, mode, uid, gid, rdev, size, ...)
    result.entries["docs"].xattrs        # {name: value} (FORMAT.md 12), POSIX ACLs included
    result.errors                        # [(backend path, reason)] for damaged entries
    result.orphans                       # storages under d/ that no record names
    result.xattr_orphans                 # blobs under x/ that no inode's flag claims

Command line: python tests/independent_decryptor.py STORE KEYFILE [OUTDIR]
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat
import struct
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

# -- constants (FORMAT.md sections 1, 3, 6, 7) ---------------------------------------------
FORMAT = 2                        # sealfs.json "version"
FILE_VERSION = 1                  # file headers and chunk AADs (7.1, 7.3)
DIR_VERSION = 2                   # directory records (6)
MAGIC = b"SEALFS"
HEADER_SIZE = 96
PUBLIC_SIZE = 28
DIR_RECORD_SIZE = 92
DIR_PUBLIC_SIZE = 8
OVERHEAD = 28                     # nonce 12 + tag 16
STORAGES = "d"                    # d/<L[0:2]>/<L[2:32]> (1)
KINDS = {1: "regular", 2: "symlink", 3: "fifo", 4: "char", 5: "block", 6: "socket",
         7: "directory"}
LONG_NAME = re.compile(r"^sealfs\.ln\.[a-z2-7]{52}$")
CANONICAL_B32 = re.compile(r"^[a-z2-7]+$")
FANOUT = re.compile(r"^[a-z2-7]{2}$")
STORAGE = re.compile(r"^[a-z2-7]{30}$")
XATTRS = "x"                      # x/<X[0:2]>/<X[2:32]> (12)
XATTR_FLAG = 0x01                 # bit 0 of the sealed metadata's flags byte (7.2)
XATTR_PAYLOAD_MAX = 393216        # (12)
XATTR_VALUE_MAX = 65536


class FormatError(Exception):
    """Anything that does not authenticate or does not parse: EIO for that object."""


class KeyError_(Exception):
    """Wrong keyfile / passphrase, or a provider this reader cannot use."""


# -- primitives ------------------------------------------------------------------------------
def hkdf(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """RFC 5869 HKDF-SHA256."""
    prk = hmac.new(salt if salt is not None else bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode_canonical(text: str) -> bytes:
    if not CANONICAL_B32.match(text) or len(text) % 8 in (1, 3, 6):
        raise FormatError("not a base32 name")
    data = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    if b32encode(data) != text:
        raise FormatError("non-canonical base32 name")
    return data


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class Meta:
    kind: int
    mode: int
    uid: int
    gid: int
    rdev: int
    size: int
    ctime: int                    # ns; 0: none recorded
    flags: int = 0                # bit 0: the inode has an xattr blob (12)


def unpack_meta(raw: bytes) -> Meta:
    kind, flags, mode, uid, gid, rdev, size, ctime = struct.unpack(">BB2xIIIQQQ", raw)
    if kind not in KINDS:
        raise FormatError(f"unknown kind {kind}")
    if flags & ~XATTR_FLAG:
        raise FormatError(f"unknown metadata flags {flags:#x}")
    return Meta(kind, mode, uid, gid, rdev, size, ctime, flags)


# -- layout (section 7.3) ----------------------------------------------------------------------
def chunk_count(size: int, cs: int) -> int:
    return max(1, -(-size // cs))


def slot_offset(i: int, cs: int) -> int:
    return HEADER_SIZE + i * (cs + OVERHEAD)


def stored_size(size: int, cs: int) -> int:
    return HEADER_SIZE + size + OVERHEAD * chunk_count(size, cs)


def size_from_length(length: int, cs: int) -> int | None:
    body = length - HEADER_SIZE
    if body < OVERHEAD:
        return None
    k = -(-body // (cs + OVERHEAD))
    last = body - (k - 1) * (cs + OVERHEAD)
    if last < OVERHEAD:
        return None
    return body - OVERHEAD * k


def chunk_aad(file_id: bytes, index: int, final: bool) -> bytes:
    return b"sealfs" + bytes([FILE_VERSION]) + file_id + struct.pack(">QB", index, 1 if final else 0)


# -- config and keys (sections 2-4) ---------------------------------------------------------
@dataclass
class Keys:
    deks: dict[int, bytes]
    name_dek_id: int
    chunk_size: int
    volume_id: str
    config: dict

    @property
    def name_dek(self) -> bytes:
        return self.deks[self.name_dek_id]

    @property
    def name_key(self) -> bytes:
        return hkdf(self.name_dek, b"sealfs/v1/names", 64)

    @property
    def dir_key(self) -> bytes:
        return hkdf(self.name_dek, b"sealfs/v1/dirs", 32)

    @property
    def locator_key(self) -> bytes:
        return hkdf(self.name_dek, b"sealfs/v2/locator", 32)

    def storage(self, dir_id: bytes) -> str:
        """FORMAT.md 1: the backend path of the storage of the directory with this id."""
        loc = b32encode(hmac.new(self.locator_key, dir_id, hashlib.sha256).digest())[:32]
        return f"{STORAGES}/{loc[:2]}/{loc[2:]}"

    @property
    def xattr_key(self) -> bytes:
        return hkdf(self.name_dek, b"sealfs/v2/xattrs", 32)

    def xattr_blob(self, kind: bytes, ident: bytes) -> str:
        """FORMAT.md 12: the backend path of the blob of the inode (kind b"f"|b"d", id)."""
        loc = b32encode(hmac.new(self.locator_key, b"x" + kind + ident,
                                 hashlib.sha256).digest())[:32]
        return f"{XATTRS}/{loc[:2]}/{loc[2:]}"

    @property
    def pin_fingerprint(self) -> str:
        return hashlib.sha256(hkdf(self.name_dek, b"sealfs/v1/pin", 32)).hexdigest()

    def file_key(self, dek_id: int, file_id: bytes) -> bytes:
        if dek_id not in self.deks:
            raise FormatError(f"header names DEK {dek_id}, which the config does not hold")
        return hkdf(self.deks[dek_id], b"sealfs/v1/file", 32, salt=file_id)


def kek_from(config: dict, keyfile: bytes | None, passphrase: bytes | None) -> bytes:
    kek = config["kek"]
    provider = kek.get("provider")
    if provider == "keyfile":
        if keyfile is None or len(keyfile) != 32:
            raise KeyError_("a keyfile volume needs a 32-byte keyfile")
        return keyfile
    if provider == "passphrase":
        if passphrase is None:
            raise KeyError_("a passphrase volume needs the passphrase")
        params = kek["scrypt"]
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r > 1 << 30 or p * n * r > 1 << 23:
            raise FormatError("unreasonable scrypt parameters")   # FORMAT.md 4
        salt = base64.b64decode(params["salt"], validate=True)
        return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, dklen=32,
                              maxmem=256 * r * n + (1 << 20))
    raise KeyError_(f"provider {provider!r} needs an external key store; not supported here")


def open_config(raw: bytes, keyfile: bytes | None = None, passphrase: bytes | None = None) -> Keys:
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != "sealfs":
        raise FormatError("not a sealfs config")
    if doc.get("version") != FORMAT:
        raise FormatError(f"sealfs.json is a format-{doc.get('version')} store; "
                          f"this reader reads format {FORMAT}")
    cs = doc["chunk_size"]
    if not isinstance(cs, int) or cs < 4096 or cs > 4 << 20 or cs & (cs - 1):
        raise FormatError(f"bad chunk size {cs!r}")
    kek = kek_from(doc, keyfile, passphrase)
    deks: dict[int, bytes] = {}
    for entry in doc["deks"]:
        if entry["algorithm"] != "A256KW":
            raise KeyError_(f"DEK {entry['id']}: algorithm {entry['algorithm']} is not local")
        try:
            deks[int(entry["id"])] = aes_key_unwrap(kek, base64.b64decode(entry["wrapped"], validate=True))
        except InvalidUnwrap:
            raise KeyError_("wrong keyfile or passphrase") from None
    keys = Keys(deks, int(doc["name_dek"]), cs, doc["volume_id"], doc)
    body = {k: v for k, v in doc.items() if k != "mac"}
    expected = hmac.new(hkdf(keys.name_dek, b"sealfs/v1/config", 32), canonical_json(body),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(doc.get("mac", ""))):
        raise FormatError("sealfs.json MAC does not verify")
    return keys


# -- records -----------------------------------------------------------------------------------
def open_dir_record(keys: Keys, raw: bytes) -> tuple[bytes, Meta]:
    """FORMAT.md 6: (directory id, metadata); the id is sealed with the metadata."""
    if len(raw) != DIR_RECORD_SIZE or raw[:6] != MAGIC or raw[6] != DIR_VERSION or raw[7:8] != b"D":
        raise FormatError("bad directory record")
    public = raw[:DIR_PUBLIC_SIZE]
    try:
        plain = AESGCM(keys.dir_key).decrypt(raw[8:20], raw[20:], b"sealfs.dir" + public)
    except InvalidTag:
        raise FormatError("directory record does not authenticate") from None
    meta = unpack_meta(plain[16:])
    if meta.kind != 7:
        raise FormatError("directory record without directory kind")
    return plain[:16], meta


def open_xattr_blob(keys: Keys, kind: bytes, ident: bytes, raw: bytes) -> dict[bytes, bytes]:
    """FORMAT.md 12: the attributes of the inode (kind, id) from its blob."""
    if not 20 + 16 <= len(raw) <= 20 + XATTR_PAYLOAD_MAX + 16 or raw[:6] != MAGIC \
            or raw[6] != 2 or raw[7:8] != b"X":
        raise FormatError("bad xattr blob")
    try:
        payload = AESGCM(keys.xattr_key).decrypt(raw[8:20], raw[20:],
                                                 b"sealfs.xattr" + raw[:8] + kind + ident)
    except InvalidTag:
        raise FormatError("xattr blob does not authenticate (altered, or another "
                          "inode's)") from None
    entries: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(payload):
        n = payload[pos]
        name = payload[pos + 1:pos + 1 + n]
        pos += 1 + n
        if n == 0 or len(name) != n or b"\0" in name or (entries and name <= max(entries)):
            raise FormatError("xattr blob: an empty, NUL-holding, unsorted or repeated name")
        if pos + 4 > len(payload):
            raise FormatError("xattr blob is truncated")
        (size,) = struct.unpack_from(">I", payload, pos)
        pos += 4
        if size > XATTR_VALUE_MAX or pos + size > len(payload):
            raise FormatError("xattr blob: a bad value length")
        entries[name] = payload[pos:pos + size]
        pos += size
    return entries


def decode_name(keys: Keys, encoded: str, dir_id: bytes) -> str:
    try:
        padded = AESSIV(keys.name_key).decrypt(b32decode_canonical(encoded), [dir_id])
    except InvalidTag:
        raise FormatError("name does not authenticate in this directory") from None
    raw = padded.rstrip(b"\0")
    if not raw or b"/" in raw or b"\0" in raw or len(padded) % 16:
        raise FormatError("malformed name")
    return raw.decode("utf-8", "surrogateescape")


def resolve_size(cipher: AESGCM, file_id: bytes, data: bytes, header_size: int, cs: int
                 ) -> tuple[int, str]:
    """FORMAT.md 9.1. Returns (size, how): how is 'header', 'tail' or 'stale-header'."""
    def final_ok(size: int) -> bool:
        f = chunk_count(size, cs) - 1
        start, end = slot_offset(f, cs), stored_size(size, cs)
        if len(data) < end:
            return False
        try:
            cipher.decrypt(data[start:start + 12], data[start + 12:end], chunk_aad(file_id, f, True))
            return True
        except InvalidTag:
            return False

    if final_ok(header_size):
        return header_size, "header" if len(data) == stored_size(header_size, cs) else "tail"
    by_length = size_from_length(len(data), cs)
    if by_length is not None and final_ok(by_length):
        return by_length, "stale-header"
    raise FormatError("no authentic final chunk at the header size or the stored size")


def read_content(cipher: AESGCM, file_id: bytes, data: bytes, size: int, cs: int) -> bytes:
    n = chunk_count(size, cs)
    parts = []
    for i in range(n):
        final = i == n - 1
        length = (size - i * cs if final else cs) + OVERHEAD
        start = slot_offset(i, cs)
        slot = data[start:start + length]
        if len(slot) < length:
            raise FormatError(f"chunk {i} is short")
        if not final and slot == bytes(length):
            parts.append(bytes(cs))          # a hole
            continue
        try:
            parts.append(cipher.decrypt(slot[:12], slot[12:], chunk_aad(file_id, i, final)))
        except InvalidTag:
            raise FormatError(f"chunk {i} does not authenticate") from None
    return b"".join(parts)


@dataclass(frozen=True)
class DecryptedFile:
    dek_id: int
    file_id: bytes
    meta: Meta
    size: int
    how: str
    content: bytes


def replay_journal(cipher: AESGCM, file_id: bytes, data: bytes, journal: bytes, cs: int) -> bytes:
    """FORMAT.md 9.5, in memory: torn slots take the journaled chunk."""
    def opens(index: int, sealed: bytes, final: bool) -> bool:
        if len(sealed) < OVERHEAD:
            return False
        try:
            cipher.decrypt(sealed[:12], sealed[12:], chunk_aad(file_id, index, final))
            return True
        except InvalidTag:
            return False

    if not journal.startswith(b"SEALJNL1"):
        return data
    out = bytearray(data)
    pos = 8
    while pos + 18 <= len(journal):
        index, final, length, old_final, old_length = struct.unpack(">QBIBI", journal[pos:pos + 18])
        pos += 18
        if pos + length > len(journal) or final > 1 or old_final > 1:
            break
        sealed = journal[pos:pos + length]
        pos += length
        if not opens(index, sealed, final == 1):
            continue
        start = slot_offset(index, cs)
        slot = bytes(out[start:start + max(length, old_length)])
        if slot[:length] == sealed:
            continue
        old = slot[:old_length]
        if old_length and len(old) == old_length and (
                (old_final == 0 and old == bytes(old_length)) or opens(index, old, old_final == 1)):
            continue
        if len(out) < start + length:
            out.extend(bytes(start + length - len(out)))
        out[start:start + length] = sealed
    return bytes(out)


def decrypt_file(keys: Keys, data: bytes, journals: Path | None = None) -> DecryptedFile:
    if len(data) < HEADER_SIZE or data[:6] != MAGIC or data[6] != FILE_VERSION:
        raise FormatError("bad file header")
    dek_id, file_id = struct.unpack(">I16s", data[8:28])
    cipher = AESGCM(keys.file_key(dek_id, file_id))
    journal = journals / file_id.hex() if journals is not None else None
    if journal is not None and journal.is_file():
        data = replay_journal(cipher, file_id, data, journal.read_bytes(), keys.chunk_size)
    try:
        meta = unpack_meta(cipher.decrypt(data[28:40], data[40:96], data[:PUBLIC_SIZE]))
    except InvalidTag:
        raise FormatError("file header does not authenticate") from None
    if meta.kind == 7:
        raise FormatError("directory kind in a file header")
    size, how = resolve_size(cipher, file_id, data, meta.size, keys.chunk_size)
    return DecryptedFile(dek_id, file_id, meta, size, how,
                         read_content(cipher, file_id, data, size, keys.chunk_size))


# -- walking a store (FORMAT.md 1, 10) --------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    rdev: int
    size: int
    identity: bytes               # directory id or file id (hard links share it)
    backend_path: str             # a file's backend file; a directory's stub ("" for the root)
    size_source: str = "header"   # header | tail | stale-header (files)
    target: str | None = None     # symlinks
    storage: str | None = None    # directories: where their children live
    nlink: int | None = None      # directories: 2 + the stubs in their storage
    ctime: int = 0                # the sealed ctime (ns; 0: none recorded)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)    # (12)


@dataclass
class Result:
    volume_id: str
    pin_fingerprint: str
    chunk_size: int
    root: Entry
    files: dict[str, bytes] = field(default_factory=dict)      # regular files and symlinks
    entries: dict[str, Entry] = field(default_factory=dict)    # everything but the root
    errors: list[tuple[str, str]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)           # storages no record names
    xattr_orphans: list[str] = field(default_factory=list)     # blobs no inode's flag claims


def decrypt_store(store: str | os.PathLike, *, keyfile: bytes | None = None,
                  passphrase: bytes | None = None) -> Result:
    root = Path(store)
    keys = open_config((root / "sealfs.json").read_bytes(), keyfile, passphrase)
    root_id, root_meta = open_dir_record(keys, (root / "sealfs.dir").read_bytes())
    storage = keys.storage(root_id)
    listing = _list(root, storage)             # a missing root storage: the store is unreadable
    claimed: set[str] = set()
    result = Result(keys.volume_id, keys.pin_fingerprint, keys.chunk_size,
                    _dir_entry(root_meta, root_id, "", storage, listing))
    try:
        result.root = _with_xattrs(keys, root, result.root, root_meta, b"d", claimed)
    except (FormatError, OSError) as exc:
        result.errors.append(("sealfs.dir", str(exc)))
    reached = {storage}
    _walk(keys, root, storage, listing, "", root_id, result, reached, claimed)
    result.orphans = sorted(set(_storages(root, result)) - reached)
    result.xattr_orphans = sorted(set(_blobs(root, result)) - claimed)
    return result


def _with_xattrs(keys: Keys, root: Path, entry: Entry, meta: Meta, kind: bytes,
                 claimed: set[str]) -> Entry:
    """entry with its attributes: read from its blob when its flag is set (a missing blob
    is damage); none, whatever lies at its blob path, when not."""
    if not meta.flags & XATTR_FLAG:
        return entry
    bpath = keys.xattr_blob(kind, entry.identity)
    claimed.add(bpath)
    try:
        raw = (root / bpath).read_bytes()
    except FileNotFoundError:
        raise FormatError(f"its xattr blob {bpath} is missing") from None
    try:
        xattrs = open_xattr_blob(keys, kind, entry.identity, raw)
    except FormatError as exc:
        raise FormatError(f"{bpath}: {exc}") from None
    return replace(entry, xattrs=xattrs)


def _blobs(root: Path, result: Result) -> list[str]:
    """Every blob under x/; temporaries of an interrupted update are skipped, anything
    else not of a blob's shape is reported."""
    out = []
    top = root / XATTRS
    for fan in sorted(os.listdir(top)) if top.is_dir() else []:
        if not (FANOUT.match(fan) and stat.S_ISDIR(os.lstat(top / fan).st_mode)):
            result.errors.append((f"{XATTRS}/{fan}", "not written by sealfs (not a blob fan-out)"))
            continue
        for name in sorted(os.listdir(top / fan)):
            bpath = f"{XATTRS}/{fan}/{name}"
            regular = stat.S_ISREG(os.lstat(root / bpath).st_mode)
            if STORAGE.match(name) and regular:
                out.append(bpath)
            elif not (name.startswith("sealfs.tmp.") and regular):
                result.errors.append((bpath, "not written by sealfs (not an xattr blob)"))
    return out


def _list(root: Path, storage: str) -> list[tuple[str, int]]:
    """(entry, lstat mode) of a storage: nothing is followed (FORMAT.md 1, rule 3)."""
    with os.scandir(root / storage) as it:
        return sorted((e.name, e.stat(follow_symlinks=False).st_mode) for e in it)


def _is_stub(entry: str, mode: int) -> bool:
    return stat.S_ISDIR(mode) and (LONG_NAME.match(entry) is not None or not entry.startswith("sealfs."))


def _dir_entry(meta: Meta, dir_id: bytes, stub: str, storage: str,
               listing: list[tuple[str, int]]) -> Entry:
    nlink = 2 + sum(1 for entry, mode in listing if _is_stub(entry, mode))
    return Entry("directory", meta.mode, meta.uid, meta.gid, 0, 0, dir_id, stub,
                 storage=storage, nlink=nlink, ctime=meta.ctime)


def _storages(root: Path, result: Result) -> list[str]:
    """Every storage directory under d/; anything else there is reported."""
    out = []
    top = root / STORAGES
    for fan in sorted(os.listdir(top)) if top.is_dir() else []:
        if not (FANOUT.match(fan) and stat.S_ISDIR(os.lstat(top / fan).st_mode)):
            result.errors.append((f"{STORAGES}/{fan}", "not written by sealfs (not a storage)"))
            continue
        for name in sorted(os.listdir(top / fan)):
            bpath = f"{STORAGES}/{fan}/{name}"
            if STORAGE.match(name) and stat.S_ISDIR(os.lstat(root / bpath).st_mode):
                out.append(bpath)
            else:
                result.errors.append((bpath, "not written by sealfs (not a storage)"))
    return out


def _name_of(keys: Keys, root: Path, storage: str, entry: str, dir_id: bytes) -> str | None:
    """The plaintext name of a storage entry; None for sealfs's own entries (FORMAT.md 1)."""
    if LONG_NAME.match(entry):
        sidecar_path = root / storage / (entry + ".name")
        if not stat.S_ISREG(os.lstat(sidecar_path).st_mode):
            raise FormatError("long-name sidecar is not a regular file")
        sidecar = sidecar_path.read_bytes().decode("ascii")
        if "sealfs.ln." + b32encode(hashlib.sha256(sidecar.encode()).digest()) != entry:
            raise FormatError("sidecar does not match its long-name entry")
        return decode_name(keys, sidecar, dir_id)
    if entry.startswith("sealfs."):
        return None
    return decode_name(keys, entry, dir_id)


def _walk(keys: Keys, root: Path, storage: str, listing: list[tuple[str, int]], pdir: str,
          dir_id: bytes, result: Result, reached: set[str], claimed: set[str]) -> None:
    for entry, mode in listing:
        bpath = f"{storage}/{entry}"
        try:
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                if entry.startswith("sealfs.") and not LONG_NAME.match(entry):
                    continue
                raise FormatError("not written by sealfs (neither a file nor a directory): "
                                  "never opened")
            name = _name_of(keys, root, storage, entry, dir_id)
            if name is None:
                continue
            path = f"{pdir}/{name}" if pdir else name
            if stat.S_ISDIR(mode):
                child_id, meta = open_dir_record(keys, (root / bpath / "sealfs.dir").read_bytes())
                child_storage = keys.storage(child_id)
                if child_storage in reached:
                    raise FormatError("a second record naming a directory reached already "
                                      "(a copied stub)")
                reached.add(child_storage)
                try:
                    child_listing = _list(root, child_storage)
                except FileNotFoundError:
                    raise FormatError(f"its storage {child_storage} is missing") from None
                result.entries[path] = _with_xattrs(
                    keys, root, _dir_entry(meta, child_id, bpath, child_storage, child_listing),
                    meta, b"d", claimed)
                _walk(keys, root, child_storage, child_listing, path, child_id, result, reached,
                      claimed)
            else:
                f = decrypt_file(keys, (root / bpath).read_bytes(), root / "sealfs.journal")
                kind = KINDS[f.meta.kind]
                target = f.content.decode("utf-8", "surrogateescape") if kind == "symlink" else None
                result.entries[path] = _with_xattrs(
                    keys, root, Entry(kind, f.meta.mode, f.meta.uid, f.meta.gid, f.meta.rdev,
                                      f.size, f.file_id, bpath, f.how, target,
                                      ctime=f.meta.ctime), f.meta, b"f", claimed)
                if kind in ("regular", "symlink"):
                    result.files[path] = f.content
        except (FormatError, OSError, UnicodeDecodeError, ValueError) as exc:
            result.errors.append((bpath, str(exc)))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    result = decrypt_store(argv[0], keyfile=Path(argv[1]).read_bytes())
    for path, e in sorted(result.entries.items()):
        print(f"{e.kind:9} {e.mode:04o} {e.uid}:{e.gid} {e.size:>10} {path}"
              + (f" -> {e.target}" if e.target else "") + ("" if e.size_source == "header"
                                                             else f" [{e.size_source}]"))
        for name, value in sorted(e.xattrs.items()):
            print(f"  xattr {name.decode('ascii', 'backslashreplace')} = {value.hex()}")
    for bpath, why in result.errors:
        print(f"ERROR {bpath}: {why}", file=sys.stderr)
    for bpath in result.orphans:
        print(f"ORPHAN {bpath}: a storage no directory record names", file=sys.stderr)
    for bpath in result.xattr_orphans:
        print(f"ORPHAN {bpath}: an xattr blob no inode's flag claims", file=sys.stderr)
    if len(argv) == 3:
        out = Path(argv[2])
        for path, e in result.entries.items():
            if e.kind == "directory":
                (out / path).mkdir(parents=True, exist_ok=True)
        for path, data in result.files.items():
            if result.entries[path].kind == "regular":
                (out / path).parent.mkdir(parents=True, exist_ok=True)
                (out / path).write_bytes(data)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
