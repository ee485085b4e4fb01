"""The volume config (sealfs.json): format parameters, KEK reference, wrapped DEKs, MAC.

The MAC (HMAC-SHA256 under a key derived from the names DEK) covers every field, so
a config cannot be edited without the KEK. It cannot stop wholesale replacement by
someone who can wrap under a public KEK; clients pin volumes for that (fs/core/pins.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...errors import ConfigError, IntegrityError
from .constants import FORMAT_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE


class UnsupportedFormat(ConfigError):
    """A store of another format version (format 1 stores are refused: no volume of it
    was released). read_config names the store in the one line it becomes."""

    def __init__(self, version: int) -> None:
        super().__init__(f"sealfs.json is a format-{version} store; "
                         f"this sealfs reads format {FORMAT_VERSION} only")
        self.version = version

    def of(self, store: str) -> ConfigError:
        return ConfigError(f"{store} is a format-{self.version} store; "
                           f"this sealfs reads format {FORMAT_VERSION} only")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass
class WrappedDek:
    """A data key as stored: only ever wrapped under the KEK."""

    id: int
    wrapped: bytes
    algorithm: str
    kek_version: str | None = None
    created: str = field(default_factory=utc_now)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "wrapped": b64(self.wrapped), "algorithm": self.algorithm,
                "kek_version": self.kek_version, "created": self.created}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WrappedDek:
        return cls(int(obj["id"]), unb64(obj["wrapped"]), str(obj["algorithm"]),
                   obj.get("kek_version"), str(obj.get("created", "")))


@dataclass
class VolumeConfig:
    volume_id: bytes
    chunk_size: int
    kek: dict[str, Any]
    deks: list[WrappedDek]
    name_dek_id: int
    current_dek_id: int
    created: str = field(default_factory=utc_now)
    version: int = FORMAT_VERSION
    #: the document as stored (minus "mac"), which is what the MAC covers when verifying
    stored: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new(cls, chunk_size: int, kek: dict[str, Any], first_dek: WrappedDek) -> VolumeConfig:
        validate_chunk_size(chunk_size)
        return cls(os.urandom(16), chunk_size, kek, [first_dek], first_dek.id, first_dek.id)

    def dek(self, dek_id: int) -> WrappedDek:
        for d in self.deks:
            if d.id == dek_id:
                return d
        raise IntegrityError(f"DEK {dek_id} is not in the volume config")

    def body(self) -> dict[str, Any]:
        return {
            "format": "sealfs",
            "version": self.version,
            "volume_id": self.volume_id.hex(),
            "chunk_size": self.chunk_size,
            "created": self.created,
            "kek": self.kek,
            "name_dek": self.name_dek_id,
            "current_dek": self.current_dek_id,
            "deks": [d.to_json() for d in self.deks],
        }

    def mac(self, mac_key: bytes) -> str:
        return hmac.new(mac_key, canonical_json(self.body()), hashlib.sha256).hexdigest()

    def serialize(self, mac_key: bytes) -> bytes:
        doc = self.body()
        doc["mac"] = self.mac(mac_key)
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> tuple[VolumeConfig, str]:
        """Parse without verifying; returns the config and its claimed MAC."""
        try:
            doc = json.loads(data.decode("utf-8"))
            _check_depth(doc)
            if not isinstance(doc, dict) or doc.get("format") != "sealfs":
                raise ConfigError("sealfs.json is not a sealfs volume config")
            unknown = set(doc) - _CONFIG_FIELDS
            for dek in doc.get("deks", []):
                unknown |= set(dek) - _DEK_FIELDS if isinstance(dek, dict) else {"deks"}
            if unknown:
                raise ConfigError(f"sealfs.json has unknown fields: {', '.join(sorted(unknown))}")
            version = int(doc["version"])
            if version != FORMAT_VERSION:
                raise UnsupportedFormat(version)
            cfg = cls(
                volume_id=bytes.fromhex(doc["volume_id"]),
                chunk_size=int(doc["chunk_size"]),
                kek=dict(doc["kek"]),
                deks=[WrappedDek.from_json(d) for d in doc["deks"]],
                name_dek_id=int(doc["name_dek"]),
                current_dek_id=int(doc["current_dek"]),
                created=str(doc.get("created", "")),
                version=version,
            )
            mac = str(doc["mac"])
            cfg.stored = {k: v for k, v in doc.items() if k != "mac"}
        except ConfigError:
            raise
        except RecursionError:      # json.loads recurses once per level
            raise ConfigError(_TOO_DEEP) from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"sealfs.json is damaged ({type(exc).__name__}: {exc})") from None
        if len(cfg.volume_id) != 16 or not cfg.deks:
            raise ConfigError("sealfs.json is damaged (bad volume id or no DEKs)")
        validate_chunk_size(cfg.chunk_size)
        return cfg, mac

    def verify(self, mac_key: bytes, claimed: str) -> None:
        """Check the MAC over the document exactly as stored (not as re-serialized), and
        that it is what sealfs acts on: compared canonically, so that 4096.0 or true is not
        taken for 4096 or 1 (Python's == would)."""
        body = canonical_json(self.body())
        signed = canonical_json(self.stored) if self.stored is not None else body
        expected = hmac.new(mac_key, signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, claimed) or signed != body:
            raise IntegrityError("sealfs.json failed authentication (it was modified)")


_CONFIG_FIELDS = {"format", "version", "volume_id", "chunk_size", "created", "kek", "name_dek",
                  "current_dek", "deks", "mac"}
_DEK_FIELDS = {"id", "wrapped", "algorithm", "kek_version", "created"}


#: v1 nests three levels (document, "kek" or "deks", "scrypt" or one DEK); the margin is for
#: opaque provider fields. Checked because the document is read, compared and re-encoded
#: (all recursive) before its MAC can be checked.
MAX_CONFIG_DEPTH = 8
_TOO_DEEP = f"sealfs.json is damaged (nested deeper than {MAX_CONFIG_DEPTH} levels)"


def _check_depth(doc: Any) -> None:
    """Refuse deep nesting without recursing (a store could nest thousands of levels)."""
    level: list[Any] = [doc]
    for _ in range(MAX_CONFIG_DEPTH):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]
        if not level:
            return
    if any(isinstance(node, (dict, list)) for node in level):
        raise ConfigError(_TOO_DEEP)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def validate_chunk_size(size: int) -> None:
    if size < MIN_CHUNK_SIZE or size > MAX_CHUNK_SIZE or size & (size - 1):
        raise ConfigError(f"chunk size {size} must be a power of two between "
                          f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
