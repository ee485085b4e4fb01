"""smbd's private configuration for one gateway share, and the directories it names.

Everything smbd keeps (passdb, state, caches, pid, logs) lives under the gateway's own
state directory, and its locks in a directory of the gateway's run directory, so the
gateway neither reads nor changes the host's /etc/samba and two gateways on one host never
share a lock or a passdb.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 445
# Preference order: the first both sides support wins (SMB 3.1.1). SMB 3.0/3.0.2 clients
# can only do AES-128-CCM, which is still authenticated encryption.
ENCRYPTION_ALGORITHMS = "AES-256-GCM AES-128-GCM AES-256-CCM AES-128-CCM"
_SHARE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.:/_-]+$")


def check_share_name(name: str) -> str:
    """A share name is also a directory and a group name: letters, digits, _.- only."""
    if not _SHARE_RE.match(name):
        raise ValueError(f"invalid share name {name!r} (letters, digits and _.- only, up to 64)")
    return name


def parse_listen(text: str | None) -> tuple[str | None, int]:
    """ADDR[:PORT], [V6ADDR][:PORT] or :PORT -> (address or None for all, port)."""
    if not text:
        return None, DEFAULT_PORT
    addr, port = text, DEFAULT_PORT
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        if rest:
            port = _port(rest.removeprefix(":"), text)
    elif text.count(":") == 1:
        addr, _, raw = text.partition(":")
        port = _port(raw, text)
    if addr and not _HOST_RE.match(addr):
        raise ValueError(f"--listen {text!r}: not an address")
    return addr or None, port


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"--listen {text!r}: bad port")
    return int(raw)


@dataclass(frozen=True)
class GatewaySettings:
    """What the generated smb.conf depends on."""

    share: str
    mountpoint: Path
    state_dir: Path
    address: str | None = None
    port: int = DEFAULT_PORT
    hosts_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    force_user: str | None = None
    group: str | None = None          # every SMB user's Unix group (users mode)
    log_level: int = 1
    extra_global: dict[str, str] = field(default_factory=dict)

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "smb.conf"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "log" / "smbd.log"

    @property
    def lock_dir(self) -> Path:
        """smbd's lock directory: beside the mount point, where smbd serving a client (as
        that user) can reach it. The leading dot keeps it apart from every share name."""
        return self.mountpoint.parent / ".smbd-locks" / self.share


def state_dir_for(share: str) -> Path:
    """$SEALFS_STATE_DIR/gateway/SHARE, else /var/lib/sealfs/gateway/SHARE."""
    base = os.environ.get("SEALFS_STATE_DIR") or os.environ.get("STATE_DIRECTORY") or "/var/lib/sealfs"
    return Path(base.split(":")[0]) / "gateway" / check_share_name(share)


def mountpoint_for(share: str) -> Path:
    """$SEALFS_GATEWAY_RUN_DIR/SHARE, else /run/sealfs-gateway/SHARE: private to the gateway
    (no one else mounts or unmounts there), traversable so smbd can enter it as the user."""
    base = os.environ.get("SEALFS_GATEWAY_RUN_DIR") or "/run/sealfs-gateway"
    return Path(base) / check_share_name(share)


def group_name(share: str) -> str:
    """The Unix group every SMB user of the share belongs to (at most 32 characters)."""
    return f"sealfs-{share}"[:32]


def smb_gid(settings: GatewaySettings) -> int | None:
    """The group an smbd process holds while it works for a client: the share's group (its
    `force group`), or the forced user's own group; None while that does not exist yet."""
    try:
        if settings.force_user:
            return pwd.getpwnam(settings.force_user).pw_gid
        return grp.getgrnam(settings.group).gr_gid if settings.group else None
    except KeyError:
        return None


def prepare_dirs(settings: GatewaySettings) -> None:
    """smbd's private directories: root only (the passdb holds NT hashes); and its lock
    directory, which the share's group may enter but not list.

    smbd decides whether the process holding an open, an oplock or a byte-range lock is
    still alive by looking for that process's file in msg.lock/ of the lock directory, and
    it does so as the client's user. A lock directory that user cannot enter makes every
    other connection's process look dead, and its share modes and oplocks are then thrown
    away as stale: a second client gets in past an exclusive open. Samba's own lock
    directory (/run/samba) is open to all; this one only to the share's group, as
    locking.tdb holds the names of open files."""
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    for sub in ("private", "state", "cache", "pid", "log", "ncalrpc"):
        (state_dir / sub).mkdir(exist_ok=True, mode=0o700)
    locks = settings.lock_dir
    for traversable in (locks.parent.parent, locks.parent):   # the run directory, .smbd-locks
        traversable.mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chmod(traversable, 0o711)
    locks.mkdir(exist_ok=True, mode=0o700)
    gid = smb_gid(settings)
    os.chown(locks, 0, 0 if gid is None else gid)
    os.chmod(locks, 0o700 if gid is None else 0o710)


def global_section(settings: GatewaySettings) -> dict[str, str]:
    """[global]: one standalone server, SMB 3 with encryption and signing required, no guest."""
    b = settings.state_dir
    glob = {
        "server role": "standalone server",
        "workgroup": "WORKGROUP",
        "server string": f"sealfs gateway {settings.share}",
        "smb ports": str(settings.port),
        "disable netbios": "yes",
        "passdb backend": f"tdbsam:{b / 'private' / 'passdb.tdb'}",
        "private dir": str(b / "private"),
        "lock directory": str(settings.lock_dir),
        "state directory": str(b / "state"),
        "cache directory": str(b / "cache"),
        "pid directory": str(b / "pid"),
        "ncalrpc dir": str(b / "ncalrpc"),
        "log file": str(settings.log_file),
        "max log size": "10000",
        "logging": "file",
        # SMB 3.0 and up, every session encrypted and signed.
        "server min protocol": "SMB3_00",
        "server max protocol": "SMB3",
        "server smb encrypt": "required",
        "server smb3 encryption algorithms": ENCRYPTION_ALGORITHMS,
        "server signing": "mandatory",
        # Users from our passdb only: no guest, no anonymous listing, NTLMv2 only.
        "map to guest": "Never",
        "restrict anonymous": "2",
        "ntlm auth": "ntlmv2-only",
        "lanman auth": "no",
        "hosts allow": " ".join(settings.hosts_allow),
        "hosts deny": "ALL",
        # Nothing but the one share: no printers, no usershares, no home directories.
        "load printers": "no",
        "printing": "bsd",
        "printcap name": "/dev/null",
        "disable spoolss": "yes",
        "usershare max shares": "0",
        "unix extensions": "no",
        "include system krb5 conf": "no",
    }
    if settings.address:
        glob["interfaces"] = settings.address
        glob["bind interfaces only"] = "yes"
    glob.update(settings.extra_global)
    return glob


def share_section(settings: GatewaySettings) -> dict[str, str]:
    """The one share: the sealfs mount, with what a FUSE-backed share needs."""
    mp = str(settings.mountpoint)
    share = {
        "path": mp,
        "read only": "no",
        "browseable": "yes",
        "guest ok": "no",
        "smb encrypt": "required",
        # A tree connect runs this as root first: when the volume is not mounted there, the
        # connect fails instead of serving (or filling) the bare directory underneath.
        "root preexec": f"{shutil.which('mountpoint') or '/usr/bin/mountpoint'} -q {mp}",
        "root preexec close": "yes",
        # FUSE has no leases or share modes for the kernel to enforce: smbd keeps them.
        "kernel oplocks": "no",
        "kernel share modes": "no",
        "posix locking": "no",
        # DOS attributes and NT ACLs as xattrs, which sealfs seals with the inode.
        "vfs objects": "acl_xattr",
        "store dos attributes": "yes",
        "ea support": "yes",
        "map acl inherit": "yes",
        "acl_xattr:ignore system acls": "no",
        "case sensitive": "no",
        "preserve case": "yes",
        "short preserve case": "yes",
        # A local user of the mount could plant a link: smbd follows none.
        "follow symlinks": "no",
        "wide links": "no",
    }
    if settings.force_user:
        share["force user"] = settings.force_user
        share["create mask"] = "0600"
        share["directory mask"] = "0700"
    elif settings.group:
        share["valid users"] = f"@{settings.group}"
        share["force group"] = settings.group
        share["create mask"] = "0660"
        share["directory mask"] = "2770"
    return share


def render(settings: GatewaySettings) -> str:
    lines = ["# Generated by `sealfs gateway`: rewritten on every start, do not edit.", "[global]"]
    lines += [f"    {k} = {v}" for k, v in global_section(settings).items()]
    lines += ["", f"[{settings.share}]"]
    lines += [f"    {k} = {v}" for k, v in share_section(settings).items()]
    return "\n".join(lines) + "\n"


def write_conf(settings: GatewaySettings) -> Path:
    """Write smb.conf (0600, atomically) and return its path."""
    prepare_dirs(settings)
    tmp = settings.conf_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render(settings))
    os.replace(tmp, settings.conf_path)
    return settings.conf_path
