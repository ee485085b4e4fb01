"""Local KEKs: a 32-byte keyfile, or a passphrase stretched with scrypt; AES key wrap.

The embedded default. The scrypt parameters and salt live in sealfs.json so the
same passphrase derives the same KEK anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ...errors import ConfigError, KeyAccessError, UsageError
from ..format.config import WrappedDek, b64, unb64
from ..format.constants import (
    KEY_SIZE,
    SCRYPT_MAX_MEMORY,
    SCRYPT_MAX_WORK,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    SCRYPT_SALT_SIZE,
)
from ..secmem import SecretBuffer, secret
from .kms import KekProvider, KeySecrets, UnwrapResult, WrapResult
from .secret_files import read_key_file

ALGORITHM = "A256KW"   # RFC 3394 AES key wrap


def read_keyfile(path: Path) -> SecretBuffer:
    """The KEK, in locked memory; refused if group or others can read the file."""
    return read_key_file(path, KEY_SIZE)


def create_keyfile(path: Path) -> None:
    """Create a new random keyfile, mode 0600, never overwriting an existing file or following a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, os.urandom(KEY_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)


class _AesKwKek(KekProvider):
    def __init__(self, kek: SecretBuffer) -> None:
        self._secret = kek                  # locked memory, zeroed by close()
        self._kek = kek.readonly()

    def wrap(self, dek: bytes) -> WrapResult:
        return WrapResult(aes_key_wrap(self._kek, bytes(dek)), ALGORITHM)

    def unwrap(self, wrapped: WrappedDek) -> UnwrapResult:
        if wrapped.algorithm != ALGORITHM:
            raise KeyAccessError(f"DEK {wrapped.id} was wrapped with {wrapped.algorithm}, "
                                 f"not by a local {self.provider} KEK")
        try:
            return UnwrapResult(bytearray(aes_key_unwrap(self._kek, wrapped.wrapped)))
        except InvalidUnwrap:
            raise KeyAccessError(self._wrong_key_message()) from None

    def _wrong_key_message(self) -> str:
        return "wrong key"

    def close(self) -> None:
        self._kek = memoryview(b"")
        self._secret.wipe()


class KeyfileKek(_AesKwKek):
    provider = "keyfile"

    def __init__(self, path: Path) -> None:
        self._path = path
        super().__init__(read_keyfile(path))

    @property
    def kek_id(self) -> str:
        return f"keyfile:{self._path.name}"

    def config_entry(self) -> dict[str, Any]:
        return {"provider": "keyfile"}

    def _wrong_key_message(self) -> str:
        return f"wrong keyfile: {self._path} does not unlock this volume"


class PassphraseKek(_AesKwKek):
    provider = "passphrase"

    def __init__(self, passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> None:
        if not passphrase:
            raise KeyAccessError("the passphrase is empty")
        self._params = (salt, n, r, p)
        kek = secret(KEY_SIZE)
        Scrypt(salt=salt, length=KEY_SIZE, n=n, r=r, p=p).derive_into(passphrase, kek.view)
        super().__init__(kek)

    @property
    def kek_id(self) -> str:
        return "passphrase:scrypt"

    def config_entry(self) -> dict[str, Any]:
        salt, n, r, p = self._params
        return {"provider": "passphrase", "scrypt": {"salt": b64(salt), "n": n, "r": r, "p": p}}

    def _wrong_key_message(self) -> str:
        return "wrong passphrase: it does not unlock this volume"


_DEFAULT_WORK = SCRYPT_P * SCRYPT_N * SCRYPT_R


def scrypt_problem(n: int, r: int, p: int) -> str | None:
    """Why scrypt(N, r, p) must not run, or None: a store can ask for these before the MAC
    is checked, so a reader runs nothing a legitimate volume could not need."""
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        return f"N = {n}, r = {r}, p = {p} are not valid scrypt parameters (N a power of two >= 2, r, p >= 1)"
    if 128 * n * r > SCRYPT_MAX_MEMORY:
        return (f"N = {n}, r = {r} need {128 * n * r >> 20} MiB of memory, "
                f"more than the {SCRYPT_MAX_MEMORY >> 20} MiB sealfs allows")
    if p * n * r > SCRYPT_MAX_WORK:
        return (f"N = {n}, r = {r}, p = {p} ask for p*N*r = {p * n * r} units of work, more than the "
                f"{SCRYPT_MAX_WORK} ({SCRYPT_MAX_WORK // _DEFAULT_WORK} times the default) sealfs allows")
    return None


def for_init(secrets: KeySecrets) -> KekProvider:
    if secrets.keyfile is not None:
        if not secrets.keyfile.exists():
            create_keyfile(secrets.keyfile)
        return KeyfileKek(secrets.keyfile)
    if secrets.passphrase is not None:
        n = int(secrets.options.get("scrypt_n", SCRYPT_N))
        problem = scrypt_problem(n, SCRYPT_R, SCRYPT_P)
        if problem:
            raise UsageError(f"--scrypt-n: {problem}")
        return PassphraseKek(secrets.passphrase(), os.urandom(SCRYPT_SALT_SIZE), n, SCRYPT_R, SCRYPT_P)
    raise UsageError("a new volume needs --keyfile FILE, --passphrase-file FILE or --kek URI")


def from_config(entry: dict[str, Any], secrets: KeySecrets) -> KekProvider:
    if entry["provider"] == "keyfile":
        if secrets.keyfile is None:
            raise KeyAccessError("this volume is locked with a keyfile: pass --keyfile FILE "
                                 "or set SEALFS_KEYFILE")
        return KeyfileKek(secrets.keyfile)
    if secrets.passphrase is None:
        raise KeyAccessError("this volume is locked with a passphrase: pass --passphrase-file FILE "
                             "or set SEALFS_PASSPHRASE")
    try:
        params = entry["scrypt"]
        salt, n, r, p = unb64(params["salt"]), int(params["n"]), int(params["r"]), int(params["p"])
    except (KeyError, ValueError, TypeError):
        raise ConfigError("sealfs.json has damaged scrypt parameters") from None
    problem = scrypt_problem(n, r, p)
    if problem:
        raise ConfigError(f"sealfs.json asks for unreasonable scrypt parameters: {problem}")
    return PassphraseKek(secrets.passphrase(), salt, n, r, p)
