"""The [gateway] table and the generated smb.conf, without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealfs.fs.cli.config_file import ConfigFileError, parse_config_text
from sealfs.fs.gateway.smbconf import GatewaySettings, parse_listen, render


def test_the_gateway_table(tmp_path: Path) -> None:
    cfg = parse_config_text('store = "/srv/s"\n[gateway]\nshare = "docs"\nlisten = "10.0.0.5:4450"\n'
                            'hosts_allow = ["10.0.0.0/24"]\nforce_user = "files"\n', tmp_path / "v.toml")
    assert cfg.gateway is not None
    assert (cfg.gateway.share, cfg.gateway.listen, cfg.gateway.hosts_allow, cfg.gateway.force_user) \
        == ("docs", "10.0.0.5:4450", ("10.0.0.0/24",), "files")
    with pytest.raises(ConfigFileError, match="gateway.password"):
        parse_config_text('store = "/s"\n[gateway]\nshare = "d"\npassword = "x"\n', tmp_path / "v.toml")
    with pytest.raises(ConfigFileError, match="gateway.share"):
        parse_config_text('store = "/s"\n[gateway]\nshare = "a b"\n', tmp_path / "v.toml")


def test_listen_and_the_rendered_config(tmp_path: Path) -> None:
    assert parse_listen(None) == (None, 445)
    assert parse_listen("192.0.2.1") == ("192.0.2.1", 445)
    assert parse_listen("192.0.2.1:4450") == ("192.0.2.1", 4450)
    assert parse_listen("[::1]:4450") == ("::1", 4450)
    with pytest.raises(ValueError):
        parse_listen("host:99999")
    conf = render(GatewaySettings(share="docs", mountpoint=tmp_path / "mnt", state_dir=tmp_path / "st",
                                  address="192.0.2.1", port=4450, force_user="files"))
    assert "interfaces = 192.0.2.1" in conf and "smb ports = 4450" in conf
    assert "force user = files" in conf and "root preexec = " in conf
    assert conf.count("[docs]") == 1 and "guest ok = no" in conf
