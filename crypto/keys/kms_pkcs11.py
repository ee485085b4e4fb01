"""PKCS#11 KEKs (hold-your-own-key HSMs, SoftHSM2 in tests) via python-pkcs11.

The KEK is a non-extractable token object; DEKs go in and out with C_WrapKey /
C_UnwrapKey only:

* AES KEK: CKM_AES_KEY_WRAP_PAD (RFC 5649) when the token offers it, else
  CKM_AES_KEY_WRAP (RFC 3394; a 32-byte DEK needs no padding).
* RSA KEK: CKM_RSA_PKCS_OAEP with SHA-1/MGF1-SHA-1 (SoftHSM2 and many HSMs support
  no other OAEP hash for key wrapping). Wrap uses the public key object.

To wrap, the DEK is imported as an extractable session object; to unwrap, the
result is created as a non-sensitive, extractable session object so its value can
be read, then destroyed. The mechanism is recorded in each WrappedDek.

URI (RFC 7512): pkcs11:token=T;object=O[;id=%01][;type=secret-key|private]
  ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path/to/pin
The PIN never appears in a URI or on a command line: pin-value is refused; it comes
from the pin-source file or the SEALFS_PKCS11_PIN environment variable (e.g. a
systemd credential). SEALFS_PKCS11_MODULE overrides module-path on hosts where the
library lives elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from ...errors import ConfigError, KeyAccessError, UsageError
from ..format.config import WrappedDek
from ..format.constants import KEY_SIZE
from .kms import KekProvider, KeySecrets, UnwrapResult, WrapResult
from .secret_files import read_secret_file

PIN_ENV = "SEALFS_PKCS11_PIN"
MODULE_ENV = "SEALFS_PKCS11_MODULE"

ALG_AES_KWP = "CKM_AES_KEY_WRAP_PAD"
ALG_AES_KW = "CKM_AES_KEY_WRAP"
ALG_RSA_OAEP = "CKM_RSA_PKCS_OAEP-SHA1"
_AES_MECH = {ALG_AES_KWP: Mechanism.AES_KEY_WRAP_PAD, ALG_AES_KW: Mechanism.AES_KEY_WRAP}
_OAEP_PARAM = (Mechanism.SHA_1, pkcs11.MGF.SHA1, None)
_PATH_ATTRS = {"token", "object", "id", "type", "serial", "manufacturer", "model", "slot-id",
               "library-manufacturer", "library-description", "library-version", "slot-description",
               "slot-manufacturer"}
_QUERY_ATTRS = {"module-path", "module-name", "pin-source", "pin-value"}
_DEK_TEMPLATE = {Attribute.TOKEN: False, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False,
                 Attribute.PRIVATE: True}


@dataclass(frozen=True)
class Pkcs11Uri:
    """The subset of RFC 7512 sealfs needs."""

    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    serial: str | None = None
    module_path: str | None = None
    pin_source: str | None = None

    @classmethod
    def parse(cls, uri: str) -> Pkcs11Uri:
        if not uri.startswith("pkcs11:"):
            raise UsageError("a PKCS#11 KEK is named by a pkcs11: URI (RFC 7512)")
        body = uri[len("pkcs11:"):]
        path, _, query = body.partition("?")
        fields: dict[str, Any] = {}
        for part in filter(None, path.split(";")):
            name, eq, value = part.partition("=")
            if not eq or name not in _PATH_ATTRS:
                raise UsageError(f"unsupported PKCS#11 URI attribute {name!r}")
            fields[name] = unquote_to_bytes(value) if name == "id" else unquote(value)
        for part in filter(None, query.split("&")):
            name, eq, value = part.partition("=")
            if not eq or name not in _QUERY_ATTRS:
                raise UsageError(f"unsupported PKCS#11 URI query attribute {name!r}")
            if name == "pin-value":
                raise UsageError("refusing pin-value in the PKCS#11 URI: a PIN must not appear in "
                                 "command lines or sealfs.json; use pin-source=file:/path or "
                                 f"{PIN_ENV}")
            fields[name] = unquote(value)
        if fields.get("type") not in (None, "secret-key", "private", "public"):
            raise UsageError(f"PKCS#11 URI type={fields['type']!r}: use secret-key (AES) or private (RSA)")
        if not (fields.get("object") or fields.get("id")):
            raise UsageError("the PKCS#11 URI must name the KEK with object=LABEL or id=%XX")
        module = fields.get("module-path")
        if fields.get("module-name") and not module:
            module = _find_module(fields["module-name"])
        return cls(token=fields.get("token"), object=fields.get("object"), id=fields.get("id"),
                   type=fields.get("type"), serial=fields.get("serial"), module_path=module,
                   pin_source=fields.get("pin-source"))

    def canonical(self) -> str:
        """The URI as recorded in sealfs.json (never a PIN)."""
        path = []
        if self.token is not None:
            path.append(f"token={quote(self.token, safe='')}")
        if self.serial is not None:
            path.append(f"serial={quote(self.serial, safe='')}")
        if self.object is not None:
            path.append(f"object={quote(self.object, safe='')}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        if self.type is not None:
            path.append(f"type={self.type}")
        query = []
        if self.module_path:
            query.append(f"module-path={quote(self.module_path, safe='/')}")
        if self.pin_source:
            query.append(f"pin-source={quote(self.pin_source, safe='/:')}")
        return "pkcs11:" + ";".join(path) + ("?" + "&".join(query) if query else "")

    @property
    def label(self) -> str:
        """Non-secret identity for messages and audit lines."""
        obj = self.object if self.object is not None else (self.id or b"").hex()
        return f"pkcs11:token={self.token or '*'};object={obj}"


def _find_module(name: str) -> str:
    for d in ("/usr/lib/x86_64-linux-gnu/pkcs11", "/usr/lib/pkcs11", "/usr/lib64/pkcs11", "/usr/lib/softhsm",
              "/usr/lib/x86_64-linux-gnu/softhsm", "/usr/lib", "/usr/lib64"):
        for cand in (f"{d}/{name}", f"{d}/{name}.so", f"{d}/lib{name}.so"):
            if os.path.isfile(cand):
                return cand
    raise UsageError(f"PKCS#11 module-name={name!r} not found; give module-path=/path/to/module.so")


def _read_pin(ref: Pkcs11Uri, secrets: KeySecrets) -> bytes:
    """PIN from pin-source (file) or SEALFS_PKCS11_PIN; never from argv."""
    if ref.pin_source:
        src = ref.pin_source
        path = Path(src[5:] if src.startswith("file:") else src)
        if src.startswith(("|", "exec:")):
            raise UsageError("PKCS#11 pin-source must be a file (file:/path)")
        pin = read_secret_file(path, "PIN file").rstrip(b"\r\n")
    elif os.environ.get(PIN_ENV):
        pin = os.environ[PIN_ENV].encode()
    elif callable(secrets.options.get("pkcs11_pin")):
        pin = secrets.options["pkcs11_pin"]()
    else:
        raise KeyAccessError(f"the PKCS#11 token {ref.token or ''!r} needs a PIN: add pin-source=file:/path "
                             f"to the URI or set {PIN_ENV}")
    if not pin:
        raise KeyAccessError("the PKCS#11 PIN is empty")
    return pin


# -- libraries and sessions shared per process --------------------------------------------
# PKCS#11 login state is per application, and C_Logout in one session logs out all of
# them; so providers on the same token share one logged-in session (and its lock).

_LIBS: dict[str, Any] = {}
_SESSIONS: dict[tuple[str, str], _SharedSession] = {}
_REGISTRY_LOCK = threading.Lock()
_PIN_TAG_KEY = os.urandom(32)


def _lib(module: str) -> Any:
    lib = _LIBS.get(module)
    if lib is None:
        try:
            lib = pkcs11.lib(module)
        except (OSError, RuntimeError) as exc:
            raise KeyAccessError(f"cannot load PKCS#11 module {module}: {exc}") from None
        _LIBS[module] = lib
    return lib


class _SharedSession:
    def __init__(self, session: Any, token: Any, pin_tag: bytes) -> None:
        self.session = session
        self.token = token
        self.pin_tag = pin_tag
        self.lock = threading.Lock()
        self.refs = 0


def _open_session(ref: Pkcs11Uri, module: str, pin: bytes) -> tuple[tuple[str, str], _SharedSession]:
    tag = hmac.new(_PIN_TAG_KEY, pin, hashlib.sha256).digest()
    lib = _lib(module)
    with _REGISTRY_LOCK:
        try:
            serial = ref.serial.encode() if ref.serial else None
            token = lib.get_token(token_label=ref.token, token_serial=serial)
        except p11e.NoSuchToken:
            raise KeyAccessError(f"no PKCS#11 token labelled {ref.token!r} in {module}") from None
        except p11e.MultipleTokensReturned:
            raise UsageError(f"several PKCS#11 tokens match {ref.token!r}; add serial= to the URI") from None
        except p11e.PKCS11Error as exc:
            raise KeyAccessError(f"PKCS#11 module {module} failed to list tokens "
                                 f"({type(exc).__name__})") from None
        key = (module, f"{token.manufacturer_id}/{token.serial!r}/{token.label}")
        shared = _SESSIONS.get(key)
        if shared is not None:
            if not hmac.compare_digest(shared.pin_tag, tag):
                raise KeyAccessError(f"PKCS#11 token {ref.token!r} is already logged in with a different PIN "
                                     f"in this process")
        else:
            try:
                session = token.open(user_pin=pin.decode("utf-8", "surrogateescape"), rw=True)
            except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
                raise KeyAccessError(f"PKCS#11 token {ref.token!r} rejected the PIN "
                                     f"(from {ref.pin_source or PIN_ENV})") from None
            except p11e.PinLocked:
                raise KeyAccessError(f"the PIN of PKCS#11 token {ref.token!r} is locked; "
                                     f"the security officer must reset it") from None
            except p11e.PinExpired:
                raise KeyAccessError(f"the PIN of PKCS#11 token {ref.token!r} has expired") from None
            except p11e.PKCS11Error as exc:
                raise KeyAccessError(f"cannot log in to PKCS#11 token {ref.token!r} "
                                     f"({type(exc).__name__})") from None
            shared = _SESSIONS[key] = _SharedSession(session, token, tag)
        shared.refs += 1
        return key, shared


def _close_session(key: tuple[str, str]) -> None:
    with _REGISTRY_LOCK:
        shared = _SESSIONS.get(key)
        if shared is None:
            return
        shared.refs -= 1
        if shared.refs <= 0:
            del _SESSIONS[key]
            try:
                shared.session.close()
            except p11e.PKCS11Error:
                pass


class Pkcs11Kek(KekProvider):
    provider = "pkcs11"

    def __init__(self, ref: Pkcs11Uri, pin: bytes, module: str | None = None,
                 mechanism: str | None = None) -> None:
        """mechanism: force CKM_AES_KEY_WRAP or CKM_AES_KEY_WRAP_PAD (default: PAD when offered)."""
        self.ref = ref
        self._wanted = mechanism
        module = module or os.environ.get(MODULE_ENV) or ref.module_path
        if not module:
            raise UsageError(f"the PKCS#11 URI needs module-path=/path/to/module.so (or set {MODULE_ENV})")
        self.module = module
        self._key_id, self._shared = _open_session(ref, module, pin)
        self._closed = False
        try:
            self._kind, self._mechanism = self._find_kek()
        except BaseException:
            self.close()
            raise

    # -- lookup -------------------------------------------------------------------------
    def _find(self, object_class: ObjectClass) -> Any:
        attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class}
        if self.ref.object is not None:
            attrs[Attribute.LABEL] = self.ref.object
        if self.ref.id is not None:
            attrs[Attribute.ID] = self.ref.id
        found = list(self._shared.session.get_objects(attrs))
        if len(found) > 1:
            raise UsageError(f"{self.ref.label} matches {len(found)} objects; add id= to the URI")
        return found[0] if found else None

    def _find_kek(self) -> tuple[str, str]:
        with self._shared.lock:
            if self.ref.type in (None, "secret-key"):
                key = self._find(ObjectClass.SECRET_KEY)
                if key is not None:
                    if key[Attribute.KEY_TYPE] != KeyType.AES:
                        raise UsageError(f"{self.ref.label} is not an AES key")
                    mechs = self._shared.token.slot.get_mechanisms()
                    alg = ALG_AES_KWP if Mechanism.AES_KEY_WRAP_PAD in mechs else ALG_AES_KW
                    if self._wanted is not None:
                        if self._wanted not in _AES_MECH:
                            raise UsageError(f"unknown PKCS#11 AES wrap mechanism {self._wanted!r}")
                        alg = self._wanted
                    if _AES_MECH[alg] not in mechs:
                        raise UsageError(f"PKCS#11 token {self.ref.token!r} supports neither AES key "
                                         "wrap mechanism")
                    return "aes", alg
            if (self.ref.type in (None, "private", "public")
                    and self._find(ObjectClass.PRIVATE_KEY) is not None):
                return "rsa", ALG_RSA_OAEP
        raise KeyAccessError(f"no KEK {self.ref.label} on the PKCS#11 token (or the PIN's user "
                             "cannot see it)")

    @property
    def kek_id(self) -> str:
        return self.ref.label

    @property
    def mechanism(self) -> str:
        return self._mechanism

    def config_entry(self) -> dict[str, Any]:
        return {"provider": "pkcs11", "uri": self.ref.canonical(), "mechanism": self._mechanism}

    # -- policy -------------------------------------------------------------------------
    def check(self, allow_purgeable: bool = False) -> None:
        """Refuse a KEK that could leave the token or vanish (allow_purgeable overrides: 'weak KEK')."""
        with self._shared.lock:
            if self._kind == "aes":
                key, need = self._find(ObjectClass.SECRET_KEY), (Attribute.WRAP, Attribute.UNWRAP)
            else:
                key, need = self._find(ObjectClass.PRIVATE_KEY), (Attribute.UNWRAP,)
            if key is None:
                raise KeyAccessError(f"KEK {self.ref.label} disappeared from the token")
            missing = [a.name for a in need if not key[a]]
            if missing:
                raise UsageError(f"KEK {self.ref.label} lacks {', '.join('CKA_' + m for m in missing)}; "
                                 f"create it with wrap/unwrap usage (pkcs11-tool --usage-wrap)")
            if not key[Attribute.TOKEN]:
                raise UsageError(f"KEK {self.ref.label} is a session object and would vanish")
            if (key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]) and not allow_purgeable:
                raise UsageError(f"KEK {self.ref.label} can leave the token (CKA_EXTRACTABLE or not "
                                 f"CKA_SENSITIVE); create a sensitive, non-extractable key or pass the "
                                 f"explicit override")
            if self._kind == "rsa" and self._find(ObjectClass.PUBLIC_KEY) is None:
                raise UsageError(f"KEK {self.ref.label} has no public key object on the token to wrap with")

    # -- wrap / unwrap ------------------------------------------------------------------------
    def _p11_error(self, exc: Exception, op: str, dek_id: int | None = None) -> KeyAccessError:
        what = f"DEK {dek_id}" if dek_id is not None else "the DEK"
        if isinstance(exc, (p11e.WrappedKeyInvalid, p11e.EncryptedDataInvalid, p11e.WrappedKeyLenRange,
                            p11e.EncryptedDataLenRange, p11e.DataInvalid)):
            return KeyAccessError(f"KEK {self.ref.label} cannot unwrap {what}: wrong key or damaged wrap")
        if op == "unwrap" and isinstance(exc, (p11e.GeneralError, p11e.FunctionFailed)):
            # SoftHSM2 reports a failed RFC 3394/5649 integrity check as CKR_GENERAL_ERROR.
            return KeyAccessError(f"KEK {self.ref.label} cannot unwrap {what}: wrong key or damaged wrap "
                                  f"({type(exc).__name__})")
        if isinstance(exc, (p11e.DeviceRemoved, p11e.TokenNotPresent, p11e.SessionHandleInvalid,
                            p11e.SessionClosed, p11e.DeviceError)):
            return KeyAccessError(f"PKCS#11 token {self.ref.token!r} went away during {op} "
                                  f"({type(exc).__name__})")
        if isinstance(exc, p11e.UserNotLoggedIn):
            return KeyAccessError(f"PKCS#11 token {self.ref.token!r} logged this session out during {op}")
        return KeyAccessError(f"PKCS#11 {op} with {self.ref.label} failed ({type(exc).__name__})")

    def wrap(self, dek: bytes) -> WrapResult:
        if len(dek) != KEY_SIZE:
            raise UsageError(f"a DEK must be {KEY_SIZE} bytes")
        with self._shared.lock:
            s = self._shared.session
            tmp = None
            try:
                tmp = s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                       Attribute.KEY_TYPE: KeyType.AES,
                                       Attribute.VALUE: bytes(dek), **_DEK_TEMPLATE})
                if self._kind == "aes":
                    kek = self._find(ObjectClass.SECRET_KEY)
                    wrapped = kek.wrap_key(tmp, mechanism=_AES_MECH[self._mechanism])
                else:
                    pub = self._find(ObjectClass.PUBLIC_KEY)
                    if pub is None:
                        raise KeyAccessError(f"KEK {self.ref.label} has no public key object to wrap with")
                    wrapped = pub.wrap_key(tmp, mechanism=Mechanism.RSA_PKCS_OAEP,
                                           mechanism_param=_OAEP_PARAM)
            except p11e.PKCS11Error as exc:
                raise self._p11_error(exc, "wrap") from None
            finally:
                if tmp is not None:
                    try:
                        tmp.destroy()
                    except p11e.PKCS11Error:
                        pass
        return WrapResult(bytes(wrapped), self._mechanism)

    def unwrap(self, wrapped: WrappedDek) -> UnwrapResult:
        alg = wrapped.algorithm
        if alg not in (ALG_AES_KWP, ALG_AES_KW, ALG_RSA_OAEP):
            raise KeyAccessError(f"DEK {wrapped.id} was wrapped with {alg}, not by a PKCS#11 KEK")
        if (alg == ALG_RSA_OAEP) != (self._kind == "rsa"):
            raise KeyAccessError(f"DEK {wrapped.id} was wrapped with {alg}, which KEK {self.ref.label} "
                                 f"({self._kind.upper()}) cannot unwrap")
        with self._shared.lock:
            out = None
            try:
                if self._kind == "aes":
                    kek = self._find(ObjectClass.SECRET_KEY)
                    out = kek.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped.wrapped,
                                         mechanism=_AES_MECH[alg], template=_DEK_TEMPLATE, store=False)
                else:
                    priv = self._find(ObjectClass.PRIVATE_KEY)
                    out = priv.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped.wrapped,
                                          mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=_OAEP_PARAM,
                                          template=_DEK_TEMPLATE, store=False)
                value = bytearray(out[Attribute.VALUE])
            except p11e.PKCS11Error as exc:
                raise self._p11_error(exc, "unwrap", wrapped.id) from None
            finally:
                if out is not None:
                    try:
                        out.destroy()
                    except p11e.PKCS11Error:
                        pass
        if len(value) != KEY_SIZE:
            raise KeyAccessError(f"KEK {self.ref.label} unwrapped DEK {wrapped.id} to {len(value)} bytes")
        return UnwrapResult(value)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_session(self._key_id)


def for_uri(uri: str, secrets: KeySecrets) -> KekProvider:
    ref = Pkcs11Uri.parse(uri)
    return Pkcs11Kek(ref, _read_pin(ref, secrets), mechanism=secrets.options.get("pkcs11_mechanism"))


def from_config(entry: dict[str, Any], secrets: KeySecrets) -> KekProvider:
    uri = entry.get("uri")
    if not isinstance(uri, str):
        raise ConfigError("sealfs.json names a PKCS#11 KEK without a uri")
    try:
        ref = Pkcs11Uri.parse(uri)
    except UsageError as exc:
        raise ConfigError(f"sealfs.json has a bad PKCS#11 URI: {exc}") from None
    mech = entry.get("mechanism")
    return Pkcs11Kek(ref, _read_pin(ref, secrets), mechanism=mech if mech in _AES_MECH else None)
