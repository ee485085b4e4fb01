"""Minimal sd_notify(3): tell systemd (Type=notify units) when the mount is live.

Written out rather than depending on python-systemd/sdnotify: the protocol is one
datagram on an AF_UNIX socket named by $NOTIFY_SOCKET ('@' = abstract namespace),
and a mount run from a shell or a test (no NOTIFY_SOCKET) must not care at all.

Notification failures never raise: a broken notify socket must not take a
working mount down; systemd will time the unit out on its own if READY=1 is lost.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "notify_ready", "notify_reloading", "notify_status", "notify_stopping"]

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes | None:
    """$NOTIFY_SOCKET -> a socket address: a path, or a leading NUL for the abstract namespace."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock ("vsock:CID:PORT") and relative paths: not for a FUSE mount on a host


def notify(state: str) -> bool:
    """Send one raw sd_notify message ("READY=1\\nSTATUS=..."); False if not sent.

    Returns False silently when NOTIFY_SOCKET is unset (not started by systemd).
    """
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        log.debug("NOTIFY_SOCKET=%r is not a supported address; not notifying", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", raw, exc)
        return False


def _status_line(text: str) -> str:
    """STATUS= is one line; a newline would start a new (bogus) assignment."""
    return "STATUS=" + " ".join(text.split())


def notify_ready(status: str | None = None) -> bool:
    """The mount is live: systemd marks the unit started and releases waiting units."""
    msg = "READY=1"
    if status:
        msg += "\n" + _status_line(status)
    return notify(msg)


def notify_stopping(status: str | None = None) -> bool:
    """Shutdown began (unmount, flushing dirty chunks): keeps systemd from calling it a crash."""
    msg = "STOPPING=1"
    if status:
        msg += "\n" + _status_line(status)
    return notify(msg)


def notify_reloading(status: str | None = None) -> bool:
    """A reload began; send notify_ready() again when it is done."""
    msg = "RELOADING=1"
    if status:
        msg += "\n" + _status_line(status)
    return notify(msg)


def notify_status(text: str) -> bool:
    """Free-form status shown by `systemctl status` (e.g. "flushing 12 MiB")."""
    return notify(_status_line(text))
