"""Property-based: random sequences of write / truncate / read / flush / close+reopen /
volume reopen on one encrypted file agree with an in-memory bytearray model.

Hypothesis drives plain (sync) tests; each example runs its whole op list inside one
trio.run, against a fresh volume. Write-back runs three ways: lazily (at flush and
close), eagerly in line (a small dirty limit, no mount), and in the background as a
mount runs it (a small dirty limit and a nursery: the next ops race the write-back).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.layout import stored_size
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume, VolumeTuning


def ops_strategy(cs: int):
    # offsets and lengths cluster around chunk boundaries, where the bugs live
    boundary = st.integers(0, 6).flatmap(
        lambda k: st.integers(max(0, k * cs - 3), k * cs + 3))
    offset = st.one_of(boundary, st.integers(0, 6 * cs))
    length = st.one_of(st.integers(0, 8), st.integers(cs - 2, cs + 2), st.integers(0, 3 * cs))
    write = st.tuples(st.just("write"), offset, length, st.integers(0, 255))
    truncate = st.tuples(st.just("truncate"), offset)
    read = st.tuples(st.just("read"), offset, length)
    simple = st.sampled_from([("flush",), ("reopen_file",), ("reopen_volume",), ("read_all",)])
    return st.lists(st.one_of(write, write, truncate, read, simple), min_size=1, max_size=25)


WRITEBACK_MODES = ["lazy", "eager", "background"]


async def run_ops(root: Path, keyfile: Path, cs: int, ops, writeback: str) -> None:
    async with trio.open_nursery() as nursery:
        await _run_ops(root, keyfile, cs, ops, writeback,
                       nursery if writeback == "background" else None)


async def _run_ops(root: Path, keyfile: Path, cs: int, ops, writeback: str, nursery) -> None:
    store = root / "store"
    store.mkdir()
    secrets = KeySecrets(keyfile=keyfile)
    pins = PinStore(root / "pins.json")
    await Volume.init(LocalBackend(store), provider_for_init(None, secrets), chunk_size=cs, pins=pins)
    tuning = VolumeTuning()
    if writeback != "lazy":                     # force write-back in the middle of sequences
        tuning.files.file_dirty_limit = 2 * cs
        tuning.dirty_bytes = 3 * cs

    async def load() -> Volume:
        volume = await Volume.load(LocalBackend(store), secrets, pins=pins, tuning=tuning)
        volume.background = nursery
        return volume

    model = bytearray()
    vol = await load()
    f = await vol.create("model.bin")
    try:
        for step, op in enumerate(ops):
            where = f"step {step}: {op!r}"
            kind = op[0]
            if kind == "write":
                _, off, n, fill = op
                data = bytes([(fill + k) % 256 for k in range(n)])
                assert await f.write(off, data) == n, where
                if n:
                    if len(model) < off:
                        model.extend(bytes(off - len(model)))
                    model[off:off + n] = data
            elif kind == "truncate":
                await f.truncate(op[1])
                del model[op[1]:]
                model.extend(bytes(op[1] - len(model)))
            elif kind == "read":
                _, off, n = op
                assert await f.read(off, n) == bytes(model[off:off + n]), where
            elif kind == "read_all":
                assert await f.read(0, len(model) + cs) == model, where
            elif kind == "flush":
                await f.flush()
                bpath = f.state.bpath
                assert (store / bpath).stat().st_size == stored_size(len(model), cs), where
            elif kind == "reopen_file":
                await f.close()
                f = await vol.open("model.bin", write=True)
            elif kind == "reopen_volume":
                await f.close()
                await vol.close()
                vol = await load()
                f = await vol.open("model.bin", write=True)
            assert (await f.stat()).size == len(model), where
        await f.close()
        assert (await vol.stat("model.bin")).size == len(model)
        assert await vol.read_file("model.bin") == model
        await vol.close()
        vol = await load()
        assert await vol.read_file("model.bin") == model, "after reopening the volume"
    finally:
        await vol.close()


_KEY = os.urandom(32)


def _check(cs: int, ops, writeback: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keyfile = root / "key"
        keyfile.write_bytes(_KEY)
        keyfile.chmod(0o600)
        trio.run(run_ops, root, keyfile, cs, ops, writeback)


_SETTINGS = settings(max_examples=150, deadline=None, derandomize=False,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.slow
@pytest.mark.parametrize("writeback", WRITEBACK_MODES, ids=[f"{m}-writeback" for m in WRITEBACK_MODES])
@pytest.mark.parametrize("cs", [4096, 65536], ids=["4K", "64K"])
def test_random_operation_sequences_match_a_bytearray_model(cs, writeback):
    runs = []

    @_SETTINGS
    @given(ops=ops_strategy(cs))
    def check(ops):
        runs.append(len(ops))
        _check(cs, ops, writeback)
    check()
    assert len(runs) >= 50 and sum(runs) > 500, "hypothesis ran too few sequences"


def test_model_regression_shrink_write_reopen():
    """A fixed sequence that mixes every operation kind (runs even if hypothesis is lax)."""
    cs = 4096
    ops = [("write", 1, 0, 0), ("write", 0, 3 * cs, 1), ("flush",), ("truncate", cs - 1), ("write", 2 * cs + 1, 5, 9),
           ("read", cs - 3, cs), ("reopen_file",), ("truncate", 5 * cs), ("reopen_volume",),
           ("write", cs, cs, 3), ("read_all",), ("truncate", 0), ("write", 7, 1, 1), ("flush",)]
    for writeback in WRITEBACK_MODES:
        _check(cs, ops, writeback)


@pytest.mark.slow
def test_model_regression_read_while_a_background_write_back_lands():
    """Found by hypothesis: a write past a hole starts a background write-back; a read
    that awaits the committed chunks meanwhile saw chunk 4 as a hole (past the old size)
    before the await and as a committed chunk it had not loaded after it. A race: it
    failed 8 to 30 times in 30 before the fix, so it runs 40 times."""
    cs = 65536
    ops = [("truncate", 3 * cs + 1), ("write", 0, 0, 0), ("flush",), ("write", 5 * cs + 1, cs, 0),
           ("read_all",)]
    for _ in range(40):
        _check(cs, ops, "background")


def test_model_regression_presealed_chunks_rewritten_or_made_final():
    """Chunks sealed as a write completes them (non-final) must be sealed again when they
    change before the write-back, and as final when a truncate makes one the last."""
    cs = 4096
    ops = [("write", 0, 4 * cs, 1), ("write", cs + 5, 3, 7), ("flush",), ("reopen_file",), ("read_all",),
           ("write", 4 * cs, 2 * cs, 2), ("truncate", 5 * cs), ("flush",), ("reopen_volume",),
           ("read_all",), ("write", 5 * cs, cs, 4), ("truncate", 3 * cs), ("write", 3 * cs, cs, 6),
           ("reopen_file",), ("read_all",)]
    for writeback in WRITEBACK_MODES:
        _check(cs, ops, writeback)
