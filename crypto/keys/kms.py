"""KEK providers: the one interface behind which every key store sits.

A provider wraps and unwraps 32-byte DEKs with a KEK it never exports. Calls are
blocking (Key Vault over HTTPS, PKCS#11); the key broker runs them in worker threads.
The volume config's "kek" entry records which provider and KEK a volume uses, so
later commands need no --kek.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, UsageError
from ..format.config import WrappedDek


@dataclass(frozen=True)
class WrapResult:
    wrapped: bytes
    algorithm: str
    kek_version: str | None = None
    request_id: str | None = None


@dataclass
class UnwrapResult:
    dek: bytearray
    request_id: str | None = None


@dataclass
class KeySecrets:
    """Secrets a provider may need, fetched lazily so that prompts happen only when needed."""

    keyfile: Path | None = None
    passphrase: Callable[[], bytes] | None = None
    options: dict[str, Any] = field(default_factory=dict)


class KekProvider(abc.ABC):
    """One KEK in one key store."""

    #: provider name as recorded in sealfs.json ("keyfile", "passphrase", "azure", "pkcs11")
    provider: str = ""

    @property
    @abc.abstractmethod
    def kek_id(self) -> str:
        """A stable, non-secret identifier of the KEK (for audit lines and `keys list`)."""

    @abc.abstractmethod
    def config_entry(self) -> dict[str, Any]:
        """What sealfs.json records under "kek" (never a secret)."""

    def check(self, allow_purgeable: bool = False) -> None:
        """Refuse KEKs that are unsafe to depend on (e.g. purgeable vault keys)."""

    @abc.abstractmethod
    def wrap(self, dek: bytes) -> WrapResult: ...

    @abc.abstractmethod
    def unwrap(self, wrapped: WrappedDek) -> UnwrapResult:
        """Raise KeyAccessError with a one-line reason when the KEK cannot unwrap."""

    def close(self) -> None:
        """Release sessions and clients."""


_PROVIDER_MODULES = {
    "keyfile": "sealfs.crypto.keys.kms_local",
    "passphrase": "sealfs.crypto.keys.kms_local",
    "azure": "sealfs.crypto.keys.kms_azure",
    "pkcs11": "sealfs.crypto.keys.kms_pkcs11",
}


def provider_from_config(entry: dict[str, Any], secrets: KeySecrets) -> KekProvider:
    name = entry.get("provider")
    module_name = _PROVIDER_MODULES.get(str(name))
    if module_name is None:
        raise ConfigError(f"sealfs.json names an unknown KEK provider {name!r}")
    module = importlib.import_module(module_name)
    return module.from_config(entry, secrets)


def provider_for_init(kek_uri: str | None, secrets: KeySecrets) -> KekProvider:
    """Pick the provider for a new volume (or a KEK rotation target)."""
    if kek_uri:
        if kek_uri.startswith("pkcs11:"):
            module = importlib.import_module(_PROVIDER_MODULES["pkcs11"])
        elif kek_uri.startswith("https://"):
            module = importlib.import_module(_PROVIDER_MODULES["azure"])
        else:
            raise UsageError(f"--kek must be an https:// Key Vault key URL or a pkcs11: URI, "
                             f"not {kek_uri[:40]!r}")
        return module.for_uri(kek_uri, secrets)
    local = importlib.import_module(_PROVIDER_MODULES["keyfile"])
    return local.for_init(secrets)
