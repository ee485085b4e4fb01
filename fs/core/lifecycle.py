"""A volume's life on its store: creating one, and reading or rewriting its sealfs.json.

The config is, with the root's record, outside the directories' storages; reading it is
all that needs no key (its MAC is checked by Volume.load once the names DEK is unwrapped).
"""

from __future__ import annotations

import os

import trio

from ...backends.base import Backend
from ...crypto.format.config import UnsupportedFormat, VolumeConfig
from ...crypto.format.constants import CONFIG_NAME, DEFAULT_CHUNK_SIZE, DIR_META_NAME, TEMP_PREFIX
from ...crypto.format.header import Kind, Metadata, new_dir_id, seal_dir_meta
from ...crypto.format.kdf import config_mac_key, dir_meta_key, locator_key, pin_fingerprint
from ...crypto.format.locator import locator, storage_path
from ...crypto.keys.audit import AuditLog
from ...crypto.keys.broker import wrap_new_dek
from ...crypto.keys.kms import KekProvider
from ...crypto.secmem import secret
from ...errors import ConfigError, UsageError
from .paths import make_storage
from .pins import PinStore
from .storeio import read_small, write_new_file


async def create_store(backend: Backend, provider: KekProvider, *,
                       chunk_size: int = DEFAULT_CHUNK_SIZE, pins: PinStore | None = None,
                       uid: int | None = None, gid: int | None = None,
                       audit: AuditLog | None = None, allow_purgeable: bool = False) -> VolumeConfig:
    """A new volume on backend (`sealfs init`): its root directory's storage and record,
    then its config with one DEK wrapped by the provider's KEK."""
    try:
        await backend.stat(CONFIG_NAME)
        raise UsageError(f"{backend.location} already holds a sealfs volume")
    except FileNotFoundError:
        pass
    await trio.to_thread.run_sync(provider.check, allow_purgeable)
    wrapped, dek_buf = await trio.to_thread.run_sync(
        lambda: wrap_new_dek(provider, 1, audit=audit))
    dek_secret = secret(dek_buf)
    dek_buf[:] = bytes(len(dek_buf))
    dek = dek_secret.readonly()
    config = VolumeConfig.new(chunk_size, provider.config_entry(), wrapped)
    root_meta = Metadata(Kind.DIRECTORY, 0o755, os.getuid() if uid is None else uid,
                         os.getgid() if gid is None else gid)
    root_id = new_dir_id()
    await make_storage(backend, storage_path(locator(locator_key(dek), root_id)))
    await write_new_file(backend, DIR_META_NAME,
                         seal_dir_meta(dir_meta_key(dek), root_id, root_meta))
    await write_new_file(backend, CONFIG_NAME, config.serialize(config_mac_key(dek)))
    if pins is not None:
        pins.check(backend.location, config.volume_id.hex(), pin_fingerprint(dek))
    del dek
    dek_secret.wipe()
    return config


async def read_config(backend: Backend) -> tuple[VolumeConfig, str]:
    """sealfs.json as stored, and the MAC it claims (checked once a key can check it)."""
    try:
        raw = await read_small(backend, CONFIG_NAME, 1 << 20)
    except FileNotFoundError:
        raise ConfigError(f"{backend.location} is not a sealfs volume (no {CONFIG_NAME}); "
                          f"create one with `sealfs init`") from None
    try:
        return VolumeConfig.parse(raw)
    except UnsupportedFormat as exc:
        raise exc.of(backend.location) from None
    except ConfigError as exc:
        if CONFIG_NAME in str(exc):
            raise
        raise ConfigError(f"{CONFIG_NAME} is damaged: {exc}") from None


async def write_config(backend: Backend, config: VolumeConfig, names_dek: bytes) -> None:
    """Rewrite sealfs.json atomically (key rotation): temp file, then rename."""
    data = config.serialize(config_mac_key(names_dek))
    tmp = TEMP_PREFIX + os.urandom(8).hex()
    await write_new_file(backend, tmp, data)
    await backend.rename(tmp, CONFIG_NAME, replace=True)
