"""The store is untrusted on SMB too: a symlink planted in the store's directory on the
share must not let the client write through it to elsewhere on the share (another store,
other users' data). smbd resolves symlinks itself and shows the client no reparse point
(Samba 4.17, unix extensions off), so this rests on the server: `follow symlinks = no`
(tests/servers/samba.py); `wide links = no` alone still follows links within the share.
"""

from __future__ import annotations

import os

import pytest

from sealfs.crypto.format.constants import JOURNAL_DIR
from sealfs.crypto.format.header import HEADER_SIZE, read_header_public
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.errors import IntegrityError
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.storepaths import entry_of, record_of

PRECIOUS = b"someone else's file on the same share\n" * 100


def victim(smb_store) -> os.PathLike:
    """A file on the share, outside this store."""
    path = smb_store.server.share_path / f"{smb_store.local.name}-elsewhere"
    path.write_bytes(PRECIOUS)
    return path


async def volume(smb_store, keyfile) -> Volume:
    secrets = KeySecrets(keyfile=keyfile)
    await Volume.init(smb_store.backend(), provider_for_init(None, secrets), chunk_size=4096,
                      pins=PinStore())
    return await Volume.load(smb_store.backend(), secrets, pins=PinStore())


async def test_journal_symlink_to_elsewhere_on_the_share(smb_store, keyfile) -> None:
    target = victim(smb_store)
    vol = await volume(smb_store, keyfile)
    try:
        f = await vol.create("/f", 0o644)
        await f.write(0, os.urandom(3 * 4096))
        await f.close()
        ciphertext = smb_store.local / await entry_of(vol, "/f")
        with open(ciphertext, "rb") as fh:
            file_id = read_header_public(fh.read(HEADER_SIZE))[1]
        (smb_store.local / JOURNAL_DIR).mkdir(exist_ok=True)
        os.symlink(target, smb_store.local / JOURNAL_DIR / file_id.hex())
        f = await vol.open("/f", write=True)
        try:
            await f.write(5000, b"x" * 6000)              # rewrites chunks where they lie
            await f.flush()
        except OSError:
            pass                                          # refused: fine, nothing written
        finally:
            try:
                await f.close()
            except OSError:
                pass
    finally:
        await vol.close()
    assert target.read_bytes() == PRECIOUS


async def test_dir_record_symlink_to_elsewhere_on_the_share(smb_store, keyfile) -> None:
    target = victim(smb_store)
    vol = await volume(smb_store, keyfile)
    try:
        await vol.mkdir("/d", 0o755)
        record = smb_store.local / await record_of(vol, "/d")
        record.unlink()
        os.symlink(target, record)
        # Refused: the write fails, or (a chmod starts from the record as it is now) the
        # record cannot be read before it
        with pytest.raises((OSError, IntegrityError)):
            await vol.setattr("/d", mode=0o700)
    finally:
        await vol.close()
    assert target.read_bytes() == PRECIOUS
