"""sd_notify against a datagram socket we listen on, as systemd would."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealfs.fs.fuse import notify


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A path-bound AF_UNIX datagram socket (short path: sun_path holds 108 bytes)."""
    d = tempfile.mkdtemp(prefix="sfn", dir="/tmp")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()
    os.unlink(path)
    os.rmdir(d)


def test_ready_with_status(listener: socket.socket) -> None:
    assert notify.notify_ready("mounted /mnt/vol1")
    assert listener.recv(4096) == b"READY=1\nSTATUS=mounted /mnt/vol1"


def test_ready_without_status(listener: socket.socket) -> None:
    assert notify.notify_ready()
    assert listener.recv(4096) == b"READY=1"


def test_stopping(listener: socket.socket) -> None:
    assert notify.notify_stopping()
    assert listener.recv(4096) == b"STOPPING=1"
    assert notify.notify_stopping("flushing")
    assert listener.recv(4096) == b"STOPPING=1\nSTATUS=flushing"


def test_status_is_one_line(listener: socket.socket) -> None:
    """A newline in a status must not smuggle in another assignment such as READY=1."""
    assert notify.notify_status("bad\nREADY=1")
    assert listener.recv(4096) == b"STATUS=bad READY=1"


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sealfs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.notify_ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_unset_is_a_silent_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify_ready("x") is False
    assert notify.notify_stopping() is False
    assert notify.notify_status("x") is False


def test_dead_socket_does_not_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A vanished notify socket must never take a live mount down."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify.notify_ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify.notify_ready() is False
