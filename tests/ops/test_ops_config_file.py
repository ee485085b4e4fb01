"""The /etc/sealfs/NAME.toml loader: good files load; every bad file gets one precise line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sealfs.errors import ConfigError
from sealfs.fs.cli.config_file import (
    ConfigFileError,
    SecretFiles,
    SyncConfig,
    VolumeConfigFile,
    credential_file,
    load_config_file,
    parse_config_text,
    parse_size,
    resolve_config_path,
    secret_files,
)

FULL = """\
# vol1: the nightly backup share
store = "smb://backup@files.example.net/share/vol1"
mountpoint = "/mnt/vol1"
keyfile = "vol1.key"
passphrase_file = "/root/pass"
smb_password_file = "secrets/smb"
kek = "https://myvault.vault.azure.net/keys/sealfs-kek"
audit_log = "/var/log/sealfs/audit.jsonl"
chunk_cache = "256M"
dirty_limit = 67108864
options = ["allow_other", "ro"]

[sync]
source = "/srv/data"
path = "/backup"
exclude = ["*.tmp", ".cache/"]
delete = true
checksum = false
"""


def _error(text: str, tmp_path: Path) -> ConfigFileError:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigFileError) as info:
        load_config_file(f)
    err = info.value
    assert "\n" not in str(err)
    assert str(err).startswith(str(f))
    return err


# --- good files ---------------------------------------------------------------

def test_full_file_by_name(config_dir: Path) -> None:
    (config_dir / "vol1.toml").write_text(FULL)
    cfg = load_config_file("vol1")
    assert isinstance(cfg, VolumeConfigFile)
    assert cfg.name == "vol1" and cfg.path == config_dir / "vol1.toml"
    assert cfg.store == "smb://backup@files.example.net/share/vol1"
    assert cfg.mountpoint == Path("/mnt/vol1")
    assert cfg.keyfile == config_dir / "vol1.key"          # relative to the file
    assert cfg.passphrase_file == Path("/root/pass")
    assert cfg.smb_password_file == config_dir / "secrets/smb"
    assert cfg.kek == "https://myvault.vault.azure.net/keys/sealfs-kek"
    assert cfg.audit_log == Path("/var/log/sealfs/audit.jsonl")
    assert cfg.chunk_cache == 256 << 20 and cfg.dirty_limit == 64 << 20
    assert cfg.options == ("allow_other", "ro")
    assert cfg.sync == SyncConfig(source=Path("/srv/data"), path="/backup",
                                  exclude=("*.tmp", ".cache/"), delete=True, checksum=False)


def test_minimal_file_and_defaults(tmp_path: Path) -> None:
    f = tmp_path / "v.toml"
    f.write_text('store = "store-dir"\n')
    cfg = load_config_file(str(f))
    assert cfg.store == str(tmp_path / "store-dir")
    assert cfg.mountpoint is None and cfg.keyfile is None and cfg.kek is None
    assert cfg.chunk_cache is None and cfg.options == () and cfg.sync is None


def test_sync_defaults(tmp_path: Path) -> None:
    f = tmp_path / "v.toml"
    f.write_text('store = "/s"\n[sync]\nsource = "/data"\n')
    assert load_config_file(f).sync == SyncConfig(source=Path("/data"))


def test_result_is_frozen(tmp_path: Path) -> None:
    f = tmp_path / "v.toml"
    f.write_text('store = "/s"\n')
    cfg = load_config_file(f)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.store = "/elsewhere"  # type: ignore[misc]


def test_lookup_rules(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_config_path("vol1") == config_dir / "vol1.toml"
    assert resolve_config_path("./vol1.toml") == Path("vol1.toml")
    assert resolve_config_path("other.toml") == Path("other.toml")
    assert resolve_config_path("/x/y.conf") == Path("/x/y.conf")
    monkeypatch.delenv("SEALFS_CONFIG_DIR")
    assert resolve_config_path("vol1") == Path("/etc/sealfs/vol1.toml")


# --- bad files ------------------------------------------------------------------

def test_missing_file(config_dir: Path) -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config_file("nope")
    assert str(info.value) == f"{config_dir / 'nope.toml'}: no such config file"
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 3


def test_invalid_name(config_dir: Path) -> None:
    with pytest.raises(ConfigFileError, match="invalid config name"):
        load_config_file("-rf")


def test_syntax_error_names_line(tmp_path: Path) -> None:
    err = _error('store = "/s"\nmountpoint = "/m"\nchunk_cache = 256M\n', tmp_path)
    assert err.line == 3 and err.column is not None
    assert f"bad.toml:3:{err.column}: TOML syntax error" in str(err)


def test_syntax_error_unterminated_string(tmp_path: Path) -> None:
    err = _error('store = "/s\n', tmp_path)
    assert err.line == 1 and "TOML syntax error" in str(err)


def test_unknown_key(tmp_path: Path) -> None:
    err = _error('store = "/s"\n\nmount_point = "/m"\n', tmp_path)
    assert err.key == "mount_point" and err.line == 3
    assert "bad.toml:3: mount_point: unknown key (allowed: store, mountpoint" in str(err)


def test_unknown_key_in_sync(tmp_path: Path) -> None:
    err = _error('store = "/s"\n[sync]\nsource = "/d"\nexcludes = []\n', tmp_path)
    assert err.key == "sync.excludes" and err.line == 4
    assert "bad.toml:4: sync.excludes: unknown key" in str(err)


def test_inline_secret_is_refused(tmp_path: Path) -> None:
    err = _error('store = "/s"\npassphrase = "hunter2"\n', tmp_path)
    assert err.key == "passphrase" and "secrets do not belong" in str(err)
    assert "hunter2" not in str(err)


def test_password_in_store_url_is_refused(tmp_path: Path) -> None:
    err = _error('store = "smb://u:hunter2@host/share"\n', tmp_path)
    assert err.key == "store" and err.line == 1 and "hunter2" not in str(err)


@pytest.mark.parametrize("line,key,expect", [
    ("mountpoint = 5", "mountpoint", "expected a string, got an integer"),
    ("mountpoint = \"relative/dir\"", "mountpoint", "must be an absolute path"),
    ("options = \"allow_other\"", "options", "expected a list of strings, got a string"),
    ("options = [\"allow_other,ro\"]", "options", "item 1 ('allow_other,ro'): one option per list item"),
    ("options = [1]", "options", "item 1: expected a string, got an integer"),
    ("kek = true", "kek", "expected a string, got a boolean"),
    ("kek = \"just-a-name\"", "kek", "expected an https:// Key Vault key URL or a pkcs11: URI"),
    ("kek = \"azure://v/keys/k\"", "kek", "expected an https:// Key Vault key URL"),
    ("chunk_cache = [1]", "chunk_cache", "expected a size"),
    ("keyfile = \"\"", "keyfile", "must not be empty"),
])
def test_wrong_type_top_level(tmp_path: Path, line: str, key: str, expect: str) -> None:
    err = _error(f'store = "/s"\n{line}\n', tmp_path)
    assert err.key == key and err.line == 2
    assert f"bad.toml:2: {key}: {expect}" in str(err)


@pytest.mark.parametrize("line,key,expect", [
    ("delete = \"yes\"", "sync.delete", "expected true or false, got a string"),
    ("checksum = 1", "sync.checksum", "expected true or false, got an integer"),
    ("exclude = \"*.tmp\"", "sync.exclude", "expected a list of strings"),
    ("path = \"backup\"", "sync.path", "starting with '/'"),
])
def test_wrong_type_in_sync(tmp_path: Path, line: str, key: str, expect: str) -> None:
    err = _error(f'store = "/s"\n[sync]\nsource = "/d"\n{line}\n', tmp_path)
    assert err.key == key and err.line == 4 and expect in str(err)


def test_sync_not_a_table(tmp_path: Path) -> None:
    err = _error('store = "/s"\nsync = "nightly"\n', tmp_path)
    assert err.key == "sync" and err.line == 2 and "expected a table" in str(err)


def test_sync_without_source(tmp_path: Path) -> None:
    err = _error('store = "/s"\n\n[sync]\npath = "/b"\n', tmp_path)
    assert err.key == "sync.source" and err.line == 3


def test_missing_store(tmp_path: Path) -> None:
    err = _error('mountpoint = "/m"\n', tmp_path)
    assert err.key == "store" and "missing required key" in str(err)


def test_bad_size(tmp_path: Path) -> None:
    err = _error('store = "/s"\ndirty_limit = "64Q"\n', tmp_path)
    assert err.key == "dirty_limit" and err.line == 2
    assert "bad.toml:2: dirty_limit: invalid size '64Q'" in str(err)


def test_pkcs11_kek(tmp_path: Path) -> None:
    f = tmp_path / "v.toml"
    f.write_text('store = "/s"\nkek = "pkcs11:token=hsm;object=sealfs-kek"\n')
    assert load_config_file(f).kek == "pkcs11:token=hsm;object=sealfs-kek"


def test_parse_config_text_directly() -> None:
    cfg = parse_config_text('store = "data"\n', "/etc/sealfs/x.toml")
    assert cfg.store == "/etc/sealfs/data" and cfg.name == "x"


# --- parse_size -------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("0", 0), ("4096", 4096), ("64K", 65536), ("64k", 65536), ("1M", 1 << 20),
    ("1m", 1 << 20), ("2G", 2 << 30), ("256M", 256 << 20), (" 8K ", 8192),
    ("64KiB", 65536), ("64kb", 65536), ("1GiB", 1 << 30), (4096, 4096),
])
def test_parse_size_ok(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "-1", "1.5M", "64Q", "64 K B", "1T", "0x10", "ten",
                                  "64KK", None, True, -5, 1.0])
def test_parse_size_bad(text: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)  # type: ignore[arg-type]
    assert "invalid size" in str(info.value)


# --- systemd credentials ------------------------------------------------------------

def test_credentials_win_over_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "v.toml"
    f.write_text('store = "/s"\nkeyfile = "/etc/sealfs/v.key"\npassphrase_file = "/p"\n'
                 'smb_password_file = "/smb"\n')
    cfg = load_config_file(f)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "keyfile").write_bytes(b"k" * 32)
    (creds / "smb-password").write_text("")          # empty: treated as absent
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = secret_files(cfg)
    assert s.keyfile == creds / "keyfile"
    assert s.passphrase_file == Path("/p") and s.smb_password_file == Path("/smb")
    assert credential_file("passphrase") is None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert secret_files(cfg).keyfile == Path("/etc/sealfs/v.key")
    assert secret_files(None) == SecretFiles(None, None, None)
