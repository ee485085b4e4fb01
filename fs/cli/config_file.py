"""Local config files: /etc/sealfs/NAME.toml describes one volume for a host.

systemd units, the fstab helper and the CLI all refer to a volume by NAME, so
everything a mount or a backup needs (where the store is, where the keys are,
cache sizes, the [sync] job) lives in one file that holds no secrets itself:
only the *paths* of secret files. A bad file is reported in one line naming
the file, the line and the key, because it is usually read by a unit at boot
and the journal is the only place the message appears.

Example::

    store = "smb://backup@files.example.net/share/vol1"
    mountpoint = "/mnt/vol1"
    keyfile = "vol1.key"            # relative paths: next to this file
    chunk_cache = "256M"
    dirty_limit = "64M"
    options = ["allow_other"]

    [sync]
    source = "/srv/data"
    path = "/backup"
    exclude = ["*.tmp", ".cache/"]
    delete = false
    checksum = false
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...errors import ConfigError
from .units import parse_size  # re-exported: a size means the same in the CLI and here

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "ConfigFileError",
    "SecretFiles",
    "GatewayConfig",
    "SyncConfig",
    "VolumeConfigFile",
    "config_dir",
    "credential_file",
    "load_config_file",
    "parse_config_text",
    "parse_size",
    "resolve_config_path",
    "secret_files",
]

DEFAULT_CONFIG_DIR = Path("/etc/sealfs")
CONFIG_DIR_ENV = "SEALFS_CONFIG_DIR"

# A bare volume name: what systemd passes as %i and fstab as config=NAME.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@-]*$")
# Same rule as crypto/keys/kms.py provider_for_init: a Key Vault key URL or a PKCS#11 URI.
_KEK_RE = re.compile(r"^(https://[^/\s]+/\S+|pkcs11:\S+)$")
_SECRET_KEYS = {"passphrase", "password", "smb_password", "key", "secret"}


class ConfigFileError(ConfigError):
    """A local config file is missing or malformed; str() is one line: FILE:LINE: KEY: problem."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None,
                 column: int | None = None, key: str | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.column = column
        self.key = key
        self.reason = message
        where = str(self.path)
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(" ".join(text.split()))  # always a single line


@dataclass(frozen=True)
class SyncConfig:
    """The [sync] table: back up `source` into the volume at `path`."""

    source: Path
    path: str = "/"
    exclude: tuple[str, ...] = ()
    delete: bool = False
    checksum: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    """The [gateway] table: serve the volume over SMB 3 as `share` (`sealfs gateway`)."""

    share: str
    listen: str | None = None              # ADDR[:PORT]; None: every address, port 445
    hosts_allow: tuple[str, ...] = ()      # empty: loopback only
    force_user: str | None = None          # every SMB user works as this Unix account


@dataclass(frozen=True)
class VolumeConfigFile:
    """One parsed config file. Paths are absolute; sizes are in bytes; None means "not set"."""

    name: str                      # the NAME (file stem); used in messages and unit names
    path: Path                     # the file it came from
    store: str                     # absolute local path, or an smb:// URL without password
    mountpoint: Path | None = None
    keyfile: Path | None = None
    passphrase_file: Path | None = None
    smb_password_file: Path | None = None
    azure_sas_file: Path | None = None
    azure_account_key_file: Path | None = None
    kek: str | None = None         # https://VAULT/keys/NAME[/VERSION] or pkcs11:...; None = local
    audit_log: Path | None = None
    chunk_cache: int | None = None
    dirty_limit: int | None = None
    options: tuple[str, ...] = ()  # mount -o options, one per item
    sync: SyncConfig | None = None
    gateway: GatewayConfig | None = None


@dataclass(frozen=True)
class SecretFiles:
    """Where each secret is read from: a systemd credential first, else the config file's path."""

    keyfile: Path | None
    passphrase_file: Path | None
    smb_password_file: Path | None
    azure_sas_file: Path | None = None
    azure_account_key_file: Path | None = None


def credential_file(name: str) -> Path | None:
    """$CREDENTIALS_DIRECTORY/NAME if systemd passed that credential (LoadCredential=), else None.

    An empty file counts as absent, so a `SetCredential=NAME:` default in a drop-in
    means "not provided" rather than "empty passphrase".
    """
    base = os.environ.get("CREDENTIALS_DIRECTORY")
    if not base:
        return None
    p = Path(base) / name
    try:
        return p if p.is_file() and p.stat().st_size > 0 else None
    except OSError:
        return None


def secret_files(cfg: VolumeConfigFile | None) -> SecretFiles:
    """The secret file paths to use: credentials `keyfile`, `passphrase`, `smb-password`
    (names fixed by systemd/sealfs@.service) win over the config file's keys."""
    return SecretFiles(
        keyfile=credential_file("keyfile") or (cfg.keyfile if cfg else None),
        passphrase_file=credential_file("passphrase") or (cfg.passphrase_file if cfg else None),
        smb_password_file=credential_file("smb-password") or (cfg.smb_password_file if cfg else None),
        azure_sas_file=credential_file("azure-sas") or (cfg.azure_sas_file if cfg else None),
        azure_account_key_file=credential_file("azure-account-key")
        or (cfg.azure_account_key_file if cfg else None),
    )


def config_dir() -> Path:
    """Where bare names are looked up: $SEALFS_CONFIG_DIR (tests, packagers) or /etc/sealfs."""
    env = os.environ.get(CONFIG_DIR_ENV)
    return Path(env) if env else DEFAULT_CONFIG_DIR


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A bare NAME -> <config dir>/NAME.toml; anything with a '/' or a .toml suffix is a path."""
    text = os.fspath(name_or_path)
    if not text:
        raise ConfigFileError(config_dir(), "empty config name")
    if "/" in text or text.endswith(".toml") or isinstance(name_or_path, Path):
        return Path(text).expanduser()
    if not _NAME_RE.match(text):
        raise ConfigFileError(
            config_dir() / f"{text}.toml",
            f"invalid config name {text!r} (letters, digits and _.+@- only; or give a path)")
    return config_dir() / f"{text}.toml"


def load_config_file(name_or_path: str | os.PathLike[str]) -> VolumeConfigFile:
    """Read and validate a config file given as a bare NAME or a PATH."""
    path = resolve_config_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(path, "no such config file") from None
    except IsADirectoryError:
        raise ConfigFileError(path, "is a directory, not a config file") from None
    except PermissionError:
        raise ConfigFileError(path, "permission denied reading the config file") from None
    except UnicodeDecodeError:
        raise ConfigFileError(path, "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigFileError(path, f"cannot read: {exc.strerror or exc}") from None
    return parse_config_text(text, path)


def parse_config_text(text: str, path: Path | str) -> VolumeConfigFile:
    """Validate TOML text as if read from `path` (relative paths resolve next to it)."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg, line, col = _split_toml_error(exc)
        raise ConfigFileError(path, f"TOML syntax error: {msg}", line=line, column=col) from None
    except RecursionError:      # tomllib recurses once per nested array or inline table
        raise ConfigFileError(path, "TOML nests arrays or inline tables too deeply") from None
    return _Validator(text, path).build(data)


def _split_toml_error(exc: tomllib.TOMLDecodeError) -> tuple[str, int | None, int | None]:
    """tomllib (3.11) puts the position in the message text: '... (at line 3, column 9)'."""
    line = getattr(exc, "lineno", None)
    col = getattr(exc, "colno", None)
    msg = str(getattr(exc, "msg", None) or exc)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", msg)
    if m:
        line, col = int(m.group(1)), int(m.group(2))
        msg = msg[: m.start()]
    else:
        msg = re.sub(r"\s*\(at end of document\)\s*$", " at end of file", msg)
    return msg, line, col


class _Validator:
    """Turns the raw TOML dict into a VolumeConfigFile, locating bad keys by line."""

    TOP_KEYS = ("store", "mountpoint", "keyfile", "passphrase_file", "smb_password_file",
                "azure_sas_file", "azure_account_key_file", "kek", "audit_log", "chunk_cache",
                "dirty_limit", "options", "sync", "gateway")
    SYNC_KEYS = ("source", "path", "exclude", "delete", "checksum")
    GATEWAY_KEYS = ("share", "listen", "hosts_allow", "force_user")

    def __init__(self, text: str, path: Path) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.base = path.parent

    # -- errors ---------------------------------------------------------------

    def _line_of(self, key: str) -> int | None:
        """Best-effort line of `key` ("x" or "sync.x"): tomllib keeps no positions for values."""
        table, _, leaf = key.rpartition(".")
        current = ""
        leaf_re = re.compile(rf"^\s*[\"']?{re.escape(leaf)}[\"']?\s*=")
        dotted_re = re.compile(rf"^\s*{re.escape(table)}\s*\.\s*{re.escape(leaf)}\s*=") if table else None
        inline_re = (re.compile(rf"^\s*{re.escape(table)}\s*=\s*\{{.*\b{re.escape(leaf)}\s*=")
                     if table else None)
        for no, raw in enumerate(self.lines, 1):
            header = re.match(r"^\s*\[+\s*([^\]]+?)\s*\]+", raw)
            if header:
                current = header.group(1).strip()
                continue
            if current == table and leaf_re.match(raw):
                return no
            if current == "" and table and (dotted_re.match(raw) or inline_re.match(raw)):
                return no
        for no, raw in enumerate(self.lines, 1):  # a whole table, e.g. [sync]
            if re.match(rf"^\s*\[\s*{re.escape(key)}\s*\]", raw):
                return no
        return None

    def fail(self, key: str, message: str) -> ConfigFileError:
        return ConfigFileError(self.path, message, line=self._line_of(key), key=key)

    # -- typed getters --------------------------------------------------------

    def _typed(self, table: dict[str, Any], key: str, full: str, kind: type, label: str) -> Any:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(full, f"expected {label}, got {_toml_type(value)}")
        return value

    def _string(self, table: dict[str, Any], key: str, full: str) -> str | None:
        value = self._typed(table, key, full, str, "a string")
        if value is not None and not value.strip():
            raise self.fail(full, "must not be empty")
        return value

    def _path(self, table: dict[str, Any], key: str, full: str, *, absolute: bool = False) -> Path | None:
        value = self._string(table, key, full)
        if value is None:
            return None
        p = Path(value).expanduser()
        if absolute and not p.is_absolute():
            raise self.fail(full, f"must be an absolute path, got {value!r}")
        return p if p.is_absolute() else (self.base / p)

    def _size(self, table: dict[str, Any], key: str, full: str) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(full, f"expected a size such as \"256M\", got {_toml_type(value)}")
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.fail(full, str(exc)) from None

    def _str_list(self, table: dict[str, Any], key: str, full: str,
                  check: Callable[[str], str | None] | None = None) -> tuple[str, ...]:
        value = table.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(full, f"expected a list of strings, got {_toml_type(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(full, f"item {i + 1}: expected a string, got {_toml_type(item)}")
            problem = check(item) if check else None
            if problem:
                raise self.fail(full, f"item {i + 1} ({item!r}): {problem}")
        return tuple(value)

    def _unknown(self, table: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key in allowed:
                continue
            full = prefix + key
            if key in _SECRET_KEYS:
                hint = ("secrets do not belong in a config file; use passphrase_file, keyfile, "
                        "smb_password_file or a systemd credential")
            else:
                hint = "unknown key (allowed: " + ", ".join(allowed) + ")"
            raise self.fail(full, hint)

    # -- the whole file ---------------------------------------------------------

    def build(self, data: dict[str, Any]) -> VolumeConfigFile:
        self._unknown(data, self.TOP_KEYS, "")
        store = self._string(data, "store", "store")
        if store is None:
            raise ConfigFileError(self.path, "missing required key", key="store")
        store = self._store(store)
        kek = self._string(data, "kek", "kek")
        if kek is not None and not _KEK_RE.match(kek):
            raise self.fail("kek", "expected an https:// Key Vault key URL or a pkcs11: URI, "
                                   f"got {kek[:60]!r} (leave kek out for a local keyfile/passphrase)")
        options = self._str_list(data, "options", "options", _check_mount_option)
        return VolumeConfigFile(
            name=self.path.name.removesuffix(".toml"),
            path=self.path,
            store=store,
            mountpoint=self._path(data, "mountpoint", "mountpoint", absolute=True),
            keyfile=self._path(data, "keyfile", "keyfile"),
            passphrase_file=self._path(data, "passphrase_file", "passphrase_file"),
            smb_password_file=self._path(data, "smb_password_file", "smb_password_file"),
            azure_sas_file=self._path(data, "azure_sas_file", "azure_sas_file"),
            azure_account_key_file=self._path(data, "azure_account_key_file", "azure_account_key_file"),
            kek=kek,
            audit_log=self._path(data, "audit_log", "audit_log"),
            chunk_cache=self._size(data, "chunk_cache", "chunk_cache"),
            dirty_limit=self._size(data, "dirty_limit", "dirty_limit"),
            options=options,
            sync=self._sync(data.get("sync")),
            gateway=self._gateway(data.get("gateway")),
        )

    def _store(self, store: str) -> str:
        if "://" not in store:
            p = Path(store).expanduser()
            return str(p if p.is_absolute() else self.base / p)
        try:
            parts = urlsplit(store)
            password = parts.password
        except ValueError as exc:
            raise self.fail("store", f"malformed URL: {exc}") from None
        if password is not None:
            raise self.fail("store", "the URL contains a password; put it in smb_password_file "
                                     "or the smb-password systemd credential instead")
        if not parts.netloc:
            raise self.fail("store", f"URL {store!r} has no host")
        return store

    def _sync(self, raw: Any) -> SyncConfig | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.fail("sync", f"expected a table ([sync]), got {_toml_type(raw)}")
        self._unknown(raw, self.SYNC_KEYS, "sync.")
        source = self._path(raw, "source", "sync.source")
        if source is None:
            raise ConfigFileError(self.path, "missing required key in [sync]",
                                  line=self._line_of("sync"), key="sync.source")
        dest = self._string(raw, "path", "sync.path") or "/"
        if not dest.startswith("/"):
            raise self.fail("sync.path", f"must be a path inside the volume starting with '/', got {dest!r}")
        delete = self._typed(raw, "delete", "sync.delete", bool, "true or false")
        checksum = self._typed(raw, "checksum", "sync.checksum", bool, "true or false")
        return SyncConfig(
            source=source,
            path=dest,
            exclude=self._str_list(raw, "exclude", "sync.exclude",
                                   lambda s: None if s.strip() else "empty pattern"),
            delete=bool(delete),
            checksum=bool(checksum),
        )


    def _gateway(self, raw: Any) -> GatewayConfig | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.fail("gateway", f"expected a table ([gateway]), got {_toml_type(raw)}")
        self._unknown(raw, self.GATEWAY_KEYS, "gateway.")
        share = self._string(raw, "share", "gateway.share")
        if share is None:
            raise ConfigFileError(self.path, "missing required key in [gateway]",
                                  line=self._line_of("gateway"), key="gateway.share")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", share):
            raise self.fail("gateway.share", "letters, digits and _.- only, up to 64")
        return GatewayConfig(
            share=share,
            listen=self._string(raw, "listen", "gateway.listen"),
            hosts_allow=self._str_list(raw, "hosts_allow", "gateway.hosts_allow",
                                       lambda s: None if s.strip() and " " not in s
                                       else "one address or network per item"),
            force_user=self._string(raw, "force_user", "gateway.force_user"),
        )


def _check_mount_option(opt: str) -> str | None:
    """One mount option per list item, as mount(8) would get it after splitting on commas."""
    if not opt or opt != opt.strip():
        return "empty or padded with spaces"
    if "," in opt:
        return "one option per list item (no commas)"
    if any(c.isspace() for c in opt):
        return "contains whitespace"
    return None


def _toml_type(value: Any) -> str:
    """TOML's name for a value's type, so messages speak the file's language."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"
