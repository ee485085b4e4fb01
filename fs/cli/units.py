"""Human sizes: "64K", "1M", "4096" — one parser for the CLI and config files."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:([kmg])(?:i?b)?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str | int) -> int:
    """Parse "4096", "64K", "1M", "2G" (binary units, case-insensitive; "64KiB"/"64kb" too).

    Shared by the config file and the CLI so a size means the same everywhere.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"invalid size {text!r}: expected a string such as 64K")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"invalid size {text}: must not be negative")
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(
            f"invalid size {text!r}: use a whole number of bytes, optionally with a "
            "K, M or G suffix (e.g. 4096, 64K, 256M, 1G)")
    unit = m.group(2).lower() if m.group(2) else None
    return int(m.group(1)) * _SIZE_UNITS[unit]


def format_size(n: int) -> str:
    for unit, factor in (("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)
