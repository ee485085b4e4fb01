"""The key audit log: one JSON line per wrap, unwrap, cache miss and KEK rotation.

Why a separate file and not the logging module: auditors and SIEM agents want a
stable, append-only, machine-readable record of every use of the KEK, including
failures, with the KMS request id so it can be matched against the vault's own
logs (Key Vault diagnostic logs carry the same x-ms-client-request-id).

Key material is never written: record() accepts only scalar, non-bytes fields,
so a DEK cannot slip in by accident.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ENV_VAR = "SEALFS_AUDIT_LOG"

#: the fields of every line, in order (missing ones are written as null)
FIELDS = ("time", "operation", "provider", "kek_id", "kek_version", "dek_id", "volume_id",
          "outcome", "latency_ms", "request_id")


class AuditLog:
    """Append-only JSON-lines audit sink; a no-op when no path is configured."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, volume_id: str | None = None) -> None:
        if path is None:   # not given: the environment decides; "" disables explicitly
            path = os.environ.get(ENV_VAR) or None
        self.path: Path | None = Path(path) if path else None
        self.volume_id = volume_id
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None:
            # O_APPEND: lines from several processes (mount + CLI) interleave whole, never torn.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def record(self, operation: str, *, provider: str | None = None, kek_id: str | None = None,
               kek_version: str | None = None, dek_id: int | None = None, volume_id: str | None = None,
               outcome: str = "ok", latency_ms: float | None = None, request_id: str | None = None,
               **extra: str | int | float | bool | None) -> None:
        """Write one line. Extra fields must be scalars (an error message, a count)."""
        if self._fd is None:
            return
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "operation": operation, "provider": provider, "kek_id": kek_id, "kek_version": kek_version,
            "dek_id": dek_id, "volume_id": volume_id or self.volume_id, "outcome": outcome,
            "latency_ms": None if latency_ms is None else round(latency_ms, 3), "request_id": request_id,
        }
        for k, v in extra.items():
            if isinstance(v, (bytes, bytearray, memoryview)) or not isinstance(v, (str, int, float, bool,
                                                                                     type(None))):
                raise TypeError(f"audit field {k!r} must be a scalar, not {type(v).__name__}")
            line[k] = v
        data = (json.dumps(line, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, data)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def disabled() -> AuditLog:
    """An audit log that records nothing (an empty path disables even SEALFS_AUDIT_LOG)."""
    return AuditLog("")
