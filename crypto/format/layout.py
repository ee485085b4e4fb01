"""Where bytes live in a backend file: header, chunk slots, logical vs stored sizes.

A file is HEADER_SIZE bytes of header followed by chunk slots of chunk_size + 28
bytes; the last (final) chunk may be shorter and is never absent: an empty file has
one final chunk with no plaintext. So every chunk offset is computable.
"""

from __future__ import annotations

from .constants import CHUNK_OVERHEAD
from .header import HEADER_SIZE


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks a file of this logical size has (at least one: the final chunk)."""
    return max(1, -(-size // chunk_size))


def final_index(size: int, chunk_size: int) -> int:
    return chunk_count(size, chunk_size) - 1


def slot_offset(index: int, chunk_size: int) -> int:
    return HEADER_SIZE + index * (chunk_size + CHUNK_OVERHEAD)


def chunk_plain_length(index: int, size: int, chunk_size: int) -> int:
    """Plaintext length of chunk index in a file of logical size `size`."""
    return max(0, min(chunk_size, size - index * chunk_size))


def stored_size(size: int, chunk_size: int) -> int:
    """Backend file size of a file with this logical size."""
    return HEADER_SIZE + size + CHUNK_OVERHEAD * chunk_count(size, chunk_size)


def logical_size(stored: int, chunk_size: int) -> int | None:
    """Inverse of stored_size; None when no logical size maps to this stored size."""
    body = stored - HEADER_SIZE
    if body < CHUNK_OVERHEAD:
        return None
    slot = chunk_size + CHUNK_OVERHEAD
    count = -(-body // slot)
    last = body - (count - 1) * slot
    if last < CHUNK_OVERHEAD:
        return None
    return body - CHUNK_OVERHEAD * count
