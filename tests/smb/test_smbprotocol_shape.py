"""The private parts of smbprotocol that backends/smb overrides or reads still have the shape
the overrides assume. No server needed: a new smbprotocol release that changes one of them
fails here, naming what changed, instead of as a hang or a garbled message on a mount.

What backends/smb/wire.py and channel.py rely on:
- EncryptingConnection overrides Connection._send, _encrypt, _decrypt and verify_signature,
  passes _send's arguments on positionally, and seals a WRITE itself under
  Connection.sequence_lock, moving sequence_window and filling outstanding_requests as
  _send does, after _check_worker_running;
- GatheredWrite stands in for an SMB2WriteRequest in _calculate_credit_charge;
- the receive worker hands LeanTcp.recv's result (a transform header alone) to
  SMB2TransformHeader and then to _decrypt;
- Channel reads conn._t_worker, conn._t_exc, conn.transport.connected and swaps
  conn.transport.__class__ from Tcp to LeanTcp, which replaces Tcp.send and Tcp.recv and
  uses Tcp's _sock, _sock_lock, _close_lock and close().
"""

from __future__ import annotations

import inspect
import struct
import threading
import uuid

import pytest
from smbprotocol.connection import Connection, Request, SMB2TransformHeader
from smbprotocol.header import SMB2HeaderRequest
from smbprotocol.open import SMB2WriteRequest
from smbprotocol.session import Session
from smbprotocol.transport import Tcp

from sealfs.backends.smb.wire import EncryptingConnection, GatheredWrite, LeanTcp


def _params(func) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(func).parameters.values()]


def _expect_signature(owner: type, name: str, expected: list[tuple[str, object]]) -> None:
    func = getattr(owner, name, None)
    assert func is not None, f"smbprotocol {owner.__name__}.{name} is gone: backends/smb/wire.py overrides it"
    got = _params(func)
    assert got == expected, (f"smbprotocol {owner.__name__}.{name} changed its signature: "
                             f"{got} instead of {expected}; backends/smb/wire.py overrides it")


def _source(owner: type, name: str) -> str:
    return inspect.getsource(getattr(owner, name))


empty = inspect.Parameter.empty


def test_overridden_connection_methods_keep_their_signatures() -> None:
    _expect_signature(Connection, "_send", [
        ("self", empty), ("messages", empty), ("session_id", None), ("tree_id", None), ("message_id", None),
        ("credit_request", None), ("related", False), ("async_id", None), ("force_signature", False)])
    _expect_signature(Connection, "_encrypt", [("self", empty), ("b_data", empty), ("session", empty)])
    _expect_signature(Connection, "_decrypt", [("self", empty), ("message", empty)])
    _expect_signature(Connection, "verify_signature",
                      [("self", empty), ("header", empty), ("session_id", empty), ("force", False)])
    _expect_signature(Connection, "_calculate_credit_charge", [("self", empty), ("message", empty)])
    _expect_signature(Connection, "_check_worker_running", [("self", empty)])
    _expect_signature(Request, "__init__", [("self", empty), ("message", empty), ("message_type", empty),
                                            ("connection", empty), ("session_id", None)])


def test_a_connection_has_the_attributes_the_overrides_use() -> None:
    conn = EncryptingConnection(uuid.uuid4(), "127.0.0.1", 1)
    for name in ("sequence_lock", "sequence_window", "outstanding_requests", "session_table", "transport",
                 "_t_worker", "_t_exc", "dialect", "cipher_id", "supports_encryption",
                 "supports_multi_credit", "signing_algorithm_id", "max_read_size", "max_write_size"):
        assert hasattr(conn, name), f"smbprotocol Connection has no attribute {name!r} any more"
    assert isinstance(conn.sequence_lock, type(threading.Lock())), \
        f"smbprotocol Connection.sequence_lock is a {type(conn.sequence_lock)}, not a Lock"
    assert set(conn.sequence_window) == {"low", "high"}, \
        f"smbprotocol Connection.sequence_window is {conn.sequence_window!r}, not low/high"
    assert isinstance(conn.outstanding_requests, dict), "smbprotocol outstanding_requests is no dict"
    assert conn._t_worker is None and conn._t_exc is None and conn.transport is None, \
        "smbprotocol Connection starts with a worker thread, an error or a transport before connect()"


def test_send_still_seals_and_charges_the_way_the_gathered_write_repeats() -> None:
    """_send_gathered does for one WRITE what _send does; if _send changes how it takes
    message ids, credits or encrypts, so must _send_gathered."""
    send = _source(Connection, "_send")
    for needle in ("with self.sequence_lock", 'self.sequence_window["low"]', "self._calculate_credit_charge(",
                   "self.outstanding_requests[", "Request(header,", "self._encrypt(send_data, session)",
                   "self._check_worker_running()", "self.transport.send(send_data)", "tree_connect_table",
                   "is_dfs_share"):
        assert needle in send, f"smbprotocol Connection._send no longer has {needle!r}: check _send_gathered"


def test_the_credit_charge_reads_a_gathered_write_like_a_write_request() -> None:
    conn = EncryptingConnection(uuid.uuid4(), "127.0.0.1", 1)
    conn.supports_multi_credit = True
    mib = memoryview(bytes(1024 * 1024))
    gathered = GatheredWrite(b"\x00" * 16, 0, [mib[:4096], mib[4096:]])
    plain = SMB2WriteRequest()
    plain["length"] = len(mib)
    assert conn._calculate_credit_charge(gathered) == conn._calculate_credit_charge(plain) == 16, \
        "smbprotocol _calculate_credit_charge reads other fields of a WRITE than GatheredWrite has"
    assert gathered.joined()["length"].get_value() == len(mib)


def test_the_receive_worker_hands_a_transform_header_to_decrypt() -> None:
    """LeanTcp.recv returns an encrypted message's 52-byte transform header alone; the
    worker must unpack it as SMB2TransformHeader and call _decrypt with it."""
    worker = _source(Connection, "_process_message_thread")
    for needle in ("self.transport.recv(", 'b"\\xfdSMB"', "SMB2TransformHeader()", "self._decrypt("):
        assert needle in worker, f"smbprotocol's receive worker no longer has {needle!r}: check LeanTcp.recv"
    header = bytearray(52)
    header[0:4] = b"\xfdSMB"
    struct.pack_into("<IHHQ", header, 36, 1024, 0, 0x0001, 7)
    msg = SMB2TransformHeader()
    msg.unpack(bytes(header))
    assert msg["flags"].get_value() == 1 and msg["session_id"].get_value() == 7, \
        "smbprotocol SMB2TransformHeader's layout changed (flags, session_id): check _decrypt"


def test_the_transport_class_swap_target_has_what_lean_tcp_replaces() -> None:
    assert "Tcp(" in _source(Connection, "connect"), "smbprotocol Connection.connect no longer builds a Tcp"
    _expect_signature(Tcp, "send", [("self", empty), ("header", empty)])
    _expect_signature(Tcp, "recv", [("self", empty), ("timeout", empty)])
    _expect_signature(Tcp, "close", [("self", empty)])
    tcp = Tcp("127.0.0.1", 1, 1)
    for name in ("_sock", "_sock_lock", "_close_lock", "connected"):
        assert hasattr(tcp, name), f"smbprotocol Tcp has no attribute {name!r} any more: LeanTcp uses it"
    tcp.__class__ = LeanTcp     # what Channel does after the negotiate
    assert type(tcp) is LeanTcp and not tcp.connected


def test_sessions_and_trees_have_what_the_channel_reads() -> None:
    conn = EncryptingConnection(uuid.uuid4(), "127.0.0.1", 1)
    session = Session(conn, username="u", password="p", require_encryption=True)
    for name in ("session_id", "encrypt_data", "encryption_key", "decryption_key", "tree_connect_table",
                 "connection"):
        assert hasattr(session, name), f"smbprotocol Session has no attribute {name!r} any more"
    header = SMB2HeaderRequest()
    request = Request(header, SMB2WriteRequest, conn, session_id=1)
    for name in ("response_event", "response"):
        assert hasattr(request, name), f"smbprotocol Request has no attribute {name!r} any more"


@pytest.mark.parametrize("name", ["_send", "_encrypt", "_decrypt", "verify_signature"])
def test_the_overrides_match_what_they_override(name: str) -> None:
    """Each override takes the parameters of the method it replaces."""
    assert _params(getattr(EncryptingConnection, name)) == _params(getattr(Connection, name)), \
        f"EncryptingConnection.{name} and smbprotocol's Connection.{name} take different parameters"
