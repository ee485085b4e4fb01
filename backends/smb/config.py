"""Where an SMB store is (SmbTarget, from the store URL) and how to talk to it
(SmbSettings, from the mount's smb_* options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class SmbTarget:
    """Where a STORE points: smb://[USER@]HOST[:PORT]/SHARE[/PATH]."""

    host: str
    port: int
    share: str
    path: str  # inside the share, POSIX, no leading/trailing slash
    user: str | None

    @classmethod
    def parse(cls, url: str) -> SmbTarget:
        parts = urlsplit(url)
        if parts.scheme != "smb" or not parts.hostname:
            raise ValueError(f"not an SMB store URL: {url!r} (want smb://[USER@]HOST[:PORT]/SHARE[/PATH])")
        if parts.password is not None:
            raise ValueError("put no password in the store URL: it would end up in argv and logs")
        comps = [unquote(c) for c in parts.path.split("/") if c]
        if not comps:
            raise ValueError(f"no share in store URL {url!r} (want smb://HOST/SHARE[/PATH])")
        try:
            port = parts.port or 445
        except ValueError as exc:
            raise ValueError(f"bad port in store URL {url!r}") from exc
        return cls(host=parts.hostname, port=port, share=comps[0], path="/".join(comps[1:]),
                   user=unquote(parts.username) if parts.username else None)

    @property
    def location(self) -> str:
        port = "" if self.port == 445 else f":{self.port}"
        user = f"{self.user}@" if self.user else ""
        return f"smb://{user}{self.host}{port}/{self.share}" + (f"/{self.path}" if self.path else "")

    @property
    def where(self) -> str:
        """host:port/share, for one-line error messages."""
        return f"{self.host}:{self.port}/{self.share}"


@dataclass
class SmbSettings:
    """Tuning and policy knobs; all come from BackendOptions.extra["smb_*"]."""

    require_aes256: bool = False
    connections: int = 2
    threads: int = 8
    io_size: int = 1024 * 1024        # bytes per READ/WRITE request (capped by the server's max)
    credit_target: int = 512          # credits to keep granted: bounds requests in flight
    connect_timeout: float = 15.0
    request_timeout: float = 60.0
    reconnect_timeout: float = 30.0   # how long the next request waits for a server to return
    handle_cache: int = 64            # recently closed handles kept open for a quick reopen
    handle_cache_ttl: float = 1.0
    hard_links: bool | None = None    # None: per server (Azure Files has none over SMB)
    # Read the share as it was at this previous version (@GMT-... token): set by from_url
    # from BackendOptions.snapshot, never from smb_* options.
    snapshot: str | None = None

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> SmbSettings:
        s = cls()
        for name in s.__dataclass_fields__:
            key = f"smb_{name}"
            if name == "snapshot":
                continue
            if key not in extra:
                continue
            value, default = extra[key], getattr(s, name)
            if isinstance(value, str) and (isinstance(default, bool) or default is None):
                value = value.strip().lower() in ("1", "true", "yes", "on")
            elif default is not None and not isinstance(default, bool):
                value = type(default)(value)
            setattr(s, name, value)
        return s

