"""Where an Azure Files store is (account, share, path) and how the backend talks to it."""


from __future__ import annotations

import datetime as dt
import errno
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

RANGE = 4 * 1024 * 1024              # the most one Put Range may carry
THROTTLED = {429, 503}               # refused before execution: safe to resend anything
RETRYABLE = {500, 502, 504}          # may have been executed: resend idempotent requests only
CONTRIBUTOR_ROLE = "Storage File Data Privileged Contributor"
READER_ROLE = "Storage File Data Privileged Reader"


@dataclass(frozen=True)
class AzureTarget:
    """https://ACCOUNT.file.core.windows.net/SHARE[/PATH] (or any https host)."""

    account_url: str       # https://host[:port]
    host: str
    account: str
    share: str
    path: str              # inside the share, "" for its root

    @classmethod
    def parse(cls, url: str, account: str | None = None) -> AzureTarget:
        parsed = urlparse(url)
        if parsed.scheme == "http":
            raise ValueError("plain http:// is refused: Azure Files stores need https://")
        if parsed.scheme != "https" or not parsed.hostname:
            raise ValueError(f"not an Azure Files URL: {url!r} (https://ACCOUNT.file.core.windows.net/SHARE)")
        if parsed.query or parsed.fragment or parsed.username or parsed.password:
            raise ValueError("the store URL must not carry a query, user or SAS: give the SAS with "
                             "--azure-sas-file or SEALFS_AZURE_SAS")
        parts = [p for p in parsed.path.split("/") if p]
        if not parts:
            raise ValueError(f"{url}: the URL names no share (https://ACCOUNT.file.core.windows.net/SHARE)")
        host = parsed.hostname.lower()
        name = account or host.split(".")[0]
        netloc = host if parsed.port is None else f"{host}:{parsed.port}"
        return cls(f"https://{netloc}", host, name, parts[0], "/".join(parts[1:]))

    @property
    def location(self) -> str:
        return f"{self.account_url}/{self.share}" + (f"/{self.path}" if self.path else "")


@dataclass
class AzureSettings:
    """Tuning and policy knobs; all come from BackendOptions.extra["azure_*"]."""

    threads: int = 16
    retry_deadline: float = 60.0       # seconds of retrying before a request fails with EIO
    max_retry_after: float = 30.0
    connection_timeout: float = 10.0
    read_timeout: float = 60.0
    account: str | None = None

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> AzureSettings:
        s = cls()
        for name in ("threads", "retry_deadline", "max_retry_after", "connection_timeout", "read_timeout",
                     "account"):
            if f"azure_{name}" in extra:
                setattr(s, name, extra[f"azure_{name}"])
        return s


def check_sas(sas: str) -> str:
    """Refuse a SAS that allows plain http or has expired; returns it without a leading '?'."""
    sas = sas.strip().lstrip("?")
    q = {k: v[0] for k, v in parse_qs(sas, keep_blank_values=True).items()}
    if "sig" not in q or "se" not in q:
        raise PermissionError(errno.EACCES, "the SAS token is malformed (no sig or se)")
    if q.get("spr") != "https":
        raise PermissionError(errno.EACCES, "the SAS token allows plain http: make one with spr=https only "
                                            "(az storage ... --https-only)")
    try:
        expiry = dt.datetime.fromisoformat(q["se"].replace("Z", "+00:00"))
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=dt.UTC)
    except ValueError:
        raise PermissionError(errno.EACCES, f"the SAS token's expiry {q['se']!r} is malformed") from None
    if expiry < dt.datetime.now(dt.UTC):
        raise PermissionError(errno.EACCES, f"the SAS token expired at {q['se']}")
    return sas


