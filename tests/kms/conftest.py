"""Fixtures for KMS tests: a protocol-level Key Vault server and real SoftHSM2 tokens.

Fixture names (for other test suites):
  keyvault_server  session: a running KeyVaultServer (tests/servers/keyvault.py)
  keyvault         function: the same server with faults/forbidden/delay reset, and the
                   environment pointed at it (REQUESTS_CA_BUNDLE, IDENTITY_ENDPOINT/HEADER)
  azure_secrets    KeySecrets with short network bounds for fast failure tests
  kv_key_uri       factory: kv_key_uri(kind="rsa"|"oct", **attrs) -> new key's URL
  softhsm          session: SoftHSM2 tokens made by softhsm2-util/pkcs11-tool in a temp dir
  audit_path       a temp audit log path, also exported as SEALFS_AUDIT_LOG
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root: tests.servers.*

from sealfs.crypto.keys.kms import KeySecrets
from tests.servers.keyvault import KeyVaultServer, ensure_hosts

VAULT_HOSTS = ["kv.example.test", "hsm.example.test", "example.test"]
SOFTHSM_MODULES = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"]


@pytest.fixture(scope="session")
def keyvault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultServer]:
    ensure_hosts(VAULT_HOSTS)
    server = KeyVaultServer(tmp_path_factory.mktemp("keyvault")).start()
    yield server
    server.stop()


def point_env_at(server: KeyVaultServer, mp: pytest.MonkeyPatch) -> None:
    """Environment a real DefaultAzureCredential + KeyClient needs to use the test server."""
    for var in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "MSI_ENDPOINT", "MSI_SECRET",
                "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT"):
        mp.delenv(var, raising=False)
    mp.setenv("REQUESTS_CA_BUNDLE", str(server.ca_path))
    mp.setenv("IDENTITY_ENDPOINT", server.identity_endpoint)
    mp.setenv("IDENTITY_HEADER", server.identity_header)


@pytest.fixture
def keyvault(keyvault_server: KeyVaultServer, monkeypatch: pytest.MonkeyPatch) -> KeyVaultServer:
    s = keyvault_server
    with s._lock:
        s.faults.clear()
        s.forbidden.clear()
        s.delay = 0.0
        s.calls.clear()
        s.request_ids.clear()
    point_env_at(s, monkeypatch)
    return s


@pytest.fixture
def azure_secrets() -> KeySecrets:
    return KeySecrets(options={"azure_retry_total": 2, "azure_backoff_factor": 0.1, "azure_backoff_max": 0.5,
                               "azure_connection_timeout": 1.0, "azure_read_timeout": 2.0,
                               "azure_total_timeout": 15.0, "azure_max_retry_after": 5.0})


@pytest.fixture
def kv_key_uri(keyvault: KeyVaultServer) -> Callable[..., str]:
    def make(kind: str = "rsa", **attrs: object) -> str:
        name = f"{kind}-{uuid.uuid4().hex[:10]}"
        if kind == "rsa":
            keyvault.add_rsa_key(name, **attrs)  # type: ignore[arg-type]
        else:
            keyvault.add_oct_key(name, **attrs)  # type: ignore[arg-type]
        return f"{keyvault.url}/keys/{name}"
    return make


@pytest.fixture
def audit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SEALFS_AUDIT_LOG", str(path))
    return path


# -- SoftHSM2 ------------------------------------------------------------------------------

@dataclass
class SoftHsm:
    conf: Path
    module: str
    token: str
    pin: str
    pin_file: Path
    wrong_pin_file: Path

    def uri(self, obj: str, pin_file: Path | None = None, extra: str = "") -> str:
        return (f"pkcs11:token={self.token};object={obj}{extra}?module-path={self.module}"
                f"&pin-source=file:{pin_file or self.pin_file}")


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.strip()[:300]}")


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """One token with: aes-kek (AES-256, sensitive, non-extractable), rsa-kek (RSA-2048 pair),
    weak-aes (extractable). Tokens exist before the PKCS#11 library is first loaded, because
    SoftHSM reads its token directory at C_Initialize."""
    module = next((m for m in SOFTHSM_MODULES if os.path.exists(m)), None)
    if module is None:
        pytest.fail("softhsm2 is not installed (apt-get install softhsm2 opensc)")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin, so_pin = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    env = dict(os.environ, SOFTHSM2_CONF=str(conf), TEST_PIN=pin)
    token = "sealfs-test"
    # softhsm2-util has no PIN-from-file option; this token and PIN exist only for this test run.
    _run(["softhsm2-util", "--init-token", "--free", "--label", token, "--so-pin", so_pin, "--pin", pin], env)
    base = ["pkcs11-tool", "--module", module, "--token-label", token, "--login", "--pin", "env:TEST_PIN"]
    _run(base + ["--keygen", "--key-type", "AES:32", "--label", "aes-kek", "--id", "01", "--usage-wrap",
                 "--sensitive"], env)
    _run(base + ["--keypairgen", "--key-type", "rsa:2048", "--label", "rsa-kek", "--id", "02", "--usage-wrap"],
         env)
    _run(base + ["--keygen", "--key-type", "AES:32", "--label", "weak-aes", "--id", "03", "--usage-wrap",
                 "--extractable"], env)
    pin_file = root / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    wrong = root / "wrong-pin"
    wrong.write_text("00000000\n")
    wrong.chmod(0o600)
    return SoftHsm(conf, module, token, pin, pin_file, wrong)
