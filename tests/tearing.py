"""Hand-made crash states of an in-place chunk rewrite, with the real file key."""

from __future__ import annotations

from pathlib import Path

from sealfs.backends.base import Backend
from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.chunks import ChunkCipher
from sealfs.crypto.format.constants import JOURNAL_DIR
from sealfs.crypto.format.header import read_header_public
from sealfs.crypto.format.kdf import file_key
from sealfs.crypto.format.layout import slot_offset
from sealfs.crypto.keys.kms import KeySecrets
from sealfs.fs.core.journal import ATOMIC_WRITE, Record, encode, journal_path
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume


async def tear_in_place_rewrite(store: Path, keyfile: Path, target: Path, index: int,
                                new_plain: bytes, chunk_size: int,
                                backend: Backend | None = None) -> tuple[Path, bytes]:
    """The state a mount killed mid-rewrite leaves: the new (non-final) chunk journaled,
    its slot new up to the first page boundary and old after it. Returns the journal's
    path and the sealed new chunk. store is the ciphertext directory on disk; backend (a
    connected one, closed here) serves it when it is not a local store."""
    raw = bytearray(target.read_bytes())
    dek_id, file_id = read_header_public(bytes(raw))
    vol = await Volume.load(backend or LocalBackend(store), KeySecrets(keyfile=keyfile), pins=PinStore())
    try:
        cipher = ChunkCipher(file_key(await vol.broker.dek(dek_id), file_id), file_id)
    finally:
        await vol.close()
    sealed = cipher.seal(index, new_plain, False)
    (store / JOURNAL_DIR).mkdir(exist_ok=True)
    journal = store / journal_path(file_id)
    journal.write_bytes(encode([Record(index, False, sealed, False, len(sealed))]))
    off = slot_offset(index, chunk_size)
    cut = (off // ATOMIC_WRITE + 1) * ATOMIC_WRITE - off
    assert 0 < cut < len(sealed), "the slot must cross a page boundary"
    raw[off:off + cut] = sealed[:cut]
    target.write_bytes(bytes(raw))
    return journal, sealed
