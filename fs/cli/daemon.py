"""`sealfs mount --daemon`: return to the shell only once the mount is live.

The parent re-runs the same command in the foreground as a child in its own session,
hands it any prompted passphrase and the secrets it got from the environment
(SEALFS_PASSPHRASE, SEALFS_SMB_PASSWORD, SEALFS_PKCS11_PIN) over a pipe, and waits
for one line on a readiness pipe: READY, or ERROR and the one-line reason.

Why not the environment: a process's /proc/PID/environ is the environment it was
exec'd with, for its whole life (os.environ.pop changes only Python's copy), and
anything running as the same user can read it. The child is exec'd without them.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

from ...crypto.keys.kms import KeySecrets
from ...errors import SealfsError, UsageError, exit_code_of, first_error, one_line
from .keysource import HANDED_OVER_ENV, accept_handover

READY_FD_ENV = "SEALFS_READY_FD"
#: set in the child's environment when one JSON line of secrets waits on its stdin
SECRETS_STDIN_ENV = "SEALFS_SECRETS_STDIN"


class ReadyReporter:
    """The child's side: tell the waiting parent how the mount went (at most once)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def from_environment(cls) -> ReadyReporter:
        """The child's start: take the readiness fd and the secrets the parent handed over."""
        if os.environ.pop(SECRETS_STDIN_ENV, None):
            accept_handover(json.loads(sys.stdin.buffer.readline() or b"{}"))
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
    env = dict(os.environ)
    handover = {name: env.pop(name) for name in HANDED_OVER_ENV if name in env}
    if secrets.keyfile is None and secrets.passphrase is not None \
            and "SEALFS_PASSPHRASE" not in handover and "--passphrase-file" not in argv:
        # prompted now, while we have the terminal
        handover["SEALFS_PASSPHRASE"] = secrets.passphrase().decode("utf-8", "surrogateescape")
    if handover:
        env[SECRETS_STDIN_ENV] = "1"
    log = _open_log(log_file) if log_file else subprocess.DEVNULL
    read_fd, write_fd = os.pipe()
    env[READY_FD_ENV] = str(write_fd)
    try:
        child = subprocess.Popen([sys.executable, "-m", "sealfs.fs.cli", *argv], env=env,
                                 stdin=subprocess.PIPE if handover else subprocess.DEVNULL,
                                 stdout=log, stderr=log, pass_fds=(write_fd,),
                                 start_new_session=True)
    finally:
        os.close(write_fd)
        if log_file:
            os.close(log)
    if handover:
        assert child.stdin is not None
        child.stdin.write(json.dumps(handover).encode() + b"\n")
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


def _open_log(path: str) -> int:
    """The daemon's log: 0600 like the audit log (it names files and errors), appended to,
    and never through a symlink (a planted link must not redirect root's writes)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"--log-file {path} is a symbolic link; refusing to write through it") \
                from None
        raise


class _ChildError(SealfsError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code
