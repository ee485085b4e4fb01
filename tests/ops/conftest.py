"""Fixtures for the operations tests (systemd units, config files, helpers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private /etc/sealfs for bare-NAME lookups."""
    d = tmp_path / "etc-sealfs"
    d.mkdir()
    monkeypatch.setenv("SEALFS_CONFIG_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal OS tree for `systemd-analyze verify --root`.

    No systemd runs in the test container, and verify insists that ExecStart
    binaries exist: the tree gets the distribution's unit files (for
    sysinit.target and friends), a stub /usr/local/bin/sealfs and our units.
    """
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze not found: install systemd (apt-get install systemd)")
    root = tmp_path_factory.mktemp("sysroot")
    for cand in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if cand.is_dir():
            shutil.copytree(cand, root / "usr/lib/systemd/system", symlinks=True)
            break
    else:
        pytest.fail("no distribution unit directory (/usr/lib/systemd/system) to verify against")
    stub = root / "usr/local/bin/sealfs"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in SYSTEMD_DIR.glob("sealfs*@.*"):
        shutil.copy2(unit, units / unit.name)
    return root
