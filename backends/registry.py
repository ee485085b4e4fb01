"""STORE strings -> backends. The only place that knows which backends exist."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .base import Backend


@dataclass
class BackendOptions:
    """Connection settings that never live in the STORE string (passwords come lazily)."""

    smb_password: Callable[[], str | None] | None = None
    azure_sas: Callable[[], str | None] | None = None
    azure_account_key: Callable[[], str | None] | None = None
    # Open the store read-only at this snapshot (an Azure share snapshot, an SMB @GMT- token).
    snapshot: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def open_backend(store: str, options: BackendOptions | None = None) -> Backend:
    options = options or BackendOptions()
    backend = _open(store, options)
    if options.snapshot:
        from .readonly import ReadOnlyBackend
        return ReadOnlyBackend(backend, options.snapshot)
    return backend


def _open(store: str, options: BackendOptions) -> Backend:
    if store.startswith("smb://"):
        from .smb import SmbBackend
        return SmbBackend.from_url(store, options)
    if store.startswith(("https://", "http://")):
        from .azfiles import AzureFilesBackend
        return AzureFilesBackend.from_url(store, options)
    if "://" in store:
        scheme = store.split("://", 1)[0]
        raise ValueError(f"unsupported store URL scheme {scheme!r} (use a local path, smb:// or https://)")
    if options.snapshot:
        raise ValueError("a local directory store has no snapshots (take them with the filesystem "
                         "under it: btrfs, ZFS, LVM)")
    from .local import LocalBackend
    return LocalBackend(store)
