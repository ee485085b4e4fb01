"""A server that dies under the backend: reconnect, reopen, and never a false success."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import trio

from sealfs.backends.base import BackendError
from tests.servers.samba import SambaServer, new_store

MiB = 1024 * 1024


def _block(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


@pytest.mark.serial       # the kill must land while writes are in flight: timing
async def test_kill_9_mid_write_reconnects_and_keeps_acknowledged_data(
        make_samba: Callable[..., SambaServer], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sealfs.smb")
    server = make_samba()
    store = new_store(server)
    backend = store.backend(smb_reconnect_timeout=20)
    await backend.connect()
    handle = await backend.open("long", write=True, create=True)
    block, blocks = 4 * MiB, 24
    acknowledged: dict[int, bytes] = {}
    failures: list[BackendError] = []
    half_way = trio.Event()
    restarted = trio.Event()

    async def crash_and_restart() -> None:
        await half_way.wait()
        await trio.to_thread.run_sync(server.kill)     # kill -9 the whole smbd group
        await trio.sleep(0.3)
        await trio.to_thread.run_sync(server.start)
        restarted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(crash_and_restart)
        # Writing goes on until the server is back (a loaded machine may finish the
        # planned blocks before the kill lands), so that the crash meets requests.
        i = 0
        while i < blocks or (not restarted.is_set() and i < 3 * blocks):
            if i == blocks // 3:
                half_way.set()
            data = _block(i, block)
            try:
                await backend.write(handle, i * block, data)
            except BackendError as exc:
                failures.append(exc)
            else:
                acknowledged[i] = data
            i += 1
    written = i
    assert restarted.is_set()
    # One request may fail while the server is down; every later one reconnects.
    lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
    assert lost or failures, "the crash never hit a request: the test proved nothing"
    assert len(failures) <= 1, failures
    assert len(acknowledged) >= written - 1
    assert max(acknowledged) == written - 1
    await backend.flush(handle)
    await backend.close(handle)

    on_share = (store.local / "long").read_bytes()
    for i, data in acknowledged.items():
        assert on_share[i * block:(i + 1) * block] == data, f"acknowledged block {i} is not on the share"
    # The reconnect re-verified encryption before any data moved.
    connects = [r for r in caplog.records if "connected: SMB 3.1.1, cipher AES-256-GCM" in r.getMessage()]
    assert len(connects) >= 3  # two channels at start, at least one again after the crash
    await backend.aclose()


async def test_restart_between_requests_reopens_handles(make_samba: Callable[..., SambaServer]) -> None:
    server = make_samba()
    store = new_store(server)
    backend = store.backend()
    h = await backend.open("f", write=True, create=True)
    await backend.write(h, 0, b"before")
    server.restart()
    await backend.write(h, 6, b" after")  # same handle, new connection, reopened file
    assert await backend.read(h, 0, 100) == b"before after"
    assert (await backend.stat("f")).size == 12
    await backend.close(h)
    assert (store.local / "f").read_bytes() == b"before after"
    await backend.aclose()


async def test_server_gone_for_good_is_eio_after_the_reconnect_window(
        make_samba: Callable[..., SambaServer]) -> None:
    server = make_samba()
    store = new_store(server)
    backend = store.backend(smb_reconnect_timeout=1.5)
    h = await backend.open("f", write=True, create=True)
    server.stop()
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        await backend.write(h, 0, b"lost")
    assert time.monotonic() - started < 10
    assert info.value.errno == 5 and "127.0.0.1" in str(info.value)
    with pytest.raises(BackendError):
        await backend.stat("f")
    await backend.aclose()
