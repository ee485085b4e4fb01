"""Where the local key comes from, in a documented order of precedence.

1. --keyfile FILE / --passphrase-file FILE on the command line
2. the environment: SEALFS_KEYFILE (a path) / SEALFS_PASSPHRASE (the passphrase)
3. --config NAME: systemd credentials ($CREDENTIALS_DIRECTORY/keyfile or
   .../passphrase, see systemd/sealfs@.service) first, then the file's keyfile /
   passphrase_file keys (fs/config_file.secret_files)
4. an interactive prompt for the passphrase, only when stdin is a terminal

Secrets never come from argv: only file paths do. A --daemon mount's child gets the
secret variables through a pipe, not its environment (fs/fuse/daemon.py): secret_env()
reads those first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import click

from ...crypto.keys.kms import KeySecrets
from ...crypto.keys.secret_files import read_secret_file
from ...errors import KeyAccessError, UsageError

#: environment variables that hold secrets themselves (not paths)
HANDED_OVER_ENV = ("SEALFS_PASSPHRASE", "SEALFS_SMB_PASSWORD", "SEALFS_PKCS11_PIN")
_handed_over: dict[str, str] = {}


def accept_handover(values: dict[str, str]) -> None:
    """Secret variables a --daemon parent passed over a pipe instead of the environment."""
    _handed_over.update({k: v for k, v in values.items() if k in HANDED_OVER_ENV and isinstance(v, str)})


def secret_env(name: str) -> str | None:
    """A secret variable: handed over by a --daemon parent, else from the environment."""
    return _handed_over.get(name) or os.environ.get(name) or None


def read_passphrase_file(path: Path) -> bytes:
    data = read_secret_file(path, "passphrase file").rstrip(b"\r\n")
    if not data:
        raise KeyAccessError(f"passphrase file {path} is empty")
    return data


def resolve_secrets(keyfile: str | None, passphrase_file: str | None, *,
                    config_keyfile: str | None = None, config_passphrase_file: str | None = None,
                    confirm_prompt: bool = False, options: dict | None = None) -> KeySecrets:
    if keyfile and passphrase_file:
        raise UsageError("give either --keyfile or --passphrase-file, not both")
    secrets = KeySecrets(options=dict(options or {}))
    if _use_files(secrets, keyfile, passphrase_file):
        return secrets
    pin = secret_env("SEALFS_PKCS11_PIN")
    if pin and "SEALFS_PKCS11_PIN" not in os.environ:     # handed over: not in the environment
        secrets.options.setdefault("pkcs11_pin", lambda: pin.encode("utf-8", "surrogateescape"))
    env_keyfile = os.environ.get("SEALFS_KEYFILE")
    env_pass = secret_env("SEALFS_PASSPHRASE")
    if env_keyfile:
        secrets.keyfile = Path(env_keyfile)
        return secrets
    if env_pass:
        value = env_pass.encode("utf-8", "surrogateescape")
        secrets.passphrase = lambda: value
        return secrets
    if _use_files(secrets, config_keyfile, config_passphrase_file):
        return secrets
    if sys.stdin.isatty():
        secrets.passphrase = _prompt(confirm_prompt)
    return secrets


def _use_files(secrets: KeySecrets, keyfile: str | None, passphrase_file: str | None) -> bool:
    """One precedence level given as file paths: a keyfile wins over a passphrase file."""
    if keyfile:
        secrets.keyfile = Path(keyfile)
        return True
    if passphrase_file:
        path = Path(passphrase_file)
        secrets.passphrase = lambda: read_passphrase_file(path)
        return True
    return False


def _prompt(confirm: bool) -> Callable[[], bytes]:
    cached: list[bytes] = []

    def ask() -> bytes:
        if not cached:
            value = click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm,
                                 err=True)
            cached.append(value.encode("utf-8"))
        return cached[0]
    return ask


def azure_secret_source(secret_file: str | None, env: str, config_file: str | None,
                        what: str) -> Callable[[], str | None]:
    """An Azure SAS token or account key, read only if an https:// store is opened, never
    from argv: the option's file, then the environment variable, then the config file or
    systemd credential; None when there is none (Entra ID is used then)."""
    def fetch() -> str | None:
        path = secret_file or None
        if path is None and os.environ.get(env):
            return os.environ[env].strip()
        path = path or config_file
        if not path:
            return None
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KeyAccessError(f"cannot read {what} file {path}: {exc.strerror}") from None
    return fetch


def smb_password_source(password_file: str | None, config_file: str | None = None) -> Callable[[], str | None]:
    """The SMB password, fetched only if an smb:// store is actually opened.

    Precedence as for keys: --smb-password-file, then SEALFS_SMB_PASSWORD, then the
    config file / systemd credential `smb-password`, then a prompt on a terminal; None
    (Kerberos) when there is none of these.
    """
    def fetch() -> str | None:
        path = password_file or None
        if path is None and secret_env("SEALFS_SMB_PASSWORD"):
            return secret_env("SEALFS_SMB_PASSWORD")
        path = path or config_file
        if path:
            data = read_secret_file(path, "SMB password file")
            try:
                return data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise KeyAccessError(f"SMB password file {path} is not UTF-8") from None
        if sys.stdin.isatty():
            return click.prompt("SMB password", hide_input=True, err=True)
        return None
    return fetch
