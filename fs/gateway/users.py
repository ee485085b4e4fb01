"""The gateway's own SMB users: a tdbsam passdb in its state directory, and Unix accounts.

smbd authenticates an SMB user only through a Unix account of the same name, so each
user gets a system account of its own (no home, no login shell). Without `force_user` the
share works as that user, in the share's group; with it, every user works as that one
owner. Accounts the gateway created are
recorded, so that `users remove` deletes only those, never an account that was there.
Passwords reach smbpasswd on its stdin, never in argv.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import subprocess
from pathlib import Path

from ...errors import SealfsError
from .smbconf import GatewaySettings, global_section, prepare_dirs

_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
NOLOGIN = "/usr/sbin/nologin"


class UsersError(SealfsError):
    """A user could not be added, removed or listed."""


def check_user_name(name: str) -> str:
    """A name useradd and smbpasswd both take as is (lower case, like Debian's NAME_REGEX)."""
    if not _USER_RE.match(name):
        raise ValueError(f"invalid user name {name!r} (lower-case letters, digits, _ and -, "
                         "starting with a letter or _, up to 31)")
    return name


class Passdb:
    """The share's tdbsam, through smbpasswd/pdbedit with a private passdb-only config."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.conf = settings.state_dir / "passdb.conf"
        self.created_file = settings.state_dir / "created-accounts.json"

    def _write_conf(self) -> None:
        prepare_dirs(self.settings)
        keep = ("passdb backend", "private dir", "lock directory", "state directory",
                "cache directory", "pid directory", "ncalrpc dir", "log file", "logging")
        glob = {k: v for k, v in global_section(self.settings).items() if k in keep}
        text = "[global]\n" + "".join(f"    {k} = {v}\n" for k, v in glob.items())
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _run(self, argv: list[str], stdin: bytes | None = None) -> str:
        self._write_conf()
        result = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=60)
        out = result.stdout.decode(errors="replace").strip()
        if result.returncode != 0:
            raise UsersError(f"{argv[0]} failed: {out.splitlines()[-1] if out else result.returncode}")
        return out

    # -- the passdb -----------------------------------------------------------------------
    def list(self) -> list[str]:
        out = self._run(["pdbedit", "-s", str(self.conf), "-L"])
        return sorted(line.split(":", 1)[0] for line in out.splitlines()
                      if ":" in line and not line.startswith(" "))

    def add(self, user: str, password: str) -> bool:
        """Add USER (or set a new password); True if its Unix account was created now."""
        check_user_name(user)
        if not password or "\n" in password:
            raise UsersError("the password must be one non-empty line")
        self._write_conf()
        created = self._ensure_account(user)
        secret = f"{password}\n{password}\n".encode()
        try:
            self._run(["smbpasswd", "-c", str(self.conf), "-L", "-s", "-a", user], stdin=secret)
        except UsersError:
            if created:
                self._delete_account(user)
            raise
        return created

    def remove(self, user: str) -> bool:
        """Remove USER from the passdb, and its Unix account if the gateway made it."""
        check_user_name(user)
        if user not in self.list():
            raise UsersError(f"no gateway user {user!r} for share {self.settings.share}")
        self._run(["smbpasswd", "-c", str(self.conf), "-L", "-x", user])
        if user in self._created():
            self._delete_account(user)
            return True
        return False

    # -- Unix accounts --------------------------------------------------------------------
    def _ensure_account(self, user: str) -> bool:
        """Samba authenticates an SMB user only through a Unix account of that name, so
        every user gets one (no home, no login shell). With force_user the share then works
        as that one owner for everybody; without, as the user, in the share's group."""
        if self.settings.force_user:
            pwd.getpwnam(self.settings.force_user)   # KeyError: the config names no account
        group = self.settings.group
        if group is not None:
            try:
                grp.getgrnam(group)
            except KeyError:
                _run_tool(["groupadd", "--system", group])
        try:
            pwd.getpwnam(user)
        except KeyError:
            _run_tool(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                       "--shell", NOLOGIN, *(["--gid", group] if group else ["--user-group"]), user])
            self._record(user, add=True)
            return True
        if group is not None:
            _run_tool(["usermod", "--append", "--groups", group, user])
        return False

    def _delete_account(self, user: str) -> None:
        _run_tool(["userdel", user])
        self._record(user, add=False)

    def _created(self) -> set[str]:
        try:
            return set(json.loads(self.created_file.read_text()))
        except FileNotFoundError:
            return set()

    def _record(self, user: str, add: bool) -> None:
        names = self._created()
        names = names | {user} if add else names - {user}
        tmp = self.created_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(names)))
        os.replace(tmp, self.created_file)


def _run_tool(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise UsersError(f"{' '.join(argv[:1])} failed: {result.stderr.strip() or result.returncode}")


def read_password(path: Path | None, stdin) -> str:
    """One line from FILE, else from stdin; the trailing newline is not part of it."""
    text = Path(path).read_text() if path is not None else stdin.readline()
    return text.rstrip("\r\n").split("\n", 1)[0]
