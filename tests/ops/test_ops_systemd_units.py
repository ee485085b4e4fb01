"""The systemd units: valid for systemd, and shaped so the mount is visible to the host."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"

UNITS = ["sealfs@.service", "sealfs-sync@.service", "sealfs-sync@.timer", "sealfs-gateway@.service"]


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", f"--root={root}", *units],
        cwd=root / "etc/systemd/system", capture_output=True, text=True, timeout=60)


def _directives(unit: str) -> dict[str, list[str]]:
    """KEY -> values, ignoring comments and sections (enough for lint-style checks)."""
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD_DIR / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_all_units_present() -> None:
    assert sorted(p.name for p in SYSTEMD_DIR.glob("sealfs*@.*")) == sorted(UNITS)
    assert (SYSTEMD_DIR / "README.md").is_file()


@pytest.mark.parametrize("unit", UNITS + ["sealfs@vol1.service", "sealfs-sync@vol1.timer",
                                  "sealfs-gateway@vol1.service"])
def test_systemd_analyze_verify_is_clean(systemd_root: Path, unit: str) -> None:
    res = _verify(systemd_root, unit)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # warnings ("Unknown key ...") count too


def test_verify_harness_catches_mistakes(systemd_root: Path, tmp_path: Path) -> None:
    """Guards the test above against passing vacuously."""
    units = systemd_root / "etc/systemd/system"
    bad = units / "sealfs-broken@.service"
    bad.write_text((SYSTEMD_DIR / "sealfs@.service").read_text()
                   .replace("Type=notify", "Type=notifyy") + "\n[Service]\nNoSuchKey=1\n")
    try:
        res = _verify(systemd_root, bad.name)
    finally:
        bad.unlink()
    assert "notifyy" in res.stderr and "NoSuchKey" in res.stderr


# Settings that give the service its own mount namespace (systemd.exec(5),
# PrivateMounts=): the FUSE mount would then be invisible to the host.
NAMESPACING = {
    "PrivateMounts", "PrivateTmp", "PrivateDevices", "ProtectSystem", "ProtectHome",
    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "MountFlags", "RootDirectory", "RootImage", "DynamicUser", "PrivateNetwork",
    "NetworkNamespacePath", "PrivateUsers", "MountAPIVFS", "LogNamespace",
}


@pytest.mark.parametrize("unit", ["sealfs@.service", "sealfs-gateway@.service"])
def test_mount_unit_has_no_mount_namespace(unit: str) -> None:
    d = _directives(unit)
    assert NAMESPACING.isdisjoint(d), NAMESPACING & set(d)


def test_gateway_unit_contract() -> None:
    """SIGTERM reaches the gateway alone (it orders smbd before the unmount); secrets and
    hardening as for the mount."""
    d = _directives("sealfs-gateway@.service")
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == ["/usr/local/bin/sealfs gateway --config %i"]
    assert d["KillMode"] == ["mixed"]
    creds = {v.split(":", 1)[0] for v in d["LoadCredential"]}
    assert creds == {"keyfile", "passphrase", "smb-password"}
    assert d["DeviceAllow"] == ["/dev/fuse rw"] and d["DevicePolicy"] == ["closed"]
    assert d["NoNewPrivileges"] == ["yes"] and d["LimitCORE"] == ["0"]
    assert "RestrictSUIDSGID" not in d and "MemoryDenyWriteExecute" not in d


def test_mount_unit_contract() -> None:
    d = _directives("sealfs@.service")
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == ["/usr/local/bin/sealfs mount --config %i"]
    assert d["ExecStop"] == ["/usr/local/bin/sealfs umount --config %i"]
    creds = {v.split(":", 1)[0] for v in d["LoadCredential"]}
    assert creds == {"keyfile", "passphrase", "smb-password"}
    assert d["DeviceAllow"] == ["/dev/fuse rw"] and d["DevicePolicy"] == ["closed"]
    assert d["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]
    assert d["NoNewPrivileges"] == ["yes"] and d["LimitCORE"] == ["0"]
    assert "MemoryDenyWriteExecute" not in d


@pytest.mark.parametrize("unit", ["sealfs@.service", "sealfs-sync@.service", "sealfs-gateway@.service"])
def test_no_secrets_in_units(unit: str) -> None:
    d = _directives(unit)
    assert "SetCredential" not in d and "Environment" in d
    for env in d["Environment"]:
        assert not re.search(r"(?i)pass|secret|key|token", env), env
    for cred in d["LoadCredential"]:
        assert ":" in cred and not cred.split(":", 1)[1].startswith("$")


def test_sync_units() -> None:
    s = _directives("sealfs-sync@.service")
    assert s["Type"] == ["oneshot"]
    assert s["ExecStart"] == ["/usr/local/bin/sealfs sync --config %i"]
    assert s["ProtectSystem"] == ["strict"] and s["LimitCORE"] == ["0"]
    t = _directives("sealfs-sync@.timer")
    assert t["Persistent"] == ["true"] and t["RandomizedDelaySec"] and t["OnCalendar"]
    assert t["Unit"] == ["sealfs-sync@%i.service"] and t["WantedBy"] == ["timers.target"]


@pytest.mark.parametrize("unit,limit", [("sealfs@vol1.service", 5.0),
                                        ("sealfs-sync@vol1.service", 3.0),
                                        ("sealfs-gateway@vol1.service", 6.5)])
def test_security_exposure(systemd_root: Path, unit: str, limit: float) -> None:
    """systemd's own hardening score, so a regression in the unit shows up here."""
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={systemd_root}",
         "--no-pager", unit],
        cwd=systemd_root / "etc/systemd/system", capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= limit, res.stdout
