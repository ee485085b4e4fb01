"""The channel: one encrypted SMB 3 connection, session and tree connect, and the credits
that bound how many requests it keeps in flight.

Transport encryption is *required*, not requested: only SMB 3 dialects are offered, the
session is set up with encryption on, and after the session and after every tree connect
the channel checks that every request it sends is encrypted and refuses
(TransportSecurityError) before any data moves if not. A channel reconnects on the next
request after a drop and re-verifies encryption.

Its public API, used by the backend and the handles: ``ensure`` (connect), ``attempt``
(run an operation, reconnecting and retrying once where that is safe), ``call`` (one
request or a compound), ``send``/``receive`` (the two halves of a call, for a caller that
reads one response before the next), ``pipeline`` and ``pipeline_reads`` (many single
requests in flight at once), ``io_size``, ``forget`` and ``close``. All of it blocks: it
runs in worker threads.
"""

from __future__ import annotations

import collections
import errno
import getpass
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from smbprotocol.connection import Ciphers, Connection, Dialects, SigningAlgorithms
from smbprotocol.exceptions import SMBAuthenticationError, SMBException, SMBResponseException
from smbprotocol.header import NtStatus
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    SMB2CloseRequest,
)
from smbprotocol.open import (
    FilePipePrinterAccessMask as Access,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from ..base import BackendError, TransportSecurityError
from .config import SmbSettings, SmbTarget
from .messages import DIR_LIST_ACCESS, RELATED_FID, STALE_STATUSES, create_msg, read_payload, status_error
from .snapshots import add_timewarp, timewarp_contexts
from .wire import EncryptingConnection, LeanTcp

log = logging.getLogger("sealfs.smb")

T = TypeVar("T")

CIPHER_NAMES = {
    0: "none",
    Ciphers.AES_128_CCM: "AES-128-CCM",
    Ciphers.AES_128_GCM: "AES-128-GCM",
    Ciphers.AES_256_CCM: "AES-256-CCM",
    Ciphers.AES_256_GCM: "AES-256-GCM",
}
DIALECT_NAMES = {
    Dialects.SMB_2_0_2: "SMB 2.0.2",
    Dialects.SMB_2_1_0: "SMB 2.1",
    Dialects.SMB_3_0_0: "SMB 3.0",
    Dialects.SMB_3_0_2: "SMB 3.0.2",
    Dialects.SMB_3_1_1: "SMB 3.1.1",
}
SIGNING_NAMES = {SigningAlgorithms.HMAC_SHA256: "HMAC-SHA256", SigningAlgorithms.AES_CMAC: "AES-CMAC",
                 SigningAlgorithms.AES_GMAC: "AES-GMAC"}

# Offering no HMAC-SHA256 signing makes smbprotocol drop SMB 2.x from the dialect list.
_SMB3_SIGNING = [SigningAlgorithms.AES_GMAC, SigningAlgorithms.AES_CMAC]
# AES-128-CCM must be offered for SMB 3.0/3.0.2 (their only cipher) to be offered at all.
_ALL_CIPHERS = [Ciphers.AES_256_GCM, Ciphers.AES_128_GCM, Ciphers.AES_256_CCM, Ciphers.AES_128_CCM]


# -- errors ---------------------------------------------------------------------------------
class ConnectionLost(Exception):
    """The channel died under a request; the caller reconnects (and maybe retries)."""


class _Unreachable(Exception):
    """TCP/SMB connect failed for a reason that may pass (server restarting)."""


# -- one connection + session + tree ---------------------------------------------------------------
class Channel:
    """An encrypted connection, session and tree connect; rebuilt after a drop.

    ``generation`` grows on every (re)connect so handles know when their file id died.
    All methods block: they run in worker threads.
    """

    def __init__(self, target: SmbTarget, settings: SmbSettings, index: int,
                 password: Callable[[], str | None], generations: Iterator[int]) -> None:
        self.target = target
        self.settings = settings
        self.index = index
        self._password = password        # asked at session setup (the backend asks its source once)
        self._generations = generations  # shared by the backend's channels: no two reuse a number
        self.conn: EncryptingConnection | None = None
        self.session: Session | None = None
        self.tree: TreeConnect | None = None
        self.generation = 0
        self.ever_connected = False
        self._connect_lock = threading.Lock()
        self._credits = threading.Condition()
        self.info = ""

    # connect / verify ---------------------------------------------------------------------
    def ensure(self) -> int:
        """Return a live generation, (re)connecting first if needed."""
        conn = self.conn
        if conn is not None and self._alive(conn):
            return self.generation
        with self._connect_lock:
            if self.conn is not None and self._alive(self.conn):
                return self.generation
            self._drop()
            deadline = time.monotonic() + (self.settings.reconnect_timeout if self.ever_connected else 0)
            delay = 0.1
            while True:
                try:
                    self._connect()
                    break
                except _Unreachable as exc:
                    if time.monotonic() + delay > deadline:
                        raise BackendError(f"{self.target.where}: cannot reach SMB server: {exc}") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
            self.generation = next(self._generations)
            self.ever_connected = True
            return self.generation

    @staticmethod
    def _alive(conn: EncryptingConnection) -> bool:
        worker = conn._t_worker
        return (worker is not None and worker.is_alive() and conn._t_exc is None
                and conn.transport is not None and conn.transport.connected)

    def _connect(self) -> None:
        t = self.target
        settings = self.settings
        # Samba picks from its own preference order (AES-128 first), so AES-256-GCM is
        # asked for alone first; only if refused (and allowed) is the full list offered.
        attempts = ([[Ciphers.AES_256_GCM]] if settings.require_aes256
                    else [[Ciphers.AES_256_GCM], _ALL_CIPHERS])
        conn = None
        for i, ciphers in enumerate(attempts):
            conn = EncryptingConnection(uuid.uuid4(), t.host, t.port, require_signing=True)
            try:
                conn.connect(timeout=settings.connect_timeout, preferred_encryption_algos=ciphers,
                             preferred_signing_algos=_SMB3_SIGNING)
            except ValueError as exc:  # smbprotocol's wrapper for a failed TCP connect
                raise _Unreachable(self._tcp_failure(exc, settings.connect_timeout)) from None
            except (OSError, SMBException, KeyError, struct.error) as exc:
                _quiet_disconnect(conn)
                if isinstance(exc, OSError) and not isinstance(exc, SMBException):
                    # The TCP connect worked (its failure is the ValueError above): the
                    # server closed or reset the connection before any reply. Whether that
                    # shows as EBADF (smbprotocol's reader saw the close first and closed
                    # the socket under the negotiate's send), EPIPE or ECONNRESET is a race.
                    raise _Unreachable(f"no SMB reply to the negotiate request: the connection "
                                       f"was closed ({_short(exc)})") from None
                if isinstance(exc, SMBException) and not isinstance(exc, SMBResponseException):
                    # Closed or silent: an SMB 2/3 server answers even a negotiate it cannot
                    # satisfy (STATUS_NOT_SUPPORTED), so this says nothing about dialects.
                    raise _Unreachable(f"no SMB reply to the negotiate request: {_short(exc)}") from None
                if i + 1 < len(attempts):
                    continue  # AES-256-GCM alone offers 3.1.1 alone: retry with every SMB 3 dialect
                raise TransportSecurityError(
                    f"{t.where}: server negotiated no SMB 3 dialect (offered {_offered(ciphers)}): "
                    f"{_short(exc)}; sealfs requires SMB 3 with encryption") from None
            # From the next message on (the worker is waiting in the old recv for the
            # session setup reply, which is not encrypted anyway).
            conn.transport.__class__ = LeanTcp
            dialect = DIALECT_NAMES.get(conn.dialect, hex(conn.dialect or 0))
            cipher = self._cipher(conn)
            if conn.dialect < Dialects.SMB_3_0_0 or not conn.supports_encryption:
                _quiet_disconnect(conn)
                if i + 1 < len(attempts):
                    continue
                what = "AES-256-GCM" if settings.require_aes256 else "any SMB 3 cipher"
                raise TransportSecurityError(
                    f"{t.where}: server negotiated {dialect} with cipher {CIPHER_NAMES.get(cipher, cipher)}"
                    f" when offered {what}; sealfs requires SMB encryption")
            if settings.require_aes256 and cipher != Ciphers.AES_256_GCM:
                _quiet_disconnect(conn)
                raise TransportSecurityError(
                    f"{t.where}: server negotiated {dialect} with {CIPHER_NAMES.get(cipher, cipher)};"
                    f" AES-256-GCM is required (smb_require_aes256)")
            break
        assert conn is not None
        try:
            session = self._session_setup(conn)
            tree = self._tree_connect(session)
        except BaseException:
            _quiet_disconnect(conn)
            raise
        self.conn, self.session, self.tree = conn, session, tree
        signing = SIGNING_NAMES.get(conn.signing_algorithm_id, "AES-CMAC")
        self.info = (f"{DIALECT_NAMES.get(conn.dialect)}, cipher {CIPHER_NAMES.get(self._cipher(conn))}, "
                     f"signing {signing}, share flag encrypt={bool(tree.encrypt_data)}")
        log.info("%s: channel %d connected: %s; every message encrypted", t.location, self.index, self.info)
        self._grow_credits()

    @staticmethod
    def _tcp_failure(exc: ValueError, timeout: float) -> str:
        """What the failed TCP connect was (smbprotocol wraps the OSError in a ValueError)."""
        cause = exc.__cause__
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name: {cause.strerror}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing listens on that port)"
        if isinstance(cause, TimeoutError):
            return f"no answer to the TCP connect within {timeout:g} s"
        if isinstance(cause, OSError):
            return f"TCP connect failed: {cause.strerror or cause}"
        return str(exc)

    @staticmethod
    def _cipher(conn: Connection) -> int:
        if conn.dialect is not None and conn.dialect >= Dialects.SMB_3_1_1:
            return conn.cipher_id or 0
        return Ciphers.AES_128_CCM if conn.supports_encryption else 0

    def _session_setup(self, conn: EncryptingConnection) -> Session:
        t = self.target
        password = self._password()
        user = t.user or (getpass.getuser() if password is not None else None)
        session = Session(conn, username=user, password=password, require_encryption=True)
        try:
            session.connect()
        except SMBAuthenticationError as exc:
            raise BackendError(f"{t.where}: authentication failed for {user or 'the Kerberos ticket'}:"
                               f" {_short(exc)}", errno.EACCES) from None
        except SMBResponseException as exc:
            if exc.status in (0xC000006D, 0xC0000022, 0xC000006E, 0xC0000072, 0xC0000193):
                raise BackendError(f"{t.where}: authentication failed for {user}: {_short(exc)}",
                                   errno.EACCES) from None
            raise BackendError(f"{t.where}: session setup failed: {_short(exc)}") from None
        except SMBException as exc:
            if "encrypt" in str(exc).lower():
                raise TransportSecurityError(
                    f"{t.where}: session refused encryption: {_short(exc)}") from None
            raise BackendError(f"{t.where}: session setup failed: {_short(exc)}") from None
        except (OSError, KeyError, TypeError) as exc:
            raise _Unreachable(f"session setup: {_short(exc)}") from None
        if not (session.encrypt_data and session.encryption_key and session.decryption_key):
            raise TransportSecurityError(f"{t.where}: session is not encrypted after setup "
                                         f"({DIALECT_NAMES.get(conn.dialect)}); refusing")
        return session

    def _tree_connect(self, session: Session) -> TreeConnect:
        t = self.target
        conn = session.connection
        tree = TreeConnect(session, rf"\\{t.host}\{t.share}")
        try:
            tree.connect()
        except SMBResponseException as exc:
            if exc.status == NtStatus.STATUS_BAD_NETWORK_NAME:
                raise BackendError(f"{t.where}: no such share", errno.ENOENT) from None
            if exc.status == 0xC0000022:
                raise BackendError(f"{t.where}: access to the share denied", errno.EACCES) from None
            raise BackendError(f"{t.where}: tree connect failed: {_short(exc)}") from None
        except (SMBException, OSError, KeyError, TypeError) as exc:
            if getattr(conn, "plaintext_seen", False):
                raise TransportSecurityError(f"{t.where}: the share answered unencrypted; refusing") from None
            raise _Unreachable(f"tree connect: {_short(exc)}") from None
        # Every request on this tree is encrypted iff the session encrypts (smbprotocol
        # encrypts when session.encrypt_data or tree.encrypt_data); responses are held to
        # it by EncryptingConnection. A probe round trip proves the server plays along.
        if not session.encrypt_data or conn.plaintext_seen:
            raise TransportSecurityError(f"{t.where}: tree is not encrypted; refusing")
        try:
            self._probe(session, tree)
        except (SMBException, OSError, KeyError, TypeError, ConnectionLost) as exc:
            if conn.plaintext_seen:
                raise TransportSecurityError(
                    f"{t.where}: the share answered unencrypted "
                    f"(share flag encrypt={bool(tree.encrypt_data)}); refusing") from None
            raise _Unreachable(f"probe: {_short(exc)}") from None
        return tree

    def _probe(self, session: Session, tree: TreeConnect) -> None:
        conn = session.connection
        create = create_msg("", DIR_LIST_ACCESS & ~Access.FILE_READ_DATA, CreateDisposition.FILE_OPEN,
                             CreateOptions.FILE_DIRECTORY_FILE)
        close = SMB2CloseRequest()
        close["file_id"] = RELATED_FID
        reqs = conn.send_compound([create, close], session.session_id, tree.tree_connect_id, related=True)
        for req in reqs:
            conn.receive(req, timeout=self.settings.request_timeout)

    def _grow_credits(self) -> None:
        """Ask for enough credits to keep many requests in flight (one ECHO)."""
        conn, session = self.conn, self.session
        assert conn is not None and session is not None
        want = self.settings.credit_target
        have = conn.sequence_window["high"] - conn.sequence_window["low"]
        if have < want:
            from smbprotocol.connection import SMB2Echo
            req = conn.send(SMB2Echo(), sid=session.session_id, credit_request=want - have)
            conn.receive(req, timeout=self.settings.request_timeout)

    def _drop(self) -> None:
        conn = self.conn
        self.conn = self.session = self.tree = None
        if conn is not None:
            _quiet_disconnect(conn, logoff=False)

    def close(self) -> None:
        with self._connect_lock:
            conn = self.conn
            self.conn = self.session = self.tree = None
            if conn is not None:
                _quiet_disconnect(conn, logoff=self._alive(conn))

    # requests ------------------------------------------------------------------------------
    def send(self, messages: list[Any], related: bool) -> list[Any]:
        """Send once enough credits are granted; never send on a dead connection."""
        conn, session, tree = self.conn, self.session, self.tree
        if conn is None or session is None or tree is None or not self._alive(conn):
            raise ConnectionLost("connection closed")
        if self.settings.snapshot:
            add_timewarp(messages, timewarp_contexts(self.settings.snapshot))
        charge = sum(max(conn._calculate_credit_charge(m), 1) for m in messages)
        deadline = time.monotonic() + self.settings.request_timeout
        with self._credits:
            while conn.sequence_window["high"] - conn.sequence_window["low"] < charge + 1:
                if not self._alive(conn):
                    raise ConnectionLost("connection closed")
                if time.monotonic() > deadline:
                    raise ConnectionLost("no SMB credits granted in time")
                self._credits.wait(0.05)
            try:
                if len(messages) == 1:
                    extra = 8 if conn.sequence_window["high"] - conn.sequence_window["low"] < \
                        self.settings.credit_target else 0
                    own = max(conn._calculate_credit_charge(messages[0]), 1)
                    return [conn.send(messages[0], session.session_id, tree.tree_connect_id,
                                      credit_request=own + extra)]
                return conn.send_compound(messages, session.session_id, tree.tree_connect_id, related=related)
            except SMBException as exc:
                raise ConnectionLost(_short(exc)) from None
            except OSError as exc:
                raise ConnectionLost(_short(exc)) from None

    def receive(self, request: Any) -> Any:
        """Wait for one response; a dead receive thread or a timeout is a lost connection."""
        conn = self.conn
        if conn is None:
            raise ConnectionLost("connection closed")
        deadline = time.monotonic() + self.settings.request_timeout
        try:
            while not request.response_event.wait(0.25):
                if not self._alive(conn):
                    raise ConnectionLost("connection closed")
                if time.monotonic() > deadline:
                    raise ConnectionLost("request timed out")
            if request.response is None:
                raise ConnectionLost("connection closed")
            return conn.receive(request, timeout=self.settings.request_timeout)
        except SMBResponseException:
            raise
        except (SMBException, OSError, TypeError, KeyError) as exc:
            raise ConnectionLost(_short(exc)) from None
        finally:
            with self._credits:
                self._credits.notify_all()

    def call(self, messages: list[Any], related: bool = False,
             tolerate: dict[int, int] | None = None) -> list[Any]:
        """Send messages (a compound if several) and return all responses.

        Raises the first error response as SMBResponseException, after draining the rest;
        tolerate maps a message index to a status that is no error there (response None).
        """
        reqs = self.send(messages, related)
        responses: list[Any] = []
        first_error: SMBResponseException | None = None
        for i, req in enumerate(reqs):
            try:
                responses.append(self.receive(req))
            except SMBResponseException as exc:
                responses.append(None)
                if tolerate is not None and tolerate.get(i) == exc.status:
                    continue
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error
        return responses

    def pipeline(self, messages: list[Any], tolerate: int | None = None,
                 stop_at_error: bool = False) -> list[Any]:
        """Keep as many single requests in flight as credits allow; responses in order.

        A response with status tolerate is no error (None in its place). Otherwise the
        first error response is raised once every request was sent and answered, or with
        stop_at_error at once: nothing more is sent, and the requests in flight are drained
        first so that their credits come back.
        """
        conn = self.conn
        if conn is None:
            raise ConnectionLost("connection closed")
        results: list[Any] = [None] * len(messages)
        inflight: collections.deque[tuple[int, Any]] = collections.deque()
        first_error: SMBResponseException | None = None
        i = 0
        while i < len(messages) or inflight:
            if i < len(messages):
                charge = max(conn._calculate_credit_charge(messages[i]), 1)
                if conn.sequence_window["high"] - conn.sequence_window["low"] >= charge + 1 or not inflight:
                    inflight.append((i, self.send([messages[i]], False)[0]))
                    i += 1
                    continue
            j, req = inflight.popleft()
            try:
                results[j] = self.receive(req)
            except SMBResponseException as exc:
                if exc.status == tolerate:
                    continue
                if stop_at_error:
                    for _, rest in inflight:
                        try:
                            self.receive(rest)
                        except SMBResponseException:
                            pass
                    raise
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error
        return results

    def pipeline_reads(self, messages: list[Any]) -> list[memoryview]:
        """Pipeline READs; STATUS_END_OF_FILE is an empty piece, not an error."""
        responses = self.pipeline(messages, tolerate=NtStatus.STATUS_END_OF_FILE, stop_at_error=True)
        return [memoryview(b"") if r is None else read_payload(r) for r in responses]

    def io_size(self, read: bool) -> int:
        """Bytes per READ or WRITE request: the setting, capped by what the server takes."""
        conn = self.conn
        server_max = (conn.max_read_size if read else conn.max_write_size) if conn else 65536
        return max(4096, min(self.settings.io_size, server_max or 65536))

    # retries -------------------------------------------------------------------------------
    def attempt(self, op: Callable[[], T], path: str, idempotent: bool) -> T:
        """Run op on a live channel; on a dropped connection reconnect, and retry if safe."""
        for attempt in (0, 1):
            self.ensure()
            try:
                return op()
            except SMBResponseException as exc:
                if exc.status in STALE_STATUSES and attempt == 0:
                    self.forget()
                    if idempotent:
                        continue
                    raise BackendError(f"{path or '/'}: server dropped the session; not retried") from None
                raise status_error(exc, path) from None
            except ConnectionLost as exc:
                conn = self.conn
                if conn is not None and conn.plaintext_seen:
                    self._drop()
                    raise TransportSecurityError(f"{self.target.where}: server sent an unencrypted "
                                                 "message; connection dropped") from None
                self.forget()
                if attempt == 0 and idempotent:
                    log.warning("%s: connection lost (%s); reconnecting", self.target.where, exc)
                    continue
                raise BackendError(f"{path or '/'}: connection to {self.target.where} lost: {exc}") from None
        raise AssertionError("unreachable")

    def forget(self) -> None:
        """Drop the connection (the server forgot us, or it died): the next request reconnects."""
        with self._connect_lock:
            self._drop()


def _quiet_disconnect(conn: Connection, logoff: bool = False) -> None:
    try:
        if conn.transport is not None:
            conn.disconnect(close=logoff, timeout=2)
    except Exception:  # noqa: BLE001 - best effort on an already broken connection
        pass


def _offered(ciphers: list[int]) -> str:
    dialects = "3.0, 3.0.2, 3.1.1" if Ciphers.AES_128_CCM in ciphers else "3.1.1"
    return f"SMB {dialects} with {'/'.join(CIPHER_NAMES[c] for c in ciphers)}"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]

