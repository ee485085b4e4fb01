"""Shared fixtures: isolated pin state, fresh stores and keyfiles, volumes on trio."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sealfs.backends.local import LocalBackend
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.servers.samba import SambaServer
from tests.stores import store_kit  # noqa: F401  (a fixture: every backend kind, tests/stores.py)


@pytest.fixture(autouse=True)
def xdist_serial(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Under pytest-xdist, a test marked `serial` runs while no other worker runs a test.

    The few tests so marked judge wall-clock time against a tight bound, or force a race
    with millisecond sleeps; a test busy in another worker (a mount, smbd, a benchmark)
    would make them fail or skip for reasons that are not theirs. A readers-writer lock
    shared by the workers: every test holds it shared, a `serial` test exclusively. A
    gate taken before either keeps a waiting `serial` test from being starved by the
    other worker's stream of shared holders. The lock is taken before the test's
    function-scoped fixtures are set up, so a mount made for the test is made inside it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        yield
        return
    exclusive = request.node.get_closest_marker("serial") is not None
    shared_dir = tmp_path_factory.getbasetemp().parent       # the run's, above each worker's own
    with open(shared_dir / "serial.gate", "a") as gate, open(shared_dir / "serial.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)
        yield                                   # both files close (and unlock) afterwards


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
        pytest.fail("smbd is not installed (apt-get install samba samba-vfs-modules smbclient tcpdump)")
    if os.geteuid() != 0:
        pytest.fail("the SMB tests run smbd, which needs root (run them in the CI container)")


AZFILES_SHARE = "vol"


@pytest.fixture(scope="session")
def azfiles_server(tmp_path_factory: pytest.TempPathFactory):
    """One Azure Files REST server per test session (tests/servers/azfiles.py), with a share."""
    from tests.servers.azfiles import AzureFilesServer
    server = AzureFilesServer(tmp_path_factory.mktemp("azfiles")).start()
    server.create_share(AZFILES_SHARE)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    """One real smbd per test session: loopback, SMB3 only, encryption required."""
    need_smbd()
    with SambaServer() as server:
        yield server


# --------------------------------------------------------------------------------------
# Helpers for the volume-core and CLI suites (tests/test_volume_*.py, tests/test_cli_*.py)
# --------------------------------------------------------------------------------------

SEALFS_CMD = [sys.executable, "-m", "sealfs.fs.cli"]


@dataclass
class CliResult:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_sealfs(*args: str | os.PathLike, env: dict[str, str] | None = None,
               input: bytes | None = None, timeout: float = 60) -> CliResult:
    """Run the `sealfs` CLI in a subprocess with no terminal on stdin (never prompts)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run([*SEALFS_CMD, *map(str, args)], input=input if input is not None else b"",
                          capture_output=True, env=full_env, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


@pytest.fixture
def sealfs_cli():
    """sealfs_cli(*args, env=None) -> CliResult; inherits the isolated SEALFS_STATE_DIR."""
    return run_sealfs


def tree_snapshot(root: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Every path below root -> (kind, bytes or None, permission bits): compares whole stores."""
    out: dict[str, tuple[str, bytes | None, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = ("dir", None, p.stat().st_mode & 0o7777)
        for name in filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = ("file", p.read_bytes(), p.stat().st_mode & 0o7777)
    return out


def backend_files(root: Path) -> list[Path]:
    return [Path(d, f) for d, _dirs, files in os.walk(root) for f in files]


def backend_names(root: Path) -> list[str]:
    return [name for _d, dirs, files in os.walk(root) for name in dirs + files]


_FUSE_FIXTURES = frozenset({"mounted", "mount_env"})
_SMB_FIXTURES = frozenset({"samba", "smb_store", "smb_backend"})
_AZFILES_FIXTURES = frozenset({"azfiles", "azfiles_server", "azfiles_store", "azfiles_backend"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by what they need, so `-m "not fuse and not smb"` is a real fast loop:
    a `pytestmark` in a conftest does nothing, and most tests declare no marker at all."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "gateway" in parts:      # a real mount served by a real smbd
            item.add_marker(pytest.mark.fuse)
            item.add_marker(pytest.mark.smb)
        if "fuse" in parts or fixtures & _FUSE_FIXTURES or hasattr(item.module, "Mount"):
            item.add_marker(pytest.mark.fuse)
        kinds = {v for v in params.values() if isinstance(v, str)}   # e.g. a backend_kind param
        if "smb" in parts or fixtures & _SMB_FIXTURES or "smb" in kinds:
            item.add_marker(pytest.mark.smb)
        if "azfiles" in parts or fixtures & _AZFILES_FIXTURES or "azfiles" in kinds:
            item.add_marker(pytest.mark.azfiles)
