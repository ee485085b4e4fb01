"""`sealfs mount --daemon`: return to the shell only once the mount is live.

The parent re-runs the same command in the foreground as a child in its own session,
hands it any prompted passphrase over a pipe (never argv or environment), and waits
for one line on a readiness pipe: READY, or ERROR and the one-line reason.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ..crypto.errors import SealfsError
from ..crypto.kms import KeySecrets
from .errors import exit_code_of, first_error, one_line

READY_FD_ENV = "SEALFS_READY_FD"
PASSPHRASE_STDIN_ENV = "SEALFS_PASSPHRASE_STDIN"


class ReadyReporter:
    """The child's side: tell the waiting parent how the mount went (at most once)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def from_environment(cls) -> "ReadyReporter":
        raw = os.environ.pop(READY_FD_ENV, None)
        return cls(int(raw) if raw else None)

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, (line + "\n").encode("utf-8", "replace"))
            os.close(self._fd)
        except OSError:
            pass
        self._fd = None

    def ready(self) -> None:
        try:
            from .notify import notify_ready
            notify_ready("mounted")
        except ImportError:
            pass
        if self._fd is not None:
            self._send("READY")
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):
                os.dup2(devnull, fd)
            os.close(devnull)

    def failed(self, exc: BaseException) -> None:
        exc = first_error(exc)
        self._send(f"ERROR {exit_code_of(exc)} {one_line(exc)}")


def spawn_daemon(secrets: KeySecrets, log_file: str | None) -> None:
    """Start the foreground mount as a background child and wait for its verdict."""
    argv = [a for a in sys.argv[1:] if a != "--daemon"]
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env[READY_FD_ENV] = str(write_fd)
    stdin_data = None
    if secrets.keyfile is None and secrets.passphrase is not None \
            and not os.environ.get("SEALFS_PASSPHRASE") and "--passphrase-file" not in argv:
        stdin_data = secrets.passphrase()          # prompted now, while we have the terminal
        env[PASSPHRASE_STDIN_ENV] = "1"
    log = open(log_file, "ab") if log_file else subprocess.DEVNULL
    child = subprocess.Popen([sys.executable, "-m", "sealfs.fs.cli", *argv], env=env,
                             stdin=subprocess.PIPE if stdin_data else subprocess.DEVNULL,
                             stdout=log, stderr=log, pass_fds=(write_fd,),
                             start_new_session=True)
    os.close(write_fd)
    if stdin_data is not None:
        assert child.stdin is not None
        child.stdin.write(stdin_data + b"\n")
        child.stdin.close()
    with os.fdopen(read_fd, "rb") as pipe:
        line = pipe.readline().decode("utf-8", "replace").strip()
    if line == "READY":
        return
    if line.startswith("ERROR "):
        _, code, message = line.split(" ", 2)
        raise _ChildError(message, int(code))
    child.wait()
    raise _ChildError(f"the mount process exited with status {child.returncode} before the "
                      f"mount was live" + (f" (see {log_file})" if log_file else ""), 1)


class _ChildError(SealfsError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code
