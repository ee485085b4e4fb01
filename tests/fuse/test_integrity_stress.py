"""Concurrent writers and readers on shared files: checksummed records, never torn data.

Four processes share two files cut into record slots (records straddle chunk
boundaries). Process p owns slots p, p+4, p+8, ... and rewrites them in several
passes; between writes it reads random ranges spanning everyone's slots. Each
owner publishes a seqlock (odd while a write is in flight) and, per slot, the last
version it finished writing. A reader takes those versions inside its seqlock window
(after the first look at the seqlocks, before the read): if an owner's seqlock was
even and unchanged across the read, the read must find exactly that version of each
of the owner's slots, byte for byte; otherwise a record is only checked if its
checksum verifies. (Taking the versions after the read instead would expect a write
the owner started and finished after the read: a bug of this test that once looked
like stale reads over SMB.)
After the run the mount is remounted and every slot must hold its final version.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import struct
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

PROCS = 4
FILES = 2
SLOTS = 160                       # per file
PAYLOAD = 1500
RECORD = PAYLOAD + 32             # 1532: slots straddle 4K pages and 64K chunks
PASSES = 3
HEADER = struct.Struct("<IIII")   # file, slot, version, owner


def expected_payload(file: int, slot: int, version: int) -> bytes:
    head = HEADER.pack(file, slot, version, slot % PROCS)
    return head + hashlib.shake_256(head).digest(PAYLOAD - HEADER.size)


def record(file: int, slot: int, version: int) -> bytes:
    payload = expected_payload(file, slot, version)
    return payload + hashlib.sha256(payload).digest()


def version_of(file: int, slot: int, raw: bytes) -> int | None:
    """The version a slot's bytes are a complete record of, or None."""
    version = HEADER.unpack_from(raw)[2] if len(raw) >= HEADER.size else 0
    return version if version < PASSES and raw == record(file, slot, version) else None


def check_range(file: int, first: int, data: bytes, stable: dict, finished: list[int], fd: int) -> int:
    """Check the records in data (slots first..); stable[q] is True when owner q wrote nothing
    during the read, finished[i] the versions done (+1) of slot first+i taken inside the
    seqlock window. Returns how many records were verified."""
    verified = 0
    for i in range(len(data) // RECORD):
        slot = first + i
        owner = slot % PROCS
        raw = data[i * RECORD:(i + 1) * RECORD]
        payload, digest = raw[:PAYLOAD], raw[PAYLOAD:]
        complete = hashlib.sha256(payload).digest() == digest
        if stable[owner]:
            version = finished[i] - 1
            if version < 0:
                assert raw == bytes(RECORD), f"file {file} slot {slot}: data in a never-written slot"
            elif raw != record(file, slot, version):
                bad = [k for k in range(RECORD) if raw[k] != record(file, slot, version)[k]]
                time.sleep(0.2)
                later = version_of(file, slot, os.pread(fd, RECORD, slot * RECORD))
                raise AssertionError(
                    f"file {file} slot {slot}: expected version {version} (finished writing), got "
                    f"{f'version {version_of(file, slot, raw)}' if complete else 'torn or corrupt bytes'}: "
                    f"bytes {slot * RECORD + bad[0]}..{slot * RECORD + bad[-1]} differ"
                    f"{' (all zeros)' if not any(raw[bad[0]:bad[-1] + 1]) else ''}; "
                    f"0.2 s later: {f'version {later}' if later is not None else 'not a valid record'}")
            verified += 1
        elif complete:
            f_, s_, v_, o_ = HEADER.unpack_from(payload)
            assert (f_, s_, o_) == (file, slot, owner), f"file {file} slot {slot}: misplaced record"
            assert payload == expected_payload(file, slot, v_), f"file {file} slot {slot}: bad payload"
            assert v_ < PASSES
            verified += 1
    return verified


def worker(me: int, paths: list[str], seqs, done, seed: int, out) -> None:
    rng = random.Random(seed)
    fds = [os.open(p, os.O_RDWR) for p in paths]
    verified = 0
    try:
        for version in range(PASSES):
            mine = [(f, s) for f in range(FILES) for s in range(me, SLOTS, PROCS)]
            rng.shuffle(mine)
            for file, slot in mine:
                seqs[me] += 1                                   # odd: write in flight
                written = os.pwrite(fds[file], record(file, slot, version), slot * RECORD)
                assert written == RECORD
                done[file * SLOTS + slot] = version + 1
                seqs[me] += 1
                # Read a random range over everyone's slots.
                rfile = rng.randrange(FILES)
                first = rng.randrange(SLOTS)
                count = rng.randint(1, min(12, SLOTS - first))
                before = [seqs[q] for q in range(PROCS)]
                finished = [done[rfile * SLOTS + s] for s in range(first, first + count)]
                data = os.pread(fds[rfile], count * RECORD, first * RECORD)
                after = [seqs[q] for q in range(PROCS)]
                assert len(data) == count * RECORD
                stable = {q: before[q] == after[q] and before[q] % 2 == 0 for q in range(PROCS)}
                verified += check_range(rfile, first, data, stable, finished, fds[rfile])
        out.put((me, "ok", verified))
    except BaseException as exc:  # noqa: BLE001 (report, don't hang the parent)
        out.put((me, "error", repr(exc)))
    finally:
        for fd in fds:
            os.close(fd)


def run_round(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "wb") as f:
            f.truncate(SLOTS * RECORD)
    ctx = multiprocessing.get_context("fork")
    seqs = ctx.Array("q", PROCS, lock=False)
    done = ctx.Array("q", FILES * SLOTS, lock=False)
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(me, [str(p) for p in paths], seqs, done, 1000 + me, out))
             for me in range(PROCS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    errors = [r for r in results if r[1] != "ok"]
    assert not errors, errors
    assert sum(r[2] for r in results) > PASSES * FILES * SLOTS       # reads checked plenty


def verify_final(paths: list[Path]) -> None:
    for file, p in enumerate(paths):
        data = p.read_bytes()
        assert len(data) == SLOTS * RECORD
        for slot in range(SLOTS):
            assert data[slot * RECORD:(slot + 1) * RECORD] == record(file, slot, PASSES - 1), \
                f"{p.name} slot {slot} after the run"


@pytest.mark.heavy
def test_concurrent_checksummed_records(mounted, backend_kind):
    rounds = 12 if backend_kind == "smb" else 3
    all_paths = []
    for r in range(rounds):
        paths = [mounted.mountpoint / f"shared{r}-{i}" for i in range(FILES)]
        run_round(paths)
        verify_final(paths)
        all_paths.append(paths)
    mounted.remount()
    for paths in all_paths:
        verify_final(paths)
