"""The wire: smbprotocol's connection and transport, with encryption enforced inbound and
the copies of each megabyte taken out of the send and receive paths.

These classes override private parts of smbprotocol (Connection._send, _encrypt,
_decrypt, sequence_lock, sequence_window, _calculate_credit_charge and the worker's
transport.recv; the transport's class is swapped for LeanTcp after the negotiate).
tests/smb/test_smbprotocol_shape.py checks those shapes against the installed version,
and pyproject pins the versions they were checked against.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from smbprotocol.connection import Ciphers, Connection, Dialects, Request
from smbprotocol.exceptions import SMBException
from smbprotocol.header import Commands, Smb2Flags, SMB2HeaderRequest
from smbprotocol.open import SMB2WriteRequest
from smbprotocol.session import Session
from smbprotocol.transport import Tcp

from .messages import write_msg


class _PeerAbortIsReported(logging.Filter):
    """smbprotocol's Tcp.recv (the transport until the negotiate is answered; LeanTcp after)
    logs a WARNING when the peer resets the connection and reads that as EOF. The channel
    reports the dropped connection itself ("no SMB reply to the negotiate request"), and
    the CLI's error is one line: whether a reset or a plain close comes first is a race."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("socket aborted by peer")


logging.getLogger("smbprotocol.transport").addFilter(_PeerAbortIsReported())


# -- connection with an inbound-encryption check ----------------------------------------------
class EncryptingConnection(Connection):
    """A Connection that refuses plaintext messages on an encrypting session.

    smbprotocol verifies signatures only for messages that were *not* encrypted, so this
    hook sees exactly the plaintext ones. After session setup none may arrive.
    """

    plaintext_seen: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._aeads: dict[int, tuple[bytes, Any]] = {}     # session id -> (key, cipher object)
        self._sealers: dict[int, tuple[bytes, Any]] = {}   # the same for the outbound key

    def verify_signature(self, header, session_id, force=False):  # type: ignore[override]
        session = self.session_table.get(session_id)
        if (session is not None and session.encrypt_data
                and header["command"].get_value() != Commands.SMB2_SESSION_SETUP):
            self.plaintext_seen = True
            raise SMBException("server sent an unencrypted SMB message on an encrypted session")
        return super().verify_signature(header, session_id, force=force)

    def _aead(self, table: dict[int, tuple[bytes, Any]], session: Session, key: bytes, gcm: bool) -> Any:
        """The session key's cipher object, built once (smbprotocol builds one per message)."""
        entry = table.get(session.session_id)
        if entry is None or entry[0] != key:
            entry = table[session.session_id] = (key, (AESGCM if gcm else AESCCM)(key))
        return entry[1]

    def _gcm(self) -> bool:
        """SMB 3.1.1 with AES-GCM: the transform header layout the fast paths write."""
        return self.dialect >= Dialects.SMB_3_1_1 and self.cipher_id in (Ciphers.AES_128_GCM,
                                                                         Ciphers.AES_256_GCM)

    def _send(self, messages, session_id=None, tree_id=None, message_id=None,  # type: ignore[override]
              credit_request=None, related=False, async_id=None, force_signature=False):
        """A lone GatheredWrite on an encrypted GCM session goes out sealed straight from
        its segments (_send_gathered); anything else, and such a write anywhere else
        (joined first), goes smbprotocol's way."""
        if len(messages) == 1 and type(messages[0]) is GatheredWrite:
            session = self.session_table.get(session_id)
            if (session is not None and session.encrypt_data and self._gcm() and tree_id
                    and message_id is None and async_id is None and not force_signature):
                return [self._send_gathered(messages[0], session, tree_id, credit_request)]
        messages = [m.joined() if type(m) is GatheredWrite else m for m in messages]
        return super()._send(messages, session_id, tree_id, message_id, credit_request,
                             related, async_id, force_signature)

    def _send_gathered(self, message: GatheredWrite, session: Session, tree_id: int,
                       credit_request: int | None) -> Request:
        """smbprotocol's _send for one WRITE without its copies of the data: the header
        and the request's fixed part are packed alone (112 bytes) and the data is
        encrypted from the caller's buffers into this thread's wire buffer. smbprotocol
        copies each 1 MiB into bytes, into the packed request and into the packed header,
        and allocates the wire buffer, all under the GIL: those copies were most of the
        client's time per WRITE (docs/PERFORMANCE.md, "Why the SMB code is shaped as it is")."""
        tree = session.tree_connect_table.get(tree_id)
        if tree is None:
            raise SMBException(f"Cannot find Tree with the ID {tree_id} in the session tree table")
        with self.sequence_lock:
            charge = self._calculate_credit_charge(message)
            low, high = self.sequence_window["low"], self.sequence_window["high"]
            if charge > high - low:
                raise SMBException(f"Request requires {charge} credits but only {high - low} "
                                   "credits are available")
            self.sequence_window["low"] += charge if charge > 0 else 1
        header = SMB2HeaderRequest()
        header["tree_id"] = tree_id
        header["credit_charge"] = charge
        header["command"] = Commands.SMB2_WRITE
        header["credit_request"] = credit_request or charge
        header["message_id"] = low
        header["session_id"] = session.session_id
        header["data"] = message.fixed()
        header["next_command"] = 0
        if tree.is_dfs_share:
            header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_DFS_OPERATIONS)
        request = Request(header, SMB2WriteRequest, self, session_id=session.session_id)
        self.outstanding_requests[low] = request
        wire = self._seal_pieces(session, [header.pack(), *message.segments])
        self._check_worker_running()
        self.transport.send(wire)
        return request

    def _seal_pieces(self, session: Session, pieces: list) -> Wire:
        """One message made of pieces, GCM-sealed piece by piece into this thread's wire
        buffer (sent before the thread seals its next message, so it can be reused)."""
        size = sum(len(p) for p in pieces)
        need = 4 + _TRANSFORM_HEADER_SIZE + size + _TAG_SIZE
        wire = getattr(_THREAD_WIRE, "buf", None)
        if wire is None or len(wire) < need:
            wire = _THREAD_WIRE.buf = bytearray(need)
        view = memoryview(wire)
        nonce = os.urandom(12)
        struct.pack_into(">L4s", wire, 0, _TRANSFORM_HEADER_SIZE + size, b"\xfdSMB")
        struct.pack_into("<12s4xIHHQ", wire, 24, nonce, size, 0, 0x0001, session.session_id)
        sealer = Cipher(algorithms.AES(session.encryption_key), modes.GCM(nonce)).encryptor()
        sealer.authenticate_additional_data(bytes(view[24:56]))
        pos = 56
        for piece in pieces:
            pos += sealer.update_into(piece, view[pos:])
        sealer.finalize()
        wire[8:24] = sealer.tag                               # the tag is the signature
        return Wire(view[:56 + size])

    def _encrypt(self, b_data, session):  # type: ignore[override]
        """Seal a message straight into its wire buffer: length prefix, transform header,
        ciphertext; the tag goes into the header. smbprotocol slices the ciphertext off
        the tag and packs header and packet around it: three more copies of each 1 MiB
        message, under the GIL, which every other thread of the mount waits for
        (docs/PERFORMANCE.md, "Why the SMB code is shaped as it is")."""
        if not self._gcm():
            return super()._encrypt(b_data, session)
        size = len(b_data)
        wire = bytearray(4 + _TRANSFORM_HEADER_SIZE + size + _TAG_SIZE)
        nonce = os.urandom(12)
        struct.pack_into(">L", wire, 0, _TRANSFORM_HEADER_SIZE + size)
        wire[4:8] = b"\xfdSMB"
        wire[24:36] = nonce                                   # 36:40 stay zero
        struct.pack_into("<IHHQ", wire, 40, size, 0, 0x0001, session.session_id)
        aead = self._aead(self._sealers, session, session.encryption_key, True)
        view = memoryview(wire)
        aead.encrypt_into(nonce, b_data, bytes(view[24:56]), view[56:])
        wire[8:24] = view[56 + size:]                         # the tag is the signature
        return Wire(view[:56 + size])

    def _decrypt(self, message):  # type: ignore[override]
        """Decrypt the message LeanTcp kept, in place: the tag moves behind the body so
        that ciphertext + tag is one view, and the associated data is read from the
        message as received (smbprotocol re-packs the whole message for it)."""
        transport = self.transport
        raw = getattr(transport, "sealed", None)
        if raw is None:
            return super()._decrypt(message)
        transport.sealed = None
        flags = message["flags"].get_value()
        if flags != 0x0001:
            raise SMBException(f"Expecting flag of 0x0001 but got {flags:x} "
                               "in the SMB Transform Header Response")
        session = self.session_table.get(message["session_id"].get_value())
        if session is None:
            raise SMBException("Failed to find valid session for message decryption")
        gcm = self._gcm()
        raw[len(raw) - _TAG_SIZE:] = raw[4:20]
        view = memoryview(raw)
        aead = self._aead(self._aeads, session, session.decryption_key, gcm)
        nonce = bytes(view[20:32] if gcm else view[20:31])
        return aead.decrypt(nonce, view[_TRANSFORM_HEADER_SIZE:], bytes(view[20:_TRANSFORM_HEADER_SIZE]))


class LeanTcp(Tcp):
    """smbprotocol's transport with a receive path that does not copy each message four
    times under the GIL: one recv_into a buffer of the message's size, and an encrypted
    message is handed to EncryptingConnection._decrypt in place (see there).

    Tcp.recv reads a message in socket-sized pieces through select(), appends each to a
    bytearray and returns a bytes copy; the worker thread then slices the transform
    header's payload out (a copy) and _decrypt packs the whole message again for 32
    bytes of associated data (another) and appends the tag (another). At 1 MiB per
    READ that was most of the client's time on a sequential read.
    """

    sealed: memoryview | None = None   # the last encrypted message, kept for _decrypt
    _inbox: bytearray | None = None    # reused for every message: the one receive thread
                                       # decrypts each before it receives the next

    def send(self, header):
        if type(header) is not Wire:
            return super().send(header)
        with self._sock_lock:
            self._sock.sendall(header.view)   # no slicing copies on a partial send

    def recv(self, timeout):
        self.sealed = None
        head = bytearray(4)
        got, timeout = self._recv_into(memoryview(head), timeout, idle_ok=True)
        if got < 4:
            return b""
        size = struct.unpack(">L", head)[0]
        # 16 spare bytes: _decrypt appends the GCM tag there instead of copying the body.
        if self._inbox is None or len(self._inbox) < size + _TAG_SIZE:
            self._inbox = bytearray(size + _TAG_SIZE)
        buf = memoryview(self._inbox)[:size + _TAG_SIZE]
        got, _ = self._recv_into(buf[:size], timeout, idle_ok=False)
        if got < size:
            return b""
        if size > _TRANSFORM_HEADER_SIZE and buf[:4] == b"\xfdSMB":
            self.sealed = buf
            return bytes(buf[:_TRANSFORM_HEADER_SIZE])   # header fields only; payload stays in buf
        return bytes(buf[:size])

    def _recv_into(self, view: memoryview, timeout: float, idle_ok: bool) -> tuple[int, float]:
        """Fill view; 0 if the socket closed. Waiting for a message to start honours the
        timeout (smbprotocol's worker sends a keep-alive echo on it); once a message has
        started, the rest is read with MSG_WAITALL (a stalled server is caught by the
        caller's request timeout, which drops the connection and so wakes this recv)."""
        offset = 0
        while offset < len(view):
            with self._close_lock:
                if not self.connected:
                    return 0, timeout
                if offset == 0 and idle_ok:
                    start = time.monotonic()
                    if not select.select([self._sock], [], [], max(timeout, 1))[0]:
                        raise TimeoutError(f"recv idle for {time.monotonic() - start:.1f}s")
                    timeout -= time.monotonic() - start
                try:
                    n = self._sock.recv_into(view[offset:], len(view) - offset,
                                             0 if idle_ok and offset == 0 else socket.MSG_WAITALL)
                except OSError as exc:
                    if exc.errno not in (errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED):
                        raise
                    n = 0
            if n == 0:
                self.close()
                return 0, timeout
            offset += n
            idle_ok = False
        return offset, timeout


_TAG_SIZE = 16
_TRANSFORM_HEADER_SIZE = 52   # protocol id, signature (the tag), nonce, size, flags, session


class Wire:
    """An encrypted message as it goes on the wire (EncryptingConnection._encrypt)."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view


# Each thread's buffer for the WRITEs it seals (_seal_pieces): at most one I/O size each.
_THREAD_WIRE = threading.local()
_WRITE_FIXED = struct.Struct("<HHIQ16sIIHHI")   # MS-SMB2 2.2.21, everything before the data


class _Field:
    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def get_value(self) -> int:
        return self.value


class GatheredWrite:
    """A WRITE whose data stays in the caller's buffers (a list of byte views), sealed
    from them straight into the wire buffer by EncryptingConnection._send_gathered."""

    COMMAND = Commands.SMB2_WRITE
    __slots__ = ("fid", "offset", "segments", "length")

    def __init__(self, fid: bytes, offset: int, segments: list[memoryview]) -> None:
        self.fid = fid
        self.offset = offset
        self.segments = segments
        self.length = sum(len(s) for s in segments)

    def __getitem__(self, name: str) -> _Field:
        """The two fields Connection._calculate_credit_charge reads from a WRITE."""
        return _Field({"length": self.length, "write_channel_info_length": 0}[name])

    def fixed(self) -> bytes:
        return _WRITE_FIXED.pack(49, 0x70, self.length, self.offset, self.fid, 0, 0, 0, 0, 0)

    def joined(self) -> Any:
        return write_msg(self.fid, self.offset, b"".join(self.segments))


