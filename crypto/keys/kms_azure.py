"""Azure Key Vault / Managed HSM KEKs (azure-identity + azure-keyvault-keys).

The KEK never leaves the vault. RSA keys wrap with RSA-OAEP-256 (the SDK does the
wrap locally with the public key it read, so only unwrap calls the vault); Managed
HSM "oct-HSM" keys wrap with A256KW inside the HSM. Each wrapped DEK records the
algorithm and the exact key version, so an unwrap never depends on what "latest"
means today and survives the vault's key rotation.

Credentials come from DefaultAzureCredential (environment, workload identity,
managed identity, Azure CLI, ...) unless a credential object is passed in
KeySecrets.options["azure_credential"]. The SDK's own safety checks stay on: TLS
verification (CA bundle from REQUESTS_CA_BUNDLE) and the challenge-resource check
that stops a look-alike host from harvesting tokens.

Why oct keys bypass CryptographyClient: azure-keyvault-keys (checked on 4.11.3)
builds a local provider for any key whose JWK it holds; for an oct-HSM key the JWK
has no "k", and SymmetricKey then invents a *random* local key and "wraps" with it.
The result unwraps only inside that client object: silent data loss. So oct keys go
to the vault's wrapkey/unwrapkey endpoints via KeyClient.send_request (same
pipeline: challenge auth, retries, timeouts).
"""

from __future__ import annotations

import base64
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy
from azure.core.rest import HttpRequest
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from ...errors import ConfigError, KeyAccessError, UsageError
from ..format.config import WrappedDek
from ..format.constants import KEY_SIZE
from .kms import KekProvider, KeySecrets, UnwrapResult, WrapResult

RSA_ALG = "RSA-OAEP-256"
OCT_ALG = "A256KW"
UNWRAP_ALGS = {"RSA-OAEP-256", "RSA-OAEP", "A256KW"}
RSA_KTYS = {"RSA", "RSA-HSM"}
OCT_KTYS = {"oct", "oct-HSM"}
KV_ROLE = "Key Vault Crypto Service Encryption User"
HSM_ROLE = "Managed HSM Crypto Service Encryption User"
_PERMISSION = {
    "get": "keys/get (Microsoft.KeyVault/vaults/keys/read)",
    "wrapKey": "keys/wrapKey (Microsoft.KeyVault/vaults/keys/wrap/action)",
    "unwrapKey": "keys/unwrapKey (Microsoft.KeyVault/vaults/keys/unwrap/action)",
}


@dataclass(frozen=True)
class AzureKeyRef:
    """https://VAULT/keys/NAME[/VERSION], parsed."""

    vault_url: str
    name: str
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> AzureKeyRef:
        u = urlparse(uri)
        parts = [p for p in u.path.split("/") if p]
        if (u.scheme != "https" or not u.hostname or u.query or u.fragment or u.username
                or len(parts) not in (2, 3) or parts[0] != "keys"):
            raise UsageError(f"--kek {uri[:80]!r} is not a Key Vault key URL "
                             f"(https://VAULT.vault.azure.net/keys/NAME[/VERSION])")
        return cls(f"https://{u.netloc}", parts[1], parts[2] if len(parts) == 3 else None)

    @property
    def key_url(self) -> str:
        return f"{self.vault_url}/keys/{self.name}"

    @property
    def uri(self) -> str:
        return f"{self.key_url}/{self.version}" if self.version else self.key_url

    @property
    def is_managed_hsm(self) -> bool:
        return ".managedhsm." in (urlparse(self.vault_url).hostname or "")


@dataclass(frozen=True)
class AzureSettings:
    """Network bounds: a vault that is down or hangs must fail, not stall a mount."""

    connection_timeout: float = 5.0
    read_timeout: float = 20.0
    retry_total: int = 4
    backoff_factor: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 30.0
    total_timeout: float = 90.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> AzureSettings:
        kw = {}
        for name in cls.__dataclass_fields__:
            if f"azure_{name}" in options:
                kw[name] = type(getattr(cls, name))(options[f"azure_{name}"])
        return cls(**kw)


class BoundedRetryPolicy(RetryPolicy):
    """The SDK's retry policy, with Retry-After capped and idempotent POSTs retried.

    Key Vault's wrapkey/unwrapkey are POSTs but pure functions of their input, so
    retrying them after a dropped connection is safe (azure-core retries POST only
    on 500/503/504 by default). A hostile or broken Retry-After must not park a
    mount for an hour.
    """

    METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})

    def __init__(self, max_retry_after: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_retry_after = max_retry_after

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("retry_on_methods", self.METHODS)
        return super().configure_retries(options)

    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        if value is None:
            return None
        return max(0.0, min(float(value), self.max_retry_after))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _enum(value: Any) -> str:
    """SDK enums print as 'JsonWebKeyType.RSA'; we want the wire value."""
    return str(getattr(value, "value", value))


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AzureKek(KekProvider):
    provider = "azure"

    def __init__(self, ref: AzureKeyRef, credential: Any = None,
                 settings: AzureSettings | None = None) -> None:
        from azure.keyvault.keys import KeyClient

        self.ref = ref
        self.settings = settings or AzureSettings()
        self._owns_credential = credential is None
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        self._credential = credential
        self._client = KeyClient(ref.vault_url, credential, **self._client_kwargs())
        self._crypto: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: x-ms-client-request-id of the last vault operation, for audit lines
        self.last_request_id: str | None = None

    def _client_kwargs(self) -> dict[str, Any]:
        s = self.settings
        policy = BoundedRetryPolicy(s.max_retry_after, retry_total=s.retry_total, retry_connect=s.retry_total,
                                    retry_read=s.retry_total, retry_status=s.retry_total,
                                    retry_backoff_factor=s.backoff_factor, retry_backoff_max=s.backoff_max,
                                    timeout=s.total_timeout)
        return {"retry_policy": policy, "connection_timeout": s.connection_timeout,
                "read_timeout": s.read_timeout}

    # -- identity ---------------------------------------------------------------------
    @property
    def kek_id(self) -> str:
        return self.ref.uri

    def config_entry(self) -> dict[str, Any]:
        return {"provider": "azure", "key": self.ref.uri}

    def _role(self) -> str:
        return HSM_ROLE if self.ref.is_managed_hsm else KV_ROLE

    # -- errors -------------------------------------------------------------------------
    def _error(self, exc: Exception, op: str, version: str | None) -> Exception:
        """Turn an SDK exception into one clear line that says what to do."""
        what = f"{self.ref.key_url}" + (f" (version {version})" if version else "")
        if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
            first = str(exc.message if hasattr(exc, "message") else exc).strip().splitlines()
            return KeyAccessError(f"cannot get an Azure AD token for Key Vault "
                                  f"({_one_line(first[0] if first else type(exc).__name__, 160)}); "
                                  f"configure a managed identity, workload identity, AZURE_CLIENT_ID/"
                                  f"AZURE_TENANT_ID/AZURE_CLIENT_SECRET or az login")
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            detail = exc.error.message if getattr(exc, "error", None) and exc.error.message else exc.reason
            return self._status_error(exc.status_code, str(detail or ""), op, what)
        if isinstance(exc, ServiceRequestError):
            first = str(exc).splitlines()[0] if str(exc) else ""
            return KeyAccessError(f"Key Vault {self.ref.vault_url} is unreachable for {op} "
                                  f"({_one_line(type(exc).__name__)}: {_one_line(first, 120)})")
        if isinstance(exc, ServiceResponseError):
            return KeyAccessError(f"Key Vault {self.ref.vault_url} did not answer {op} in time or dropped "
                                  f"the connection ({_one_line(str(exc), 120)})")
        if isinstance(exc, ValueError) and "challenge" in str(exc).lower():
            return KeyAccessError(f"refusing Key Vault {self.ref.vault_url}: its authentication "
                                  "challenge names a resource this host does not belong to "
                                  f"({_one_line(str(exc), 120)})")
        if isinstance(exc, AzureError):
            return KeyAccessError(f"Key Vault {op} on {what} failed: {_one_line(str(exc))}")
        return exc

    def _status_error(self, status: int, detail: str, op: str, what: str) -> Exception:
        detail = _one_line(detail, 160)
        if status == 403:
            perm = _PERMISSION.get(op, op)
            return KeyAccessError(
                f"Key Vault refused {op} on {what} (403: {detail}): the identity needs {perm}; grant "
                f"it the role \"{self._role()}\" on the key or vault (or an access policy with get, "
                "wrapKey, unwrapKey)")
        if status == 404:
            return KeyAccessError(f"Key Vault has no key {what} ({detail}): it was deleted, purged or never "
                                  f"existed; recover it from soft delete if it was deleted")
        if status == 401:
            return KeyAccessError(f"Key Vault rejected the token for {op} on {what} ({detail})")
        if status == 429:
            return KeyAccessError(f"Key Vault kept throttling {op} on {what} (429) after "
                                  f"{self.settings.retry_total} retries; try again later")
        return KeyAccessError(f"Key Vault answered {status} to {op} on {what}: {detail}")

    # -- vault calls ------------------------------------------------------------------
    def _get_key(self, version: str | None, rid: str) -> Any:
        try:
            return self._client.get_key(self.ref.name, version, request_id=rid)
        except Exception as exc:  # noqa: BLE001 - mapped to one clear line
            raise self._error(exc, "get", version) from None

    def _remote(self, op: str, version: str, alg: str, value: bytes, rid: str) -> bytes:
        """POST .../keys/NAME/VERSION/{wrapkey,unwrapkey} through the KeyClient pipeline."""
        req = HttpRequest("POST", f"/keys/{self.ref.name}/{version}/{op.lower()}",
                          json={"alg": alg, "value": _b64url(value)})
        try:
            resp = self._client.send_request(req, request_id=rid)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, op, version) from None
        if resp.status_code != 200:
            try:
                detail = resp.json().get("error", {}).get("message", "") or resp.reason
            except Exception:  # noqa: BLE001 - non-JSON error body
                detail = resp.reason or ""
            raise self._status_error(resp.status_code, str(detail), op,
                                     f"{self.ref.key_url} (version {version})")
        try:
            return _unb64url(resp.json()["value"])
        except (ValueError, KeyError, TypeError):
            raise KeyAccessError(f"Key Vault sent a malformed {op} answer for {self.ref.key_url}") from None

    def _crypto_client(self, key_or_id: Any, version: str) -> Any:

        with self._lock:
            client = self._crypto.get(version)
            if client is None:
                client = CryptographyClient(key_or_id, self._credential, **self._client_kwargs())
                self._crypto[version] = client
            return client

    # -- policy ---------------------------------------------------------------------------
    def _validate(self, key: Any, allow_purgeable: bool, need: tuple[str, ...]) -> None:
        props = key.properties
        kid = key.id
        kty = _enum(key.key_type)
        if kty not in RSA_KTYS | OCT_KTYS:
            raise UsageError(f"KEK {kid} is a {kty} key; sealfs needs an RSA key (Key Vault) or an "
                             f"oct-HSM AES key (Managed HSM) to wrap DEKs")
        if props.enabled is False:
            raise KeyAccessError(f"KEK {kid} is disabled in Key Vault; enable it or choose another key")
        now = datetime.now(UTC)
        if props.expires_on is not None and props.expires_on <= now:
            raise KeyAccessError(f"KEK {kid} expired on {props.expires_on:%Y-%m-%d %H:%M} UTC; "
                                 f"extend its expiry or rotate to a new key")
        if props.not_before is not None and props.not_before > now:
            raise KeyAccessError(f"KEK {kid} is not valid before {props.not_before:%Y-%m-%d %H:%M} UTC")
        ops = {_enum(o) for o in (key.key_operations or [])}
        missing = [o for o in need if o not in ops]
        if missing:
            raise UsageError(f"KEK {kid} does not permit {', '.join(missing)} (key_ops: "
                             f"{', '.join(sorted(ops)) or 'none'}); create it with wrapKey and "
                             "unwrapKey allowed")
        level = props.recovery_level or ""
        if "Purgeable" in level and not allow_purgeable:
            raise UsageError(f"KEK {kid} is purgeable (recovery level {level!r}): deleting it would destroy "
                             f"every volume it protects; turn on soft delete and purge protection "
                             f"(az keyvault update --enable-purge-protection true) or pass the explicit "
                             f"override --allow-purgeable-kek")

    def check(self, allow_purgeable: bool = False) -> None:
        rid = str(uuid.uuid4())
        self.last_request_id = rid
        key = self._get_key(self.ref.version, rid)
        self._validate(key, allow_purgeable, ("wrapKey", "unwrapKey"))

    # -- wrap / unwrap ----------------------------------------------------------------------
    def wrap(self, dek: bytes) -> WrapResult:
        rid = str(uuid.uuid4())
        self.last_request_id = rid
        key = self._get_key(self.ref.version, rid)
        self._validate(key, True, ("wrapKey", "unwrapKey"))
        version = key.properties.version
        if _enum(key.key_type) in OCT_KTYS:
            wrapped = self._remote("wrapKey", version, OCT_ALG, bytes(dek), rid)
            return WrapResult(wrapped, OCT_ALG, kek_version=version, request_id=rid)
        client = self._crypto_client(key, version)
        try:
            result = client.wrap_key(KeyWrapAlgorithm(RSA_ALG), bytes(dek), request_id=rid)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "wrapKey", version) from None
        return WrapResult(result.encrypted_key, RSA_ALG, kek_version=version, request_id=rid)

    def unwrap(self, wrapped: WrappedDek) -> UnwrapResult:
        if wrapped.algorithm not in UNWRAP_ALGS:
            raise KeyAccessError(f"DEK {wrapped.id} was wrapped with {wrapped.algorithm}, "
                                 f"not by an Azure Key Vault KEK")
        version = wrapped.kek_version
        if not version:
            raise ConfigError("sealfs.json does not record which Key Vault key version wrapped "
                              f"DEK {wrapped.id}")
        rid = str(uuid.uuid4())
        self.last_request_id = rid
        if wrapped.algorithm == OCT_ALG:
            raw = self._remote("unwrapKey", version, OCT_ALG, wrapped.wrapped, rid)
        else:
            client = self._crypto_client(f"{self.ref.key_url}/{version}", version)
            try:
                raw = client.unwrap_key(KeyWrapAlgorithm(wrapped.algorithm), wrapped.wrapped,
                                         request_id=rid).key
            except Exception as exc:  # noqa: BLE001
                raise self._error(exc, "unwrapKey", version) from None
        if len(raw) != KEY_SIZE:
            raise KeyAccessError(f"Key Vault unwrapped DEK {wrapped.id} to {len(raw)} bytes, not {KEY_SIZE}")
        return UnwrapResult(bytearray(raw), request_id=rid)

    def close(self) -> None:
        with self._lock:
            clients, self._crypto = list(self._crypto.values()), {}
        for c in clients:
            c.close()
        self._client.close()
        if self._owns_credential and hasattr(self._credential, "close"):
            self._credential.close()


def for_uri(uri: str, secrets: KeySecrets) -> KekProvider:
    return AzureKek(AzureKeyRef.parse(uri), secrets.options.get("azure_credential"),
                    AzureSettings.from_options(secrets.options))


def from_config(entry: dict[str, Any], secrets: KeySecrets) -> KekProvider:
    key = entry.get("key")
    if not isinstance(key, str):
        raise ConfigError("sealfs.json names an Azure KEK without a key URL")
    try:
        return for_uri(key, secrets)
    except UsageError as exc:
        raise ConfigError(f"sealfs.json has a bad Azure key URL: {exc}") from None


__all__ = ["AzureKek", "AzureKeyRef", "AzureSettings", "BoundedRetryPolicy", "for_uri", "from_config",
           "KV_ROLE", "HSM_ROLE"]
