"""How SmbBackend.write_many cuts writes into WRITE requests (no server needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealfs.backends.smb.messages import write_requests

LIMIT = 64


@st.composite
def write_lists(draw):
    writes, pos = [], draw(st.integers(0, 50))
    for _ in range(draw(st.integers(0, 12))):
        pos += draw(st.sampled_from([0, 0, 0, 1, 30]))         # mostly adjacent
        data = bytes([draw(st.integers(0, 255))]) * draw(st.integers(0, 3 * LIMIT))
        writes.append((pos, data))
        pos += len(data)
    return writes


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(write_lists())
def test_requests_carry_every_byte_once_within_the_limit(writes) -> None:
    requests = write_requests(writes, LIMIT)
    placed: dict[int, int] = {}
    for offset, segments in requests:
        data = b"".join(bytes(s) for s in segments)
        assert 0 < len(data) <= LIMIT
        for k, byte in enumerate(data):
            assert offset + k not in placed, "a byte went in two requests"
            placed[offset + k] = byte
    expect = {off + k: b for off, data in writes for k, b in enumerate(data)}
    assert placed == expect
    for offset, data in writes:                 # Backend.untearable: one request each
        if 0 < len(data) <= LIMIT:
            assert any(o <= offset and offset + len(data) <= o + sum(len(s) for s in segs)
                       for o, segs in requests), (offset, len(data))


def test_requests_are_views_of_the_callers_buffers_not_copies() -> None:
    buf = bytearray(b"x" * 100)
    (offset, segments), *rest = write_requests([(0, buf)], LIMIT)
    buf[0:1] = b"y"
    assert offset == 0 and bytes(segments[0][:1]) == b"y" and rest[0][0] == LIMIT


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=8),
       st.lists(st.tuples(st.integers(0, 120), st.integers(1, 50)), min_size=1, max_size=10))
def test_chunk_slots_cut_from_read_pieces_match_the_joined_bytes(sizes, wanted) -> None:
    """FileState cuts chunk slots out of a read's pieces (SmbBackend.read_many_pieces):
    views where a slot lies in one piece, a copy where it spans pieces, short at the end."""
    from sealfs.fs.core.files import _cut
    blob = bytes(range(256)) * 2
    pieces, pos = [], 0
    for n in sizes:
        pieces.append(memoryview(blob)[pos:pos + n])
        pos += n
    joined = blob[:pos]
    slots = sorted(wanted)
    assert [bytes(x) for x in _cut(pieces, slots)] == [joined[lo:lo + n] for lo, n in slots]
