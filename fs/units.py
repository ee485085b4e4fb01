"""Human sizes: "64K", "1M", "4096"."""

from __future__ import annotations

_SUFFIXES = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def parse_size(text: str | int) -> int:
    """Plain bytes or a K/M/G/T suffix (binary, case-insensitive; "KiB"/"KB" accepted)."""
    if isinstance(text, int):
        return text
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, suffix = raw, ""
    if raw and raw[-1] in _SUFFIXES:
        number, suffix = raw[:-1], raw[-1]
    try:
        value = int(number) * _SUFFIXES[suffix]
    except ValueError:
        raise ValueError(f"{text!r} is not a size (use bytes or a K/M/G suffix, e.g. 64K)") from None
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value


def format_size(n: int) -> str:
    for unit, factor in (("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)
