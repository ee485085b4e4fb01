"""Shared fixtures: isolated pin state, fresh stores and keyfiles, volumes on trio."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from sealfs.backends.local import LocalBackend
from sealfs.crypto.kms import KeySecrets, provider_for_init
from sealfs.fs.pins import PinStore
from sealfs.fs.volume import Volume
from tests.servers.samba import SambaServer


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own pin store and no key material from the environment."""
    state = tmp_path / "state"
    monkeypatch.setenv("SEALFS_STATE_DIR", str(state))
    for var in ("SEALFS_KEYFILE", "SEALFS_PASSPHRASE", "CREDENTIALS_DIRECTORY", "SEALFS_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    return state


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "volume.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def make_volume(tmp_path: Path, keyfile: Path):
    """make_volume(chunk_size) -> an initialized store path; open_volume(path) -> Volume."""
    counter = iter(range(1000))

    async def make(chunk_size: int = 64 * 1024) -> Path:
        path = tmp_path / f"store{next(counter)}"
        path.mkdir()
        secrets = KeySecrets(keyfile=keyfile)
        await Volume.init(LocalBackend(path), provider_for_init(None, secrets),
                          chunk_size=chunk_size, pins=PinStore())
        return path
    return make


@pytest.fixture
def open_volume(keyfile: Path):
    async def open_(path: Path, key: Path | None = None) -> Volume:
        return await Volume.load(LocalBackend(path), KeySecrets(keyfile=key or keyfile),
                                 pins=PinStore())
    return open_


def need_smbd() -> None:
    if shutil.which("smbd") is None and not os.path.exists("/usr/sbin/smbd"):
        pytest.fail("smbd is not installed (apt-get install samba smbclient tcpdump)")
    if os.geteuid() != 0:
        pytest.fail("the SMB tests run smbd, which needs root (run them in the CI container)")


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    """One real smbd per test session: loopback, SMB3 only, encryption required."""
    need_smbd()
    with SambaServer() as server:
        yield server
