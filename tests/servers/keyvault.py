"""A small, protocol-faithful Azure Key Vault / Managed HSM server for tests.

No emulator for Key Vault exists, so the tests talk to this server with the real
azure-keyvault-keys clients and a real azure-identity credential. It speaks what
those clients speak:

* HTTPS with a certificate from a test CA generated here (clients trust it via
  REQUESTS_CA_BUNDLE), served for a vault host such as ``kv.example.test``;
* the bearer challenge: any request without a valid token gets 401 and
  ``WWW-Authenticate: Bearer authorization=".../TENANT", resource="https://example.test:PORT"``,
  so the SDK's challenge-resource check (vault host must be a subdomain of the
  resource) stays on and passes;
* an App Service managed-identity token endpoint (plain HTTP, IDENTITY_ENDPOINT +
  IDENTITY_HEADER) that issues the tokens the vault accepts;
* GET /keys/NAME[/VERSION], POST /keys/NAME/create, DELETE /keys/NAME,
  POST /keys/NAME/VERSION/wrapkey|unwrapkey with real RSA-OAEP(-256) and A256KW.

Test controls: per-key recovery level, enabled, exp/nbf, key_ops; forced status
answers (403/404/429 with Retry-After/500) for the next N calls of an operation;
call counters; the client request ids seen; go_down() to drop every connection.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.servers.ports import free_port

TENANT = "72f988bf-0000-4000-8000-00000000test"
HOSTS_MARK = "# sealfs-tests"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ensure_hosts(names: list[str], hosts_file: Path = Path("/etc/hosts")) -> None:
    """Make test host names resolve to 127.0.0.1 (idempotent; tests run as root). Under an
    flock of the file: xdist workers start their servers at the same moment, and each would
    otherwise read the file, find the names missing and append them, once per worker."""
    with hosts_file.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)          # released when the file closes
        fh.seek(0)
        text = fh.read()
        present = set()
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if parts and parts[0] == "127.0.0.1":
                present.update(parts[1:])
        missing = [n for n in names if n not in present]
        if missing:
            fh.write(("" if not text or text.endswith("\n") else "\n")
                     + f"127.0.0.1 {' '.join(missing)} {HOSTS_MARK}\n")


# -- certificates ---------------------------------------------------------------------------

def make_test_pki(directory: Path, dns_names: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for dns_names + 127.0.0.1; returns (ca, cert, key) paths."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealfs test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    san = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


# -- key store ------------------------------------------------------------------------------

@dataclass
class KeyVersion:
    version: str
    kty: str                                   # "RSA", "RSA-HSM", "oct-HSM"
    rsa_key: rsa.RSAPrivateKey | None = None
    secret: bytes | None = None
    key_ops: list[str] = field(default_factory=lambda: ["wrapKey", "unwrapKey", "encrypt", "decrypt"])
    enabled: bool = True
    exp: int | None = None
    nbf: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class StoredKey:
    name: str
    versions: list[KeyVersion] = field(default_factory=list)
    recovery_level: str = "Recoverable"
    recoverable_days: int = 90


@dataclass
class Fault:
    status: int
    count: int
    retry_after: int | None = None
    code: str | None = None
    message: str | None = None


class KeyVaultServer:
    """Run with start(); .url is the vault URL; .ca_path the CA to trust."""

    def __init__(self, workdir: Path, vault_host: str = "kv.example.test",
                 resource_domain: str = "example.test", hsm: bool = False) -> None:
        self.workdir = workdir
        self.vault_host = vault_host
        self.resource_domain = resource_domain
        self.hsm = hsm
        self.keys: dict[str, StoredKey] = {}
        self.calls: Counter[str] = Counter()
        self.request_ids: list[tuple[str, str]] = []
        self.faults: dict[str, list[Fault]] = {}
        self.forbidden: set[str] = set()       # operations answered 403 (missing RBAC permission)
        self.delay: float = 0.0                # seconds added before every vault answer
        self.identity_header = secrets.token_hex(16)
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.RLock()
        self._conns: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._idp: ThreadingHTTPServer | None = None
        self.port = 0
        self.ca_path, self._cert, self._key = make_test_pki(workdir, [vault_host, f"*.{resource_domain}",
                                                                     resource_domain])

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://{self.vault_host}:{self.port}"

    @property
    def resource(self) -> str:
        return f"https://{self.resource_domain}:{self.port}"

    @property
    def identity_endpoint(self) -> str:
        assert self._idp is not None
        return f"http://127.0.0.1:{self._idp.server_address[1]}/msi/token"

    def start(self) -> KeyVaultServer:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._cert, self._key)
        server = self

        class Vault(_VaultHandler):
            srv = server

        class Idp(_IdpHandler):
            srv = server

        self.port = self.port or free_port()    # and the same port again after go_down()
        self._httpd = _TlsServer(("127.0.0.1", self.port), Vault, ctx, self)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        if self._idp is None:
            self._idp = ThreadingHTTPServer(("127.0.0.1", 0), Idp)
            self._idp.daemon_threads = True
            threading.Thread(target=self._idp.serve_forever, daemon=True).start()
        return self

    def go_down(self) -> None:
        """Stop listening and drop every open connection: the vault becomes unreachable."""
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
    def add_rsa_key(self, name: str, *, recovery_level: str = "Recoverable",
                    key_ops: list[str] | None = None, enabled: bool = True,
                    exp: int | None = None, nbf: int | None = None, size: int = 2048) -> str:
        kv = KeyVersion(uuid.uuid4().hex, "RSA-HSM" if self.hsm else "RSA",
                        rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=size),
                        enabled=enabled, exp=exp, nbf=nbf)
        if key_ops is not None:
            kv.key_ops = list(key_ops)
        return self._add_version(name, kv, recovery_level)

    def add_oct_key(self, name: str, *, recovery_level: str = "Recoverable",
                    key_ops: list[str] | None = None, enabled: bool = True) -> str:
        kv = KeyVersion(uuid.uuid4().hex, "oct-HSM", secret=os.urandom(32), enabled=enabled)
        if key_ops is not None:
            kv.key_ops = list(key_ops)
        return self._add_version(name, kv, recovery_level)

    def _add_version(self, name: str, kv: KeyVersion, recovery_level: str) -> str:
        with self._lock:
            key = self.keys.setdefault(name, StoredKey(name, recovery_level=recovery_level))
            key.recovery_level = recovery_level
            key.versions.append(kv)
        return kv.version

    def set_attributes(self, name: str, version: str | None = None, **attrs: Any) -> None:
        with self._lock:
            kv = self._find(name, version)
            assert kv is not None
            for k, v in attrs.items():
                setattr(kv, k, v)

    def delete_key(self, name: str) -> None:
        with self._lock:
            self.keys.pop(name, None)

    def delete_version(self, name: str, version: str) -> None:
        """Destroy one key version's material (more than Key Vault allows; models a lost version)."""
        with self._lock:
            key = self.keys[name]
            key.versions = [v for v in key.versions if v.version != version]

    def fail_next(self, operation: str, status: int, count: int = 1, *, retry_after: int | None = None,
                  code: str | None = None, message: str | None = None) -> None:
        with self._lock:
            self.faults.setdefault(operation, []).append(Fault(status, count, retry_after, code, message))

    # -- internals ----------------------------------------------------------------------
    def _find(self, name: str, version: str | None) -> KeyVersion | None:
        key = self.keys.get(name)
        if key is None or not key.versions:
            return None
        if not version:
            return key.versions[-1]
        for v in key.versions:
            if v.version == version:
                return v
        return None

    def issue_token(self, resource: str) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        expires = int(time.time()) + 3600
        with self._lock:
            self._tokens[token] = (resource, expires)
            self.calls["token"] += 1
        return {"access_token": token, "expires_on": str(expires), "resource": resource,
                "token_type": "Bearer", "client_id": "00000000-0000-0000-0000-0000000c1d00"}

    def token_valid(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        entry = self._tokens.get(header[7:])
        if entry is None:
            return False
        resource, expires = entry
        return expires > time.time() and resource.rstrip("/") in (self.resource, self.resource + "/.default")

    def key_bundle(self, name: str, kv: KeyVersion) -> dict[str, Any]:
        stored = self.keys[name]
        jwk: dict[str, Any] = {"kid": f"{self.url}/keys/{name}/{kv.version}", "kty": kv.kty,
                               "key_ops": kv.key_ops}
        if kv.rsa_key is not None:
            nums = kv.rsa_key.public_key().public_numbers()
            jwk["n"] = b64url(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big"))
            jwk["e"] = b64url(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"))
        attrs: dict[str, Any] = {"enabled": kv.enabled, "created": kv.created, "updated": kv.created,
                                 "recoveryLevel": stored.recovery_level, "exportable": False}
        if "Recoverable" in stored.recovery_level:
            attrs["recoverableDays"] = stored.recoverable_days
        if kv.exp is not None:
            attrs["exp"] = kv.exp
        if kv.nbf is not None:
            attrs["nbf"] = kv.nbf
        return {"key": jwk, "attributes": attrs, "tags": {}}


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: type, ctx: ssl.SSLContext,
                 owner: KeyVaultServer) -> None:
        self._ctx = ctx
        self._owner = owner
        super().__init__(addr, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        with self._owner._lock:
            self._owner._conns.add(sock)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the worker thread, so one slow client cannot block accept().
        try:
            tls = self._ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self._owner._lock:
            self._owner._conns.add(tls)
        try:
            super().finish_request(tls, client_address)
        finally:
            with self._owner._lock:
                self._owner._conns.discard(tls)
                self._owner._conns.discard(request)


class _IdpHandler(BaseHTTPRequestHandler):
    """App Service managed identity endpoint (api-version 2019-08-01)."""

    srv: KeyVaultServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        if self.headers.get("X-IDENTITY-HEADER") != self.srv.identity_header:
            return self._json(401, {"error": "invalid_request", "error_description": "bad identity header"})
        resource = (query.get("resource") or [""])[0]
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


_KEY_PATH = re.compile(r"^/keys/([A-Za-z0-9-]+)(?:/([A-Za-z0-9]*))?/?$")
_OP_PATH = re.compile(r"^/keys/([A-Za-z0-9-]+)/([A-Za-z0-9]*)/(wrapkey|unwrapkey)$")
_CREATE_PATH = re.compile(r"^/keys/([A-Za-z0-9-]+)/create$")


class _VaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    srv: KeyVaultServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing ------------------------------------------------------------------------
    def _reply(self, status: int, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        rid = self.headers.get("x-ms-client-request-id")
        if rid:
            self.send_header("x-ms-client-request-id", rid)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
               inner: str | None = None) -> None:
        err: dict[str, Any] = {"code": code, "message": message}
        if inner:
            err["innererror"] = {"code": inner}
        self._reply(status, {"error": err}, headers)

    def _dispatch(self, method: str) -> None:
        srv = self.srv
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlparse(self.path).path
        op = self._operation(method, path)
        if srv.delay:
            time.sleep(srv.delay)
        if not srv.token_valid(self.headers.get("Authorization")):
            with srv._lock:
                srv.calls["challenge"] += 1
            return self._error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                               {"WWW-Authenticate": f'Bearer authorization="https://login.microsoftonline.com/'
                                                    f'{TENANT}", resource="{srv.resource}"'})
        with srv._lock:
            srv.calls[op] += 1
            srv.request_ids.append((op, self.headers.get("x-ms-client-request-id", "")))
            queue = srv.faults.get(op)
            fault = None
            if queue:
                fault = queue[0]
                fault.count -= 1
                if fault.count <= 0:
                    queue.pop(0)
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            code = fault.code or {403: "Forbidden", 404: "KeyNotFound", 429: "Throttled"}.get(fault.status,
                                                                                               "InternalError")
            return self._error(fault.status, code, fault.message or f"injected {fault.status}", headers)
        if op in srv.forbidden:
            action = {"get": "read", "wrapkey": "wrap/action", "unwrapkey": "unwrap/action",
                      "create": "create/action", "delete": "delete"}.get(op, op)
            return self._error(403, "Forbidden",
                               f"Caller is not authorized to perform action on resource. Action: "
                               f"'Microsoft.KeyVault/vaults/keys/{action}'", inner="ForbiddenByRbac")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._error(400, "BadParameter", "invalid JSON")
        with srv._lock:
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                return self._error(400, "BadParameter", f"unsupported {method} {path}")
            return handler(path, body)

    @staticmethod
    def _operation(method: str, path: str) -> str:
        if method == "POST" and (m := _OP_PATH.match(path)):
            return m.group(3)
        if method == "POST" and _CREATE_PATH.match(path):
            return "create"
        if method == "GET" and _KEY_PATH.match(path):
            return "get"
        if method == "DELETE" and _KEY_PATH.match(path):
            return "delete"
        return "unknown"

    def _not_found(self, name: str, version: str | None) -> None:
        what = f"{name}/{version}" if version else name
        self._error(404, "KeyNotFound", f"A key with (name/id) {what} was not found in this key vault.")

    # -- operations (called with the server lock held) -----------------------------------
    def _op_get(self, path: str, body: dict[str, Any]) -> None:
        m = _KEY_PATH.match(path)
        assert m
        name, version = m.group(1), m.group(2)
        kv = self.srv._find(name, version)
        if kv is None:
            return self._not_found(name, version)
        self._reply(200, self.srv.key_bundle(name, kv))

    def _op_create(self, path: str, body: dict[str, Any]) -> None:
        m = _CREATE_PATH.match(path)
        assert m
        name = m.group(1)
        kty = body.get("kty", "")
        attrs = body.get("attributes") or {}
        existing = self.srv.keys.get(name)
        level = existing.recovery_level if existing else "Recoverable"
        if kty in ("RSA", "RSA-HSM"):
            version = self.srv.add_rsa_key(name, recovery_level=level, key_ops=body.get("key_ops"),
                                           enabled=attrs.get("enabled", True), exp=attrs.get("exp"),
                                           nbf=attrs.get("nbf"), size=int(body.get("key_size") or 2048))
        elif kty in ("oct", "oct-HSM"):
            version = self.srv.add_oct_key(name, recovery_level=level, key_ops=body.get("key_ops"),
                                           enabled=attrs.get("enabled", True))
        else:
            return self._error(400, "BadParameter", f"unsupported kty {kty!r}")
        kv = self.srv._find(name, version)
        assert kv is not None
        self._reply(200, self.srv.key_bundle(name, kv))

    def _op_delete(self, path: str, body: dict[str, Any]) -> None:
        m = _KEY_PATH.match(path)
        assert m
        name = m.group(1)
        kv = self.srv._find(name, None)
        if kv is None:
            return self._not_found(name, None)
        bundle = self.srv.key_bundle(name, kv)
        bundle.update({"recoveryId": f"{self.srv.url}/deletedkeys/{name}",
                       "deletedDate": int(time.time()), "scheduledPurgeDate": int(time.time()) + 86400 * 90})
        self.srv.delete_key(name)
        self._reply(200, bundle)

    def _key_for_op(self, path: str, operation: str) -> tuple[str, KeyVersion] | None:
        m = _OP_PATH.match(path)
        assert m
        name, version = m.group(1), m.group(2)
        kv = self.srv._find(name, version)
        if kv is None:
            self._not_found(name, version)
            return None
        if not kv.enabled:
            self._error(403, "Forbidden", f"Operation {operation} is not allowed on a disabled key.")
            return None
        now = time.time()
        if (kv.exp is not None and kv.exp < now) or (kv.nbf is not None and kv.nbf > now):
            self._error(403, "Forbidden", f"Operation {operation} is not allowed: the key is not "
                                          f"valid at this time.")
            return None
        if operation not in kv.key_ops:
            self._error(403, "Forbidden", f"Operation {operation} is not permitted on this key.")
            return None
        return name, kv

    def _op_wrapkey(self, path: str, body: dict[str, Any]) -> None:
        found = self._key_for_op(path, "wrapKey")
        if found is None:
            return
        name, kv = found
        alg, value = body.get("alg"), unb64url(body.get("value", ""))
        if kv.rsa_key is not None and alg in ("RSA-OAEP-256", "RSA-OAEP"):
            out = kv.rsa_key.public_key().encrypt(value, _oaep(alg))
        elif kv.secret is not None and alg == "A256KW":
            out = aes_key_wrap(kv.secret, value)
        else:
            return self._error(400, "BadParameter", f"algorithm {alg} does not fit key type {kv.kty}")
        self._reply(200, {"kid": f"{self.srv.url}/keys/{name}/{kv.version}", "value": b64url(out)})

    def _op_unwrapkey(self, path: str, body: dict[str, Any]) -> None:
        found = self._key_for_op(path, "unwrapKey")
        if found is None:
            return
        name, kv = found
        alg, value = body.get("alg"), unb64url(body.get("value", ""))
        try:
            if kv.rsa_key is not None and alg in ("RSA-OAEP-256", "RSA-OAEP"):
                out = kv.rsa_key.decrypt(value, _oaep(alg))
            elif kv.secret is not None and alg == "A256KW":
                out = aes_key_unwrap(kv.secret, value)
            else:
                return self._error(400, "BadParameter", f"algorithm {alg} does not fit key type {kv.kty}")
        except (ValueError, InvalidUnwrap):
            return self._error(400, "BadParameter", "The parameter is incorrect (decryption failed).")
        self._reply(200, {"kid": f"{self.srv.url}/keys/{name}/{kv.version}", "value": b64url(out)})


def _oaep(alg: str) -> padding.OAEP:
    h: hashes.HashAlgorithm = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()
    return padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=None)


class BlackholeServer:
    """Accepts TCP connections and never answers: a vault that hangs."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        for c in self._held:
            c.close()
