"""Fixtures that mount real FUSE filesystems and always unmount them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mounting import Mount, init_store

pytestmark = pytest.mark.fuse

HEAVY_REASON = "workload run on local and smb; azfiles runs every POSIX rule"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "heavy: a workload or stress test of sealfs's own logic more than of "
                                       "the backend: it runs on local and smb, not on azfiles")


def pytest_collection_modifyitems(config, items) -> None:
    """Heavy tests skip on azfiles (before any fixture starts): every request there is a
    round trip of its own, and the CI budget cannot pay for them on every backend."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend_kind") == "azfiles" and item.get_closest_marker("heavy") is not None:
            item.add_marker(pytest.mark.skip(reason=HEAVY_REASON))


@pytest.fixture
def mount_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["SEALFS_STATE_DIR"] = str(tmp_path / "state")
    env["SEALFS_RUN_DIR"] = str(tmp_path / "run")
    for var in ("SEALFS_KEYFILE", "SEALFS_PASSPHRASE", "CREDENTIALS_DIRECTORY"):
        env.pop(var, None)
    return env


@pytest.fixture(params=["64K"])
def chunk_size(request) -> str:
    return request.param


@pytest.fixture(params=["local", "smb", "azfiles"])
def backend_kind(request) -> str:
    return request.param


@dataclass
class AzureFilesProcess:
    """The Azure Files test server (tests/servers/azfiles.py) running in a child process."""

    account_url: str
    account_key: str
    ca_path: str
    share_root: Path            # the share's directory: the server keeps its files there

    def new_store(self) -> tuple[str, Path]:
        """A store in a fresh directory of the share (`sealfs init` creates it): its URL,
        and the directory that will hold its ciphertext."""
        from tests.conftest import AZFILES_SHARE
        name = f"t{uuid.uuid4().hex[:12]}"
        return f"{self.account_url}/{AZFILES_SHARE}/{name}", self.share_root / name


@pytest.fixture(scope="session")
def azfiles_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureFilesProcess]:
    """Out of the test process: a test that flushes an mmap of a mounted file holds the
    GIL while the mount's writes wait on the server (tests/servers/azfiles.py main)."""
    from tests.conftest import AZFILES_SHARE
    workdir = tmp_path_factory.mktemp("azfiles-process")
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.azfiles", str(workdir), AZFILES_SHARE],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        info = json.loads(proc.stdout.readline() or "null")
        assert info, f"the Azure Files test server did not start (exit {proc.poll()})"
        yield AzureFilesProcess(f"https://{info['host']}:{info['port']}", info["account_key"],
                                info["ca_path"], Path(info["share_root"]))
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
def mounted(request, tmp_path: Path, keyfile: Path, mount_env: dict, chunk_size: str,
            backend_kind: str):
    """A live sealfs mount, on the local backend and on encrypted SMB to a real smbd.

    Yields the Mount: .mountpoint is the plaintext view, .store_dir the directory that
    holds the ciphertext (the local store, or the store's directory on the SMB share or in
    the Azure Files test server's share).
    """
    if backend_kind == "smb":
        from tests.servers.samba import new_store
        smb = new_store(request.getfixturevalue("samba"))
        store, store_dir = smb.url, smb.local
        mount_env["SEALFS_SMB_PASSWORD"] = smb.server.password
    elif backend_kind == "azfiles":
        server = request.getfixturevalue("azfiles_process")
        store, store_dir = server.new_store()
        mount_env["SEALFS_AZURE_ACCOUNT_KEY"] = server.account_key
        mount_env["REQUESTS_CA_BUNDLE"] = server.ca_path
    else:
        store = store_dir = tmp_path / "store"
    _skip_unless_able(request, str(store), store_dir)
    init_store(store, keyfile, chunk_size, env=mount_env)
    mount = Mount(store, tmp_path / "mnt", keyfile, env=mount_env)
    mount.store_dir = Path(store_dir) if store_dir is not None else None
    mount.start()
    try:
        yield mount
    finally:
        mount.close()


def _skip_unless_able(request, store: str, store_dir) -> None:
    """Tests marked hard_links skip where the backend declares none (Azure Files over REST,
    or over SMB); tests marked store_dir skip where no local directory holds the ciphertext."""
    from sealfs.backends.registry import BackendOptions, open_backend
    if (request.node.get_closest_marker("hard_links") is not None
            and not open_backend(store, BackendOptions()).capabilities.hard_links):
        pytest.skip("the backend has no hard links (Capabilities.hard_links)")
    if request.node.get_closest_marker("store_dir") is not None and store_dir is None:
        pytest.skip("no local directory holds this store's ciphertext")
