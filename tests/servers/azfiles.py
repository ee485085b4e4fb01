"""A protocol-level Azure Files REST server for tests.

Azurite has no File service, so the tests run the real azure-storage-file-share
clients (and a real azure-identity credential) against this server. It is a test
double at the protocol level and rejects what Azure rejects:

* HTTPS with a certificate from a test CA made here (clients trust it through
  REQUESTS_CA_BUNDLE / SSL_CERT_FILE), for ``ACCOUNT.file.example.test``;
* SharedKey signatures (the File service string-to-sign, 2015-02-21+), with the
  x-ms-date skew check; service SAS (sr=s|f) and account SAS (ss/srt), each with
  its own string-to-sign for the version the SDK sends, sp permissions, st/se and
  spr; bearer tokens from a local managed-identity endpoint (App Service style:
  IDENTITY_ENDPOINT + IDENTITY_HEADER) that carry a role claim ("Storage File Data
  Privileged Contributor" or "... Reader"), and the ``x-ms-file-request-intent:
  backup`` header Azure requires with OAuth on file data;
* Azure's XML error bodies and x-ms-error-code;
* shares (create, delete, properties, list, snapshots with metadata, reads with
  ?sharesnapshot=, read-only), directories (create, delete, properties, list with
  paging and extended info, rename), files (create, put range update/clear of at
  most 4 MiB, get range, properties with resize and SMB times, delete, rename).

Names are case-insensitive and case-preserving, as on Azure Files. Each share is a
directory under WORKDIR/shares (tests/servers/azfiles_disk.py): ``share_root()`` gives it
to tests that tamper with a store's bytes, ``stored_bytes()`` every file's content to tests
that look for plaintext. Snapshots are copies under WORKDIR/snapshots.

Test controls: fail_next(op, status, count, retry_after=...) for forced answers
(429 with Retry-After, 500, 503), hold_next(op) for an answer held back, calls (a Counter per operation), token_role
(the role the next tokens carry), delay, go_down()/start() for an outage.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import os
import secrets
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from functools import cmp_to_key
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlparse
from xml.sax.saxutils import escape

from tests.servers.azfiles_disk import Node, Share, now_ns
from tests.servers.keyvault import _TlsServer, ensure_hosts, make_test_pki
from tests.servers.ports import free_port

CONTRIBUTOR = "Storage File Data Privileged Contributor"
READER = "Storage File Data Privileged Reader"
STORAGE_RESOURCE = "https://storage.azure.com"
MAX_RANGE = 4 * 1024 * 1024
MAX_FILE = 4 * 1024 ** 4
DOMAIN = "file.example.test"
TENANT = "72f988bf-0000-4000-8000-00000000test"

# Which SAS permission letter each operation needs (Azure's documented mapping).
_SAS_PERM = {
    "get_share": "r", "share_stats": "r", "list_dir": "l", "get_dir": "r", "get_file": "r", "head_file": "r",
    "create_dir": "cw", "delete_dir": "d", "set_dir": "w", "create_file": "cw", "put_range": "w",
    "set_file": "w", "delete_file": "d", "rename_file": "w", "rename_dir": "w", "set_meta": "w",
    "create_share": "c", "delete_share": "d", "snapshot_share": "c", "list_shares": "l",
    "list_ranges": "r",
}
_READ_OPS = {"get_share", "share_stats", "list_dir", "get_dir", "get_file", "head_file", "list_ranges"}
# Share- and account-level operations that data-plane OAuth and a share SAS cannot reach.
_SHARE_LEVEL = {"create_share", "delete_share", "snapshot_share", "list_shares"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sign(key: bytes, text: str) -> str:
    return _b64(hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest())


def _iso(ns: int) -> str:
    """Azure's SMB time format: 7 fractional digits (100 ns ticks)."""
    secs, rem = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{rem // 100:07d}Z"


def _parse_iso(text: str) -> int:
    text = text.strip()
    if not text.endswith("Z"):
        raise ValueError(text)
    main, _, frac = text[:-1].partition(".")
    secs = dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    frac = (frac + "0000000")[:7]
    return int(secs) * 1_000_000_000 + int(frac) * 100


def _rfc1123(ns: int) -> str:
    return email.utils.formatdate(ns / 1e9, usegmt=True)


def _sas_time(text: str) -> float:
    text = text.strip()
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            continue
    raise ValueError(text)


def _header_sort(names: list[str]) -> list[str]:
    """The service's ordering of x-ms- headers (the SDK ships the same collation table)."""
    try:
        from azure.storage.fileshare._shared.authentication import compare
    except ImportError:      # pragma: no cover - plain ordinal order is the same for our headers
        return sorted(names)
    return sorted(names, key=cmp_to_key(compare))


@dataclass
class Fault:
    status: int
    count: int
    retry_after: int | None = None
    code: str | None = None


class StorageError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _err(status: int, code: str, message: str | None = None) -> StorageError:
    return StorageError(status, code, message or _MESSAGES.get(code, code))


_MESSAGES = {
    "ShareNotFound": "The specified share does not exist.",
    "ShareAlreadyExists": "The specified share already exists.",
    "ResourceNotFound": "The specified resource does not exist.",
    "ParentNotFound": "The specified parent path does not exist.",
    "ResourceAlreadyExists": "The specified resource already exists.",
    "ResourceTypeMismatch": "The specified resource type does not match the type of the existing resource.",
    "DirectoryNotEmpty": "The specified directory is not empty.",
    "AuthenticationFailed": "Server failed to authenticate the request. Make sure the value of "
                            "Authorization header is formed correctly including the signature.",
    "AuthorizationPermissionMismatch": "This request is not authorized to perform this operation "
                                       "using this permission.",
    "AuthorizationResourceTypeMismatch": "This request is not authorized to perform this operation "
                                         "using this resource type.",
    "AuthorizationServiceMismatch": "This request is not authorized to perform this operation "
                                    "using this service.",
    "AuthorizationProtocolMismatch": "This request is not authorized to perform this operation "
                                     "using this protocol.",
    "AuthorizationFailure": "This request is not authorized to perform this operation.",
    "InsufficientAccountPermissions": "The account being accessed does not have sufficient "
                                      "permissions to execute this operation.",
    "NoAuthenticationInformation": "Server failed to authenticate the request. Please refer to the "
                                   "information in the www-authenticate header.",
    "InvalidRange": "The range specified is invalid for the current size of the resource.",
    "InvalidHeaderValue": "The value for one of the HTTP headers is not in the correct format.",
    "MissingRequiredHeader": "An HTTP header that's mandatory for this request is not specified.",
    "InvalidQueryParameterValue": "Value for one of the query parameters specified in the request "
                                  "URI is invalid.",
    "UnsupportedHttpVerb": "The resource doesn't support the specified HTTP verb.",
    "Md5Mismatch": "The MD5 value specified in the request did not match with the MD5 value "
                   "calculated by the server.",
    "RequestBodyTooLarge": "The request body is too large and exceeds the maximum permissible limit.",
    "OperationNotSupportedOnShareSnapshot": "The operation is not supported on a share snapshot.",
    "ShareSnapshotNotFound": "The specified share snapshot does not exist.",
    "ShareHasSnapshots": "The share has snapshots and the operation requires no snapshots.",
    "InvalidResourceName": "The specifed resource name contains invalid characters.",
    "ServerBusy": "Ingress is over the account limit.",
    "InternalError": "The server encountered an internal error. Please retry the request.",
}


@dataclass
class Principal:
    kind: str                   # "key", "sas", "oauth"
    perms: str = "rcwdl"
    role: str = ""
    share_scope: str | None = None      # service SAS: the one share it covers
    file_scope: str | None = None       # service SAS sr=f: the one file it covers
    account_sas: bool = False
    resource_types: str = "sco"


class AzureFilesServer:
    """Run with start(); .account_url is the service URL; .ca_path the CA to trust."""

    def __init__(self, workdir: Path, account: str = "sealfsacct", domain: str = DOMAIN) -> None:
        self.workdir = workdir
        self.tmp_dir = workdir / "azfiles-tmp"      # files being made, moved in when whole
        self.tmp_dir.mkdir(exist_ok=True)
        self.account = account
        self.domain = domain
        self.key = secrets.token_bytes(64)
        self.shares: dict[str, Share] = {}            # share name -> live share
        self.snapshots: dict[tuple[str, str], Share] = {}
        self.calls: Counter[str] = Counter()
        self.faults: dict[str, list[Fault]] = {}
        self.holds: dict[str, list[threading.Event]] = {}
        self.token_role = CONTRIBUTOR
        self.delay = 0.0
        # Share soft delete as the account's File service properties answer it: (enabled,
        # days), or None for an answer without the element.
        self.share_soft_delete: tuple[bool, int] | None = (True, 7)
        self.identity_header = secrets.token_hex(16)
        self._token_key = secrets.token_bytes(32)
        self._next_id = 1000
        self._lock = threading.RLock()
        self._conns: set[Any] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._idp: ThreadingHTTPServer | None = None
        self.port = 0
        self.host = f"{account}.{domain}"
        self.ca_path, self._cert, self._key = make_test_pki(workdir, [self.host, f"*.{domain}"])

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def account_key(self) -> str:
        return _b64(self.key)

    @property
    def account_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def share_url(self, share: str, path: str = "") -> str:
        return f"{self.account_url}/{share}" + (f"/{path}" if path else "")

    @property
    def identity_endpoint(self) -> str:
        assert self._idp is not None
        return f"http://127.0.0.1:{self._idp.server_address[1]}/msi/token"

    def start(self) -> AzureFilesServer:
        import ssl
        ensure_hosts([self.host])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._cert, self._key)
        server = self

        class Files(_FilesHandler):
            srv = server

        class Idp(_IdpHandler):
            srv = server

        self.port = self.port or free_port()    # and the same port again after go_down()
        self._httpd = _TlsServer(("127.0.0.1", self.port), Files, ctx, self)  # type: ignore[arg-type]
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        if self._idp is None:
            self._idp = ThreadingHTTPServer(("127.0.0.1", 0), Idp)
            self._idp.daemon_threads = True
            threading.Thread(target=self._idp.serve_forever, daemon=True).start()
        return self

    def go_down(self) -> None:
        """Stop listening and drop every connection: the service becomes unreachable."""
        import socket
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._conns.clear()

    def stop(self) -> None:
        self.go_down()
        if self._idp is not None:
            self._idp.shutdown()
            self._idp.server_close()
            self._idp = None

    # -- test controls ------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            for events in self.holds.values():
                for event in events:
                    event.set()
            self.holds.clear()
            self.calls.clear()
            self.token_role = CONTRIBUTOR
            self.delay = 0.0
            self.share_soft_delete = (True, 7)

    def create_share(self, name: str) -> Share:
        with self._lock:
            share = self.shares.get(name.lower())
            if share is None:
                root = self.workdir / "shares" / name.lower()
                root.mkdir(parents=True)
                share = self.shares[name.lower()] = Share(name, root)
                share.new_node(root)
            return share

    def share_root(self, name: str) -> Path:
        """The directory that holds the share's files (the live share, not a snapshot)."""
        return self.shares[name.lower()].root

    def make_dir(self, share: str, path: str) -> None:
        """A directory at path (its parent must exist), as Create Directory makes it."""
        with self._lock:
            s = self.shares[share.lower()]
            parent = s.get(path.rpartition("/")[0])
            assert parent is not None and parent.is_dir, path
            s.mkdir(parent, path.rpartition("/")[2])

    def fail_next(self, operation: str, status: int, count: int = 1, *, retry_after: int | None = None,
                  code: str | None = None) -> None:
        """Answer the next count calls of operation ("*" for any) with status."""
        with self._lock:
            self.faults.setdefault(operation, []).append(Fault(status, count, retry_after, code))

    def hold_next(self, operation: str) -> threading.Event:
        """The next call of operation runs at once, but its answer leaves only when the
        returned event is set: an answer that reaches the client after later requests'."""
        event = threading.Event()
        with self._lock:
            self.holds.setdefault(operation, []).append(event)
        return event

    def stored_bytes(self) -> list[bytes]:
        """Every file's content in every share and snapshot."""
        with self._lock:
            shares = list(self.shares.values()) + list(self.snapshots.values())
            return [data for s in shares for data in s.file_bytes()]

    def file_bytes(self, share: str, path: str) -> bytes:
        with self._lock:
            node = self.shares[share.lower()].get(path)
            assert node is not None and not node.is_dir, path
            return node.read(0, node.size - 1) if node.size else b""

    def account_sas(self, permission: str = "rcwdl", *, services: str = "f", resource_types: str = "sco",
                    expiry: float | None = None, start: float | None = None, protocol: str = "https",
                    version: str = "2024-08-04") -> str:
        """An account SAS signed with the account key (as generate_account_sas makes it)."""
        q = {"sv": version, "ss": services, "srt": resource_types, "sp": permission,
             "se": _sas_fmt(expiry if expiry is not None else time.time() + 3600)}
        if start is not None:
            q["st"] = _sas_fmt(start)
        if protocol:
            q["spr"] = protocol
        sts = "\n".join([self.account, permission, services, resource_types, q.get("st", ""), q["se"], "",
                         q.get("spr", ""), version, "", ""])
        q["sig"] = _sign(self.key, sts)
        return "&".join(f"{k}={quote(v, safe='')}" for k, v in q.items())

    def share_sas(self, share: str, permission: str = "rcwdl", *, expiry: float | None = None,
                  start: float | None = None, protocol: str = "https", version: str = "2024-08-04") -> str:
        """A service SAS for one share (sr=s), as generate_share_sas makes it."""
        q = {"sv": version, "sr": "s", "sp": permission,
             "se": _sas_fmt(expiry if expiry is not None else time.time() + 3600)}
        if start is not None:
            q["st"] = _sas_fmt(start)
        if protocol:
            q["spr"] = protocol
        sts = "\n".join([permission, q.get("st", ""), q["se"], f"/file/{self.account}/{share}", "", "",
                         q.get("spr", ""), version, "", "", "", "", ""])
        q["sig"] = _sign(self.key, sts)
        return "&".join(f"{k}={quote(v, safe='')}" for k, v in q.items())

    # -- tokens -------------------------------------------------------------------------
    def issue_token(self, resource: str) -> dict[str, Any]:
        expires = int(time.time()) + 3600
        claims = {"aud": resource.rstrip("/"), "exp": expires, "tid": TENANT,
                  "oid": str(uuid.uuid4()), "roles": [self.token_role]}
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
        sig = hmac.new(self._token_key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        token = f"{head}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
        with self._lock:
            self.calls["token"] += 1
        return {"access_token": token, "expires_on": str(expires), "resource": resource,
                "token_type": "Bearer", "client_id": "00000000-0000-0000-0000-0000000c1d00"}

    def token_claims(self, token: str) -> dict[str, Any] | None:
        try:
            head, body, sig = token.split(".")
            want = hmac.new(self._token_key, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), want):
                return None
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError):
            return None
        if claims.get("exp", 0) < time.time() or claims.get("aud") not in (STORAGE_RESOURCE,
                                                                             f"https://{self.host}"):
            return None
        return claims

    # -- internals ----------------------------------------------------------------------


def _sas_fmt(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _IdpHandler(BaseHTTPRequestHandler):
    """App Service managed identity endpoint (api-version 2019-08-01)."""

    srv: AzureFilesServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        query = dict(parse_qsl(urlparse(self.path).query))
        if self.headers.get("X-IDENTITY-HEADER") != self.srv.identity_header:
            return self._json(401, {"error": "invalid_request", "error_description": "bad identity header"})
        resource = query.get("resource", "")
        if not resource:
            return self._json(400, {"error": "invalid_request", "error_description": "resource missing"})
        self._json(200, self.srv.issue_token(resource))

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _FilesHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: with Nagle on, the body would wait for the
    # client's delayed ACK of the headers (40 ms per answer that has a body), which no real
    # service does.
    disable_nagle_algorithm = True
    srv: AzureFilesServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing ------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        if self._held is not None:      # the operation ran; its answer leaves when released
            self._held.append((status, body, headers))
            return
        self.send_response(status)
        hdrs = {"x-ms-request-id": str(uuid.uuid4()), "x-ms-version": self.headers.get("x-ms-version", ""),
                "Date": email.utils.formatdate(usegmt=True)}
        rid = self.headers.get("x-ms-client-request-id")
        if rid:
            hdrs["x-ms-client-request-id"] = rid
        hdrs.update(headers or {})
        if "Content-Length" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, e: StorageError) -> None:
        body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{e.code}</Code><Message>'
                f'{escape(e.message)}\nRequestId:{uuid.uuid4()}\nTime:{_iso(now_ns())}</Message>'
                f'</Error>').encode()
        headers = {"x-ms-error-code": e.code, "Content-Type": "application/xml"}
        headers.update(e.headers)
        self._send(e.status, body, headers)

    def _dispatch(self, method: str) -> None:
        srv = self.srv
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlparse(self.path)
        self.raw_path = url.path
        self.query = dict(parse_qsl(url.query, keep_blank_values=True))
        parts = [unquote(p) for p in url.path.split("/") if p]
        self.share_name = parts[0] if parts else ""
        self.rel = "/".join(parts[1:])
        self.body = body
        self._held: list[tuple[int, bytes, dict[str, str] | None]] | None = None
        if srv.delay:
            time.sleep(srv.delay)
        release = None
        try:
            op = self._operation(method)
            with srv._lock:
                fault = self._take_fault(op)
            if fault is not None:
                code = fault.code or {429: "ServerBusy", 503: "ServerBusy", 500: "InternalError"}.get(
                    fault.status, "InternalError")
                hdr = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                raise StorageError(fault.status, code, _MESSAGES.get(code, code), hdr)
            principal = self._authenticate()
            self._authorize(principal, op)
            with srv._lock:
                srv.calls[op] += 1
                release = srv.holds[op].pop(0) if srv.holds.get(op) else None
                self._held = [] if release is not None else None
                getattr(self, f"_op_{op}")()
        except StorageError as e:
            self._error(e)
        if release is not None:
            release.wait(30)
            held, self._held = self._held or [], None
            for answer in held:
                self._send(*answer)

    def _take_fault(self, op: str) -> Fault | None:
        for key in (op, "*"):
            queue = self.srv.faults.get(key)
            if queue:
                fault = queue[0]
                fault.count -= 1
                if fault.count <= 0:
                    queue.pop(0)
                self.srv.calls[f"fault:{op}"] += 1
                return fault
        return None

    def _operation(self, method: str) -> str:
        q = self.query
        restype, comp = q.get("restype"), q.get("comp")
        if not self.share_name:
            if method == "GET" and comp == "list":
                return "list_shares"
            if comp == "properties":
                return "service_props_" + method.lower()
            raise _err(400, "InvalidQueryParameterValue")
        if restype == "share" and not self.rel:
            if comp == "snapshot" and method == "PUT":
                return "snapshot_share"
            if comp is None:
                return {"PUT": "create_share", "DELETE": "delete_share", "GET": "get_share",
                        "HEAD": "get_share"}.get(method, "bad_verb")
            if comp == "metadata" and method in ("GET", "HEAD"):
                return "get_share"
            if comp == "stats" and method == "GET":
                return "share_stats"
            return "bad_verb"
        if restype == "directory":
            if comp == "list" and method == "GET":
                return "list_dir"
            if comp == "rename" and method == "PUT":
                return "rename_dir"
            if comp in ("properties", "metadata") and method == "PUT":
                return "set_dir"
            if comp is None:
                return {"PUT": "create_dir", "DELETE": "delete_dir", "GET": "get_dir",
                        "HEAD": "get_dir"}.get(method, "bad_verb")
            return "bad_verb"
        if restype is None and self.rel:
            if comp == "range" and method == "PUT":
                return "put_range"
            if comp == "rangelist" and method == "GET":
                return "list_ranges"
            if comp == "rename" and method == "PUT":
                return "rename_file"
            if comp in ("properties", "metadata") and method == "PUT":
                return "set_file"
            if comp is None:
                return {"PUT": "create_file", "DELETE": "delete_file", "GET": "get_file",
                        "HEAD": "head_file"}.get(method, "bad_verb")
        return "bad_verb"

    def _op_bad_verb(self) -> None:
        raise _err(400, "UnsupportedHttpVerb")

    # -- authentication ------------------------------------------------------------------
    def _authenticate(self) -> Principal:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("SharedKey "):
            return self._shared_key(auth[len("SharedKey "):])
        if auth.startswith("Bearer "):
            return self._bearer(auth[len("Bearer "):])
        if "sig" in self.query:
            return self._sas()
        raise StorageError(401, "NoAuthenticationInformation", _MESSAGES["NoAuthenticationInformation"],
                           {"WWW-Authenticate": f"Bearer authorization_uri=https://login.microsoftonline.com/"
                                                f"{TENANT}/oauth2/authorize resource_id={STORAGE_RESOURCE}"})

    def _check_version(self) -> None:
        if not self.headers.get("x-ms-version"):
            raise _err(400, "MissingRequiredHeader", "x-ms-version is required.")

    def _shared_key(self, cred: str) -> Principal:
        srv = self.srv
        self._check_version()
        account, _, sig = cred.partition(":")
        if account != srv.account:
            raise _err(403, "AuthenticationFailed")
        date = self.headers.get("x-ms-date") or self.headers.get("Date")
        if not date:
            raise _err(403, "AuthenticationFailed", "Request date header not specified.")
        try:
            when = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise _err(403, "AuthenticationFailed", "The Date header in the request is incorrect.") from None
        if abs(when - time.time()) > 15 * 60:
            raise _err(403, "AuthenticationFailed", "Request date header too old.")
        h = self.headers
        length = h.get("Content-Length", "")
        std = [h.get("Content-Encoding", ""), h.get("Content-Language", ""), "" if length == "0" else length,
               h.get("Content-MD5", ""), h.get("Content-Type", ""), h.get("Date", ""),
               h.get("If-Modified-Since", ""), h.get("If-Match", ""), h.get("If-None-Match", ""),
               h.get("If-Unmodified-Since", ""), h.get("Range", "")]
        xms = {k.lower(): v.strip() for k, v in h.items() if k.lower().startswith("x-ms-")}
        canon_headers = "".join(f"{k}:{xms[k]}\n" for k in _header_sort(list(xms)))
        resource = f"/{srv.account}{self.raw_path}"
        params: dict[str, list[str]] = {}
        for k, v in parse_qsl(urlparse(self.path).query, keep_blank_values=True):
            params.setdefault(k.lower(), []).append(v)
        for k in sorted(params):
            resource += f"\n{k}:{','.join(sorted(params[k]))}"
        sts = f"{self.command}\n" + "\n".join(std) + "\n" + canon_headers + resource
        if not hmac.compare_digest(_sign(srv.key, sts), sig):
            raise _err(403, "AuthenticationFailed",
                       f"The MAC signature found in the HTTP request '{sig}' is not the same as any "
                       f"computed signature.")
        return Principal("key")

    def _bearer(self, token: str) -> Principal:
        self._check_version()
        claims = self.srv.token_claims(token)
        if claims is None:
            raise StorageError(401, "InvalidAuthenticationInfo", "Server failed to authenticate the request.",
                               {"WWW-Authenticate": f"Bearer authorization_uri=https://login.microsoftonline"
                                                    f".com/{TENANT}/oauth2/authorize "
                                                    f"resource_id={STORAGE_RESOURCE}"})
        if self.headers.get("x-ms-file-request-intent", "").lower() != "backup":
            raise _err(400, "MissingRequiredHeader",
                       "x-ms-file-request-intent: backup is required with OAuth on file data.")
        roles = claims.get("roles") or []
        perms = "rcwdl" if CONTRIBUTOR in roles else "rl" if READER in roles else ""
        return Principal("oauth", perms=perms, role=",".join(roles))

    def _sas(self) -> Principal:
        srv, q = self.srv, self.query
        sv, sp, se, st, spr = (q.get(k, "") for k in ("sv", "sp", "se", "st", "spr"))
        if not sv or not sp or not se:
            raise _err(403, "AuthenticationFailed", "Signature fields not well formed.")
        if spr not in ("", "https", "https,http"):      # absent means https,http
            raise _err(403, "AuthenticationFailed", "Signed protocol must be https or https,http.")
        try:
            expiry, start = _sas_time(se), _sas_time(st) if st else None
        except ValueError:
            raise _err(403, "AuthenticationFailed", "Signed expiry time is not well formed.") from None
        now = time.time()
        if expiry < now:
            raise _err(403, "AuthenticationFailed", f"Signed expiry time [{se}] must be after signed "
                                                    "start time and current time.")
        if start is not None and start > now + 300:
            raise _err(403, "AuthenticationFailed", "Signed start time is in the future.")
        if "ss" in q:        # account SAS
            sts = "\n".join([srv.account, sp, q.get("ss", ""), q.get("srt", ""), st, se, q.get("sip", ""), spr,
                             sv, q.get("ses", ""), ""])
            principal = Principal("sas", perms=sp, account_sas=True, resource_types=q.get("srt", ""))
            if "f" not in q.get("ss", ""):
                self._verify_sig(sts)
                raise _err(403, "AuthorizationServiceMismatch")
        else:
            sr = q.get("sr", "")
            if sr == "s":
                resource = f"/file/{srv.account}/{self.share_name}"
                principal = Principal("sas", perms=sp, share_scope=self.share_name.lower())
            elif sr == "f":
                resource = f"/file/{srv.account}/{self.share_name}/{self.rel}"
                principal = Principal("sas", perms=sp, share_scope=self.share_name.lower(),
                                      file_scope=self.rel.lower())
            else:
                raise _err(403, "AuthenticationFailed", "Signed resource is not well formed.")
            sts = "\n".join([sp, st, se, resource, q.get("si", ""), q.get("sip", ""), spr, sv,
                             q.get("rscc", ""), q.get("rscd", ""), q.get("rsce", ""), q.get("rscl", ""),
                             q.get("rsct", "")])
        self._verify_sig(sts)
        return principal

    def _verify_sig(self, sts: str) -> None:
        if not hmac.compare_digest(_sign(self.srv.key, sts), self.query.get("sig", "")):
            raise _err(403, "AuthenticationFailed", "Signature did not match. String to sign used was "
                                                    + sts.replace("\n", "\\n"))

    def _authorize(self, p: Principal, op: str) -> None:
        if p.kind == "key":
            return
        if op.startswith("service_props"):
            if p.kind == "sas" and p.account_sas and "s" in p.resource_types and "r" in p.perms:
                return
            raise _err(403, "AuthorizationPermissionMismatch" if p.kind == "oauth" else "AuthorizationFailure")
        need = _SAS_PERM.get(op, "w")
        if p.kind == "oauth":
            if op in _SHARE_LEVEL:
                # Data roles reach file data only; shares and snapshots are management operations.
                raise _err(403, "AuthorizationPermissionMismatch")
            if op not in _READ_OPS and "w" not in p.perms or not any(c in p.perms for c in need):
                raise _err(403, "AuthorizationPermissionMismatch")
            return
        if p.account_sas:
            level = "s" if op == "list_shares" else "c" if op in _SHARE_LEVEL or op in ("get_share", "share_stats") else "o"
            if level not in p.resource_types:
                raise _err(403, "AuthorizationResourceTypeMismatch")
        else:
            if op in _SHARE_LEVEL:
                raise _err(403, "AuthorizationFailure")
            if p.share_scope != self.share_name.lower():
                raise _err(403, "AuthenticationFailed", "Signature did not match the resource.")
            if p.file_scope is not None and p.file_scope != self.rel.lower():
                raise _err(403, "AuthorizationFailure")
        if not any(c in p.perms for c in need):
            raise _err(403, "AuthorizationPermissionMismatch")

    # -- lookups -------------------------------------------------------------------------
    def _share(self, writable: bool = False) -> Share:
        srv = self.srv
        share = srv.shares.get(self.share_name.lower())
        if share is None:
            raise _err(404, "ShareNotFound")
        snap = self.query.get("sharesnapshot")
        if snap:
            if writable:
                raise _err(400, "OperationNotSupportedOnShareSnapshot")
            snapped = srv.snapshots.get((share.name.lower(), snap))
            if snapped is None:
                raise _err(404, "ShareSnapshotNotFound")
            return snapped
        return share

    def _lookup(self, share: Share, path: str, *, want_dir: bool | None = None) -> Node:
        node = share.get(path)
        if node is None:
            self._check_parent(share, path)
            raise _err(404, "ResourceNotFound")
        if want_dir is not None and node.is_dir != want_dir:
            raise _err(404, "ResourceNotFound")     # a file URL naming a directory, or back
        return node

    def _check_parent(self, share: Share, path: str) -> Node:
        node = share.get(path.rpartition("/")[0])
        if node is None or not node.is_dir:
            raise _err(404, "ParentNotFound")
        return node

    def _check_name(self, path: str) -> None:
        name = path.rpartition("/")[2]
        if not name or len(name) > 255 or len(path) > 2048 or any(c in name for c in '"\\:|<>*?') \
                or any(ord(c) < 0x20 for c in name):
            raise _err(400, "InvalidResourceName")

    def _smb_headers(self, node: Node) -> dict[str, str]:
        return {"x-ms-file-creation-time": _iso(node.created), "x-ms-file-last-write-time": _iso(node.written),
                "x-ms-file-change-time": _iso(node.changed), "x-ms-file-attributes": node.attributes,
                "x-ms-file-permission-key": "4066528134148476695*1", "x-ms-file-id": str(node.file_id),
                "x-ms-file-parent-id": "0", "ETag": node.etag, "Last-Modified": _rfc1123(node.modified)}

    def _apply_smb(self, node: Node, *, default_write: str = "preserve") -> None:
        """x-ms-file-*-time headers: a time, "now" or "preserve" (also the default)."""
        now = now_ns()
        for header, attr, default in (("x-ms-file-creation-time", "created", "preserve"),
                                      ("x-ms-file-last-write-time", "written", default_write),
                                      ("x-ms-file-change-time", "changed", "now")):
            value = self.headers.get(header, default)
            if value == "preserve":
                continue
            if value == "now":
                setattr(node, attr, now)
                continue
            try:
                setattr(node, attr, _parse_iso(value))
            except ValueError:
                raise _err(400, "InvalidHeaderValue", f"The value for {header} is not valid.") from None
        attrs = self.headers.get("x-ms-file-attributes")
        if attrs and attrs.lower() not in ("preserve", "none"):
            node.attributes = attrs
        node.save()

    # -- shares --------------------------------------------------------------------------
    def _op_create_share(self) -> None:
        srv = self.srv
        if self.share_name.lower() in srv.shares:
            raise _err(409, "ShareAlreadyExists")
        share = srv.create_share(self.share_name)
        share.metadata = self._metadata()
        if self.headers.get("x-ms-share-quota"):
            share.quota = int(self.headers["x-ms-share-quota"])
        self._send(201, headers={"ETag": share.etag, "Last-Modified": _rfc1123(share.created)})

    def _op_delete_share(self) -> None:
        srv = self.srv
        share = srv.shares.get(self.share_name.lower())
        if share is None:
            raise _err(404, "ShareNotFound")
        snap = self.query.get("sharesnapshot")
        key = share.name.lower()
        if snap:
            gone = srv.snapshots.pop((key, snap), None)
            if gone is None:
                raise _err(404, "ShareSnapshotNotFound")
            shutil.rmtree(gone.root)
            return self._send(202)
        mine = [k for k in srv.snapshots if k[0] == key]
        if mine and self.headers.get("x-ms-delete-snapshots", "") not in ("include", "include-leased"):
            raise _err(409, "ShareHasSnapshots")
        for k in mine:
            shutil.rmtree(srv.snapshots.pop(k).root)
        shutil.rmtree(srv.shares.pop(key).root)
        self._send(202)

    def _op_get_share(self) -> None:
        share = self._share()
        headers = {"ETag": share.etag, "Last-Modified": _rfc1123(share.created),
                   "x-ms-share-quota": str(share.quota), "x-ms-access-tier": "TransactionOptimized"}
        headers.update({f"x-ms-meta-{k}": v for k, v in share.metadata.items()})
        self._send(200, headers=headers)

    def _op_share_stats(self) -> None:
        share = self._share()
        used = share.used_bytes()
        body = (f'<?xml version="1.0" encoding="utf-8"?><ShareStats><ShareUsageBytes>{used}'
                f'</ShareUsageBytes></ShareStats>')
        self._send(200, body.encode(), {"Content-Type": "application/xml", "ETag": share.etag,
                                        "Last-Modified": _rfc1123(share.created)})

    def _op_snapshot_share(self) -> None:
        srv = self.srv
        share = self._share(writable=True)
        stamp = _iso(now_ns())
        while (share.name.lower(), stamp) in srv.snapshots:
            time.sleep(0.0001)
            stamp = _iso(now_ns())
        root = srv.workdir / "snapshots" / f"{share.name.lower()}@{stamp.replace(':', '')}"
        root.parent.mkdir(exist_ok=True)
        share.copy_to(root)
        snap = Share(share.name, root, share.quota, self._metadata() or dict(share.metadata), stamp,
                     share.created, share.etag)
        srv.snapshots[(share.name.lower(), stamp)] = snap
        self._send(201, headers={"x-ms-snapshot": stamp, "ETag": share.etag,
                                 "Last-Modified": _rfc1123(now_ns())})

    def _op_list_shares(self) -> None:
        srv = self.srv
        include = self.query.get("include", "").lower().split(",")
        prefix = self.query.get("prefix", "").lower()
        items: list[Share] = []
        for share in sorted(srv.shares.values(), key=lambda s: s.name.lower()):
            if not share.name.lower().startswith(prefix):
                continue
            if "snapshots" in include:
                items += sorted((s for k, s in srv.snapshots.items() if k[0] == share.name.lower()),
                                key=lambda s: s.snapshot)
            items.append(share)
        page, next_marker = self._page(items, lambda s: f"{s.name.lower()}|{s.snapshot}")
        out = [f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint='
               f'"{srv.account_url}/">']
        if prefix:
            out.append(f"<Prefix>{escape(prefix)}</Prefix>")
        out.append("<Shares>")
        for s in page:
            out.append(f"<Share><Name>{escape(s.name)}</Name>")
            if s.snapshot:
                out.append(f"<Snapshot>{s.snapshot}</Snapshot>")
            out.append(f"<Properties><Last-Modified>{_rfc1123(s.created)}</Last-Modified><Etag>{s.etag}"
                       f"</Etag><Quota>{s.quota}</Quota></Properties>")
            if "metadata" in include:
                out.append("<Metadata>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in s.metadata.items())
                           + "</Metadata>")
            out.append("</Share>")
        out.append(f"</Shares><NextMarker>{escape(next_marker)}</NextMarker></EnumerationResults>")
        self._send(200, "".join(out).encode(), {"Content-Type": "application/xml"})

    def _op_service_props_get(self) -> None:
        policy = ""
        if self.srv.share_soft_delete is not None:
            enabled, days = self.srv.share_soft_delete
            policy = (f"<ShareDeleteRetentionPolicy><Enabled>{str(enabled).lower()}</Enabled>"
                      + (f"<Days>{days}</Days>" if enabled else "") + "</ShareDeleteRetentionPolicy>")
        body = ('<?xml version="1.0" encoding="utf-8"?><StorageServiceProperties><HourMetrics><Version>1.0'
                '</Version><Enabled>false</Enabled><RetentionPolicy><Enabled>false</Enabled></RetentionPolicy>'
                '</HourMetrics><MinuteMetrics><Version>1.0</Version><Enabled>false</Enabled><RetentionPolicy>'
                '<Enabled>false</Enabled></RetentionPolicy></MinuteMetrics><Cors />' + policy
                + '</StorageServiceProperties>')
        self._send(200, body.encode(), {"Content-Type": "application/xml"})

    def _metadata(self) -> dict[str, str]:
        return {k[len("x-ms-meta-"):].lower(): v for k, v in self.headers.items()
                if k.lower().startswith("x-ms-meta-")}

    def _page(self, items: list[Any], key: Any) -> tuple[list[Any], str]:
        marker = self.query.get("marker", "")
        try:
            maxresults = int(self.query.get("maxresults", "5000"))
        except ValueError:
            raise _err(400, "InvalidQueryParameterValue") from None
        if maxresults <= 0:
            raise _err(400, "InvalidQueryParameterValue")
        if marker:
            items = [i for i in items if key(i) >= marker]
        page = items[:maxresults]
        next_marker = key(items[maxresults]) if len(items) > maxresults else ""
        return page, next_marker

    # -- directories ---------------------------------------------------------------------
    def _op_create_dir(self) -> None:
        share = self._share(writable=True)
        self._check_name(self.rel)
        parent = self._check_parent(share, self.rel)
        if share.find(self.rel) is not None:
            raise _err(409, "ResourceAlreadyExists")
        try:
            node = share.mkdir(parent, self.rel.rpartition("/")[2])
        except FileExistsError:
            raise _err(409, "ResourceAlreadyExists") from None
        self._apply_smb(node, default_write="now")
        self._send(201, headers=self._smb_headers(node))

    def _op_delete_dir(self) -> None:
        share = self._share(writable=True)
        if not self.rel:
            raise _err(400, "InvalidResourceName")
        node = self._lookup(share, self.rel, want_dir=True)
        if share.has_entries(node):
            raise _err(409, "DirectoryNotEmpty")
        node.path.rmdir()
        self._send(202)

    def _op_get_dir(self) -> None:
        share = self._share()
        node = self._lookup(share, self.rel, want_dir=True)
        self._send(200, headers=self._smb_headers(node))

    def _op_set_dir(self) -> None:
        share = self._share(writable=True)
        node = self._lookup(share, self.rel, want_dir=True)
        if self.query.get("comp") == "properties":
            self._apply_smb(node)
        self._send(200, headers=self._smb_headers(node))

    def _op_list_dir(self) -> None:
        share = self._share()
        where = self._lookup(share, self.rel, want_dir=True)
        prefix = self.query.get("prefix", "").lower()
        children = sorted((n for n in share.children(where) if n.name.lower().startswith(prefix)),
                          key=lambda n: n.name.lower())
        page, next_marker = self._page(children, lambda n: n.name.lower())
        include = [i.strip().lower() for i in self.query.get("include", "").split(",") if i.strip()]
        extended = self.headers.get("x-ms-file-extended-info", "").lower() == "true"
        out = [f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint='
               f'"{self.srv.account_url}/" ShareName="{escape(share.name)}" DirectoryPath="{escape(self.rel)}"']
        if share.snapshot:
            out[0] += f' ShareSnapshot="{share.snapshot}"'
        out.append(">")
        if prefix:
            out.append(f"<Prefix>{escape(prefix)}</Prefix>")
        if self.query.get("marker"):
            out.append(f"<Marker>{escape(self.query['marker'])}</Marker>")
        if self.query.get("maxresults"):
            out.append(f"<MaxResults>{self.query['maxresults']}</MaxResults>")
        out.append("<Entries>")
        for n in page:
            tag = "Directory" if n.is_dir else "File"
            out.append(f"<{tag}>")
            if extended or include:
                out.append(f"<FileId>{n.file_id}</FileId>")
            out.append(f"<Name>{escape(n.name)}</Name><Properties>")
            if not n.is_dir:
                out.append(f"<Content-Length>{n.size}</Content-Length>")
            if "timestamps" in include:
                out.append(f"<CreationTime>{_iso(n.created)}</CreationTime><LastAccessTime>{_iso(n.written)}"
                           f"</LastAccessTime><LastWriteTime>{_iso(n.written)}</LastWriteTime><ChangeTime>"
                           f"{_iso(n.changed)}</ChangeTime><Last-Modified>{_rfc1123(n.modified)}"
                           f"</Last-Modified>")
            if "etag" in include:
                out.append(f"<Etag>{n.etag}</Etag>")
            out.append("</Properties>")
            if "attributes" in include:
                out.append(f"<Attributes>{n.attributes}</Attributes>")
            if "permissionkey" in include:
                out.append("<PermissionKey>4066528134148476695*1</PermissionKey>")
            out.append(f"</{tag}>")
        out.append(f"</Entries><NextMarker>{escape(next_marker)}</NextMarker></EnumerationResults>")
        self._send(200, "".join(out).encode(), {"Content-Type": "application/xml"})

    # -- files ---------------------------------------------------------------------------
    def _op_create_file(self) -> None:
        share = self._share(writable=True)
        if self.headers.get("x-ms-type", "").lower() != "file":
            raise _err(400, "MissingRequiredHeader", "x-ms-type: file is required.")
        try:
            size = int(self.headers["x-ms-content-length"])
        except (KeyError, ValueError):
            raise _err(400, "MissingRequiredHeader", "x-ms-content-length is required.") from None
        if not 0 <= size <= MAX_FILE:
            raise _err(400, "InvalidHeaderValue")
        self._check_name(self.rel)
        parent = self._check_parent(share, self.rel)
        existing = share.get(self.rel)
        if existing is not None and existing.is_dir:
            raise _err(409, "ResourceAlreadyExists")
        # Azure Files' Create File overwrites an existing file (there is no create-new).
        try:
            node = share.create_file(parent, self.rel.rpartition("/")[2], existing, size, self.srv.tmp_dir)
        except IsADirectoryError:       # a name the service does not show (a planted entry)
            raise _err(409, "ResourceAlreadyExists") from None
        self._apply_smb(node, default_write="now")
        self._send(201, headers=self._smb_headers(node))

    def _op_put_range(self) -> None:
        share = self._share(writable=True)
        node = self._lookup(share, self.rel, want_dir=False)
        rng = self.headers.get("x-ms-range") or self.headers.get("Range")
        start, end = self._parse_range(rng, node.size, required=True)
        mode = self.headers.get("x-ms-write", "").lower()
        if mode == "update":
            if end - start + 1 > MAX_RANGE:
                raise _err(413, "RequestBodyTooLarge")
            if len(self.body) != end - start + 1:
                raise _err(400, "InvalidHeaderValue", "Content-Length does not match the range.")
            md5 = self.headers.get("Content-MD5")
            if md5 and base64.b64decode(md5) != hashlib.md5(self.body).digest():
                raise _err(400, "Md5Mismatch")
            node.write(start, self.body)
        elif mode == "clear":
            if self.body:
                raise _err(400, "InvalidHeaderValue", "Content-Length must be 0 for clear.")
            node.write(start, bytes(end - start + 1))
        else:
            raise _err(400, "InvalidHeaderValue", "x-ms-write must be update or clear.")
        node.changed = now_ns()
        if self.headers.get("x-ms-file-last-write-time", "now") != "preserve":
            node.written = node.changed
        node.save()
        hdr = {"ETag": node.etag, "Last-Modified": _rfc1123(node.modified), "x-ms-request-server-encrypted": "true",
               "x-ms-file-last-write-time": _iso(node.written)}
        if mode == "update":
            hdr["Content-MD5"] = _b64(hashlib.md5(self.body).digest())
        self._send(201, headers=hdr)

    def _parse_range(self, rng: str | None, size: int, required: bool = False) -> tuple[int, int]:
        if not rng:
            if required:
                raise _err(400, "MissingRequiredHeader", "x-ms-range is required.")
            return 0, size - 1
        if not rng.startswith("bytes="):
            raise _err(400, "InvalidHeaderValue")
        a, _, b = rng[6:].partition("-")
        try:
            start = int(a)
            end = int(b) if b else size - 1
        except ValueError:
            raise _err(400, "InvalidHeaderValue") from None
        if start < 0 or end < start:
            raise _err(416, "InvalidRange")
        if required and end >= size:
            raise _err(416, "InvalidRange")
        return start, end

    def _op_get_file(self) -> None:
        share = self._share()
        node = self._lookup(share, self.rel, want_dir=False)
        size = node.size
        rng = self.headers.get("x-ms-range") or self.headers.get("Range")
        headers = dict(self._smb_headers(node))
        headers.update({"Content-Type": "application/octet-stream", "x-ms-type": "File",
                        "Accept-Ranges": "bytes", "x-ms-server-encrypted": "true"})
        if not rng:
            headers["Content-Length"] = str(size)
            return self._send(200, node.read(0, size - 1) if size else b"", headers)
        start, end = self._parse_range(rng, size)
        if start >= size:
            raise StorageError(416, "InvalidRange", _MESSAGES["InvalidRange"],
                               {"Content-Range": f"bytes */{size}"})
        end = min(end, size - 1)
        data = node.read(start, end)
        if self.headers.get("x-ms-range-get-content-md5", "").lower() == "true":
            if end - start + 1 > MAX_RANGE:
                raise _err(400, "InvalidHeaderValue")
            headers["Content-MD5"] = _b64(hashlib.md5(data).digest())
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(len(data))
        self._send(206, data, headers)

    def _op_head_file(self) -> None:
        share = self._share()
        node = self._lookup(share, self.rel, want_dir=False)
        headers = dict(self._smb_headers(node))
        headers.update({"Content-Type": "application/octet-stream", "x-ms-type": "File",
                        "Content-Length": str(node.size), "x-ms-server-encrypted": "true"})
        self._send(200, headers=headers)

    def _op_list_ranges(self) -> None:
        share = self._share()
        node = self._lookup(share, self.rel, want_dir=False)
        size = node.size
        body = '<?xml version="1.0" encoding="utf-8"?><Ranges>'
        if size:
            body += f"<Range><Start>0</Start><End>{size - 1}</End></Range>"
        body += "</Ranges>"
        self._send(200, body.encode(), {"Content-Type": "application/xml", "ETag": node.etag,
                                        "Last-Modified": _rfc1123(node.modified),
                                        "x-ms-content-length": str(size)})

    def _op_set_file(self) -> None:
        share = self._share(writable=True)
        node = self._lookup(share, self.rel, want_dir=False)
        if self.query.get("comp") == "properties":
            resize = self.headers.get("x-ms-content-length")
            if resize is not None:
                try:
                    size = int(resize)
                except ValueError:
                    raise _err(400, "InvalidHeaderValue") from None
                if not 0 <= size <= MAX_FILE:
                    raise _err(400, "InvalidHeaderValue")
                node.resize(size)
                node.written = now_ns()
            self._apply_smb(node)
        self._send(200, headers=self._smb_headers(node))

    def _op_delete_file(self) -> None:
        share = self._share(writable=True)
        self._lookup(share, self.rel, want_dir=False).path.unlink()
        self._send(202)

    # -- rename --------------------------------------------------------------------------
    def _op_rename_file(self) -> None:
        self._rename(is_dir=False)

    def _op_rename_dir(self) -> None:
        self._rename(is_dir=True)

    def _rename(self, is_dir: bool) -> None:
        share = self._share(writable=True)
        source = self.headers.get("x-ms-file-rename-source")
        if not source:
            raise _err(400, "MissingRequiredHeader", "x-ms-file-rename-source is required.")
        src_url = urlparse(source)
        parts = [unquote(p) for p in src_url.path.split("/") if p]
        if src_url.netloc and src_url.netloc.split(":")[0].lower() != self.srv.host:
            raise _err(400, "InvalidHeaderValue", "The rename source must be in the same account.")
        if not parts or parts[0].lower() != share.name.lower():
            raise _err(400, "InvalidHeaderValue", "The rename source must be in the same share.")
        src = "/".join(parts[1:])
        dst = self.rel
        if not src or not dst:
            raise _err(400, "InvalidResourceName")
        self._check_name(dst)
        node = share.get(src)
        if node is None or node.is_dir != is_dir:
            raise _err(404, "ResourceNotFound")
        parent = self._check_parent(share, dst)
        if (dst.lower() + "/").startswith(src.lower() + "/") and dst.lower() != src.lower():
            raise _err(400, "InvalidResourceName", "Cannot move a directory into itself.")
        existing = share.get(dst)
        if existing is not None and dst.lower() != src.lower():
            if existing.is_dir or is_dir:
                raise _err(409, "ResourceAlreadyExists")
            if self.headers.get("x-ms-file-rename-replace-if-exists", "false").lower() != "true":
                raise _err(409, "ResourceAlreadyExists")
        target = parent.path / dst.rpartition("/")[2]
        if existing is not None and existing.path not in (target, node.path):
            existing.path.unlink()          # the replaced file, under another case of the name
        elif existing is None and os.path.lexists(target):
            raise _err(409, "ResourceAlreadyExists")        # a name the service does not show
        os.replace(node.path, target)
        node.path = target
        node.changed = now_ns()
        node.save()
        self._send(200, headers=self._smb_headers(node))


def main(argv: list[str]) -> None:
    """``python -m tests.servers.azfiles WORKDIR SHARE``: a server in a process of its own.

    A test process that maps a mounted file and calls mmap.flush() holds the GIL through
    msync, which waits for the mount's writes, which wait for this server: in that process
    the server could never answer. Prints one JSON line (port, account key, CA, the share's directory), then
    serves until its stdin closes."""
    import sys
    server = AzureFilesServer(Path(argv[0])).start()
    server.create_share(argv[1])
    print(json.dumps({"port": server.port, "host": server.host, "account_key": server.account_key,
                      "ca_path": str(server.ca_path), "share_root": str(server.share_root(argv[1]))}),
          flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
