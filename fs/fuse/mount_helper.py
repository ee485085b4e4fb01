"""mount(8) helper: lets fstab and `mount -t fuse.sealfs` mount a sealfs volume.

    # /etc/fstab
    smb://files.example.net/share/vol1  /mnt/vol1  fuse.sealfs  defaults,_netdev,config=vol1  0 0

mount(8) runs `/sbin/mount.fuse.sealfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`
(install: `ln -s /usr/local/bin/mount.sealfs /sbin/mount.fuse.sealfs`). This
helper turns that into `sealfs mount SOURCE MOUNTPOINT --daemon ...` and execs
it: sealfs options become CLI flags, options that only mean something to
mount(8)/systemd are dropped, the rest go to FUSE as `-o`.

Secrets never reach argv (argv is world-readable in /proc): only *paths* of
secret files are accepted; `passphrase=...` and friends are refused.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from ...errors import UsageError

__all__ = ["MountHelperError", "build_mount_argv", "find_sealfs", "main", "parse_helper_args",
           "split_options"]

PROG = "mount.fuse.sealfs"

# option name -> CLI flag; the value is a name or a file path, never a secret.
SEALFS_OPTIONS: dict[str, str] = {
    "config": "--config",
    "keyfile": "--keyfile",
    "passphrase_file": "--passphrase-file",
    "smb_password_file": "--smb-password-file",
    "azure_sas_file": "--azure-sas-file",
    "azure_account_key_file": "--azure-account-key-file",
}
# Options whose value would be a secret: refused outright, even though mount(8)
# already showed them in its own argv, so fstab lines never hold a secret.
SECRET_OPTIONS = frozenset({"passphrase", "password", "pass", "smb_password", "key", "secret"})
# Options meant for mount(8), fstab tooling or systemd-fstab-generator, not FUSE.
DROPPED_OPTIONS = frozenset({"defaults", "auto", "noauto", "_netdev", "nofail", "user", "nouser",
                             "users", "owner", "group", "loop"})
DROPPED_PREFIXES = ("x-", "comment=", "helper=", "uhelper=")


class MountHelperError(UsageError):
    """The mount request cannot be turned into a safe sealfs command line."""


def split_options(text: str) -> list[str]:
    """Split a mount -o string on commas, keeping commas inside "double quotes" (libmount quotes)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [o.strip() for o in out if o.strip()]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def build_mount_argv(source: str, mountpoint: str, options: str | Iterable[str],
                     *, program: str = "sealfs") -> list[str]:
    """The `sealfs mount ... --daemon` argv for one mount request (pure; no secrets in it).

    `options` is the -o string from mount(8) or a list of single options.
    """
    opts = split_options(options) if isinstance(options, str) else [
        o for item in options for o in split_options(item)]
    flags: list[str] = []
    passthrough: list[str] = []
    seen: dict[str, str] = {}
    for opt in opts:
        name, eq, value = opt.partition("=")
        key = name.strip().replace("-", "_")
        if key in SECRET_OPTIONS:
            raise MountHelperError(
                f"option '{name}=' would put a secret on the command line; use keyfile=PATH, "
                "passphrase_file=PATH or smb_password_file=PATH, or the config file")
        if key in SEALFS_OPTIONS:
            value = _unquote(value)
            if not eq or not value:
                raise MountHelperError(f"option '{name}' needs a value ({name}=...)")
            if key in seen and seen[key] != value:
                raise MountHelperError(f"option '{name}' given twice with different values")
            if key not in seen:
                seen[key] = value
                flags += [SEALFS_OPTIONS[key], value]
            continue
        if opt in DROPPED_OPTIONS or opt.startswith(DROPPED_PREFIXES):
            continue
        if opt not in passthrough:
            passthrough.append(opt)
    argv = [program, "mount", source, mountpoint, "--daemon", *flags]
    if passthrough:
        argv += ["-o", ",".join(passthrough)]
    return argv


def parse_helper_args(argv: Sequence[str]) -> tuple[str, str, list[str], set[str]]:
    """Parse mount(8)'s helper calling convention -> (source, mountpoint, options, flags).

    Accepts `-o OPTS`/`-oOPTS` (repeatable), `-t TYPE`, and the flags -f (fake),
    -n (no mtab), -s (sloppy), -v (verbose), also combined ("-nv").
    """
    positional: list[str] = []
    options: list[str] = []
    flags: set[str] = set()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += args[i + 1:]
            break
        if arg.startswith("-") and len(arg) > 1:
            letters = arg[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                if letter in "ot":
                    value = letters
                    if not value:
                        i += 1
                        if i >= len(args):
                            raise MountHelperError(f"-{letter} needs an argument")
                        value = args[i]
                    if letter == "o":
                        options.append(value)
                    elif value not in ("fuse.sealfs", "sealfs"):
                        raise MountHelperError(f"file system type {value!r} is not fuse.sealfs")
                    letters = ""
                elif letter in "fnsv":
                    flags.add(letter)
                elif letter == "N":
                    raise MountHelperError("mounting into another namespace (-N) is not supported")
                else:
                    raise MountHelperError(f"unknown option -{letter}")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise MountHelperError(
            f"usage: {PROG} SOURCE MOUNTPOINT [-o OPTIONS]  (got {len(positional)} arguments)")
    return positional[0], positional[1], options, flags


def find_sealfs() -> str:
    """Locate the `sealfs` executable: mount(8) runs helpers with a minimal PATH.

    Order: $SEALFS_BIN, next to this helper (symlinks resolved), next to the Python
    running it (a venv), PATH, /usr/local/bin/sealfs.
    """
    env = os.environ.get("SEALFS_BIN")
    if env:
        return env
    candidates = []
    if sys.argv and "/" in sys.argv[0]:  # never a bare name: that would search the cwd
        candidates.append(Path(sys.argv[0]).resolve().parent / "sealfs")
    candidates.append(Path(sys.executable).parent / "sealfs")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("sealfs") or "/usr/local/bin/sealfs"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of mount.sealfs / mount.fuse.sealfs; execs sealfs, returns only on error."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        source, mountpoint, options, flags = parse_helper_args(args)
        command = build_mount_argv(source, mountpoint, options, program=find_sealfs())
    except MountHelperError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1  # mount(8): incorrect invocation
    if "v" in flags or "f" in flags:
        print(f"{PROG}: {' '.join(command)}", file=sys.stderr)
    if "f" in flags:
        return 0  # fake: mount(8) -f asks for everything but the mount itself
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(command[0], command)
    except OSError as exc:
        print(f"{PROG}: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 32  # mount(8): mount failure
    return 32  # not reached


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
