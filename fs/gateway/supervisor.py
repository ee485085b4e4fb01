"""Run and supervise the two processes of a gateway: the sealfs mount and smbd.

Order is the point. smbd starts only once the mount is live, and stops before it: if
the mount process dies, smbd is killed at once (and a tree connect refuses a path that
is not a mount), so that no client ever writes into the bare mount-point directory,
which is itself mode 000 and owned by root. smbd dying on its own is a restart with
backoff; the mount dying ends the gateway with an error (systemd restarts the unit).
SIGTERM and SIGINT stop smbd first, then let the mount flush and unmount.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SealfsError
from .smbconf import GatewaySettings, write_conf

log = logging.getLogger("sealfs.gateway")

BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER = 60.0            # seconds of uptime after which a crash starts the backoff over
MOUNT_START_TIMEOUT = 180.0    # unwrapping keys may wait for a KMS
SMBD_STOP_TIMEOUT = 10.0
MOUNT_STOP_TIMEOUT = 180.0     # flushing dirty chunks to a remote store


class GatewayError(SealfsError):
    """The gateway could not start, or a process it needs died."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class MountCommand:
    """How to start the `sealfs mount` child: the CLI knows its flags and secret hand-over."""

    argv: list[str]
    env: dict[str, str]
    ready_fd_env: str                  # the child writes READY or ERROR CODE MESSAGE to this fd
    stdin: bytes | None = None         # secrets handed over on stdin, never in argv or environ
    log_path: Path | None = None


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    pidfd: int
    started: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def prepare_mountpoint(path: Path) -> None:
    """The bare mount point: an empty directory no one but root may enter or write (mode
    000, root-owned), in a parent anyone may traverse (smbd enters the share as the user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o711)
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)  # a dead leftover
    path.mkdir(exist_ok=True)
    if os.path.ismount(path):
        raise GatewayError(f"{path} is already a mount point (another gateway for this share?)")
    if any(path.iterdir()):
        raise GatewayError(f"the bare mount point {path} is not empty: something wrote into it; "
                           "look at it and remove it before starting the gateway")
    os.chown(path, 0, 0)
    os.chmod(path, 0)


class Gateway:
    """One share: the mount child, the smbd child, and the loop that watches both."""

    def __init__(self, settings: GatewaySettings, mount: MountCommand,
                 on_ready=None) -> None:
        self.settings = settings
        self.mount_cmd = mount
        self.on_ready = on_ready
        self.mount: _Child | None = None
        self.smbd: _Child | None = None
        self.smbd_restarts = 0
        self._backoff = 0
        self._stop_signal: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- the whole life -------------------------------------------------------------------
    def run(self) -> int:
        """Start both, supervise until a signal or the mount's death; 0 on a clean stop."""
        previous = self._install_signals()
        try:
            prepare_mountpoint(self.settings.mountpoint)
            write_conf(self.settings)
            self._start_mount()
            self._own_share_root()
            self._start_smbd()
            self._wait_listening(self.smbd)
            log.info("gateway %s: serving %s on port %d", self.settings.share,
                     self.settings.mountpoint, self.settings.port)
            if self.on_ready is not None:
                self.on_ready()
            return self._supervise()
        finally:
            try:
                self._stop_smbd(signal.SIGTERM)
                self._stop_mount()
            finally:
                self._restore_signals(previous)

    def _supervise(self) -> int:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "signal")
        assert self.mount is not None
        sel.register(self.mount.pidfd, selectors.EVENT_READ, "mount")
        if self.smbd is not None:
            sel.register(self.smbd.pidfd, selectors.EVENT_READ, "smbd")
        restart_at: float | None = None
        try:
            while True:
                timeout = None if restart_at is None else max(0.0, restart_at - time.monotonic())
                events = sel.select(timeout)
                if self._stop_signal is not None:
                    log.info("received %s: stopping smbd, then flushing and unmounting",
                             signal.Signals(self._stop_signal).name)
                    return 0
                for key, _ in events:
                    if key.data == "signal":
                        self._drain_wakeups()
                    elif key.data == "mount":
                        return self._mount_died()
                    elif key.data == "smbd":
                        sel.unregister(key.fd)
                        restart_at = time.monotonic() + self._smbd_died()
                if restart_at is not None and time.monotonic() >= restart_at:
                    restart_at = None
                    self._start_smbd()
                    self.smbd_restarts += 1
                    sel.register(self.smbd.pidfd, selectors.EVENT_READ, "smbd")
        finally:
            sel.close()

    # -- the mount ----------------------------------------------------------------------------
    def _start_mount(self) -> None:
        cmd = self.mount_cmd
        read_fd, write_fd = os.pipe()
        env = dict(cmd.env, **{cmd.ready_fd_env: str(write_fd)})
        env.pop("NOTIFY_SOCKET", None)      # the gateway, not the mount, tells systemd
        log_fd = self._open_log(cmd.log_path)
        try:
            proc = subprocess.Popen(cmd.argv, env=env, pass_fds=(write_fd,),
                                    stdin=subprocess.PIPE if cmd.stdin else subprocess.DEVNULL,
                                    stdout=log_fd, stderr=log_fd, start_new_session=True)
        finally:
            os.close(write_fd)
            if log_fd is not subprocess.DEVNULL:
                os.close(log_fd)
        self.mount = _Child(proc, os.pidfd_open(proc.pid))
        if cmd.stdin:
            assert proc.stdin is not None
            proc.stdin.write(cmd.stdin)
            proc.stdin.close()
        with os.fdopen(read_fd, "rb") as pipe:
            line = pipe.readline().decode("utf-8", "replace").strip()
        if line == "READY":
            return
        proc.wait(MOUNT_START_TIMEOUT)
        if line.startswith("ERROR "):
            _, code, message = line.split(" ", 2)
            raise GatewayError(f"mount failed: {message}", int(code))
        raise GatewayError(f"the mount process exited with status {proc.returncode} before the "
                           f"mount was live" + (f" (see {cmd.log_path})" if cmd.log_path else ""))

    def _mount_died(self) -> int:
        """No smbd without the volume under it: kill it now, clear the dead mount."""
        self._stop_smbd(signal.SIGKILL)
        assert self.mount is not None
        code = self.mount.proc.wait()
        self.mount.close()
        self.mount = None
        subprocess.run(["fusermount3", "-u", "-z", str(self.settings.mountpoint)],
                       capture_output=True)
        raise GatewayError(f"the sealfs mount exited with status {code}; smbd stopped")

    def _stop_mount(self) -> None:
        """SIGTERM: the mount flushes every dirty chunk, unmounts, exits."""
        child, self.mount = self.mount, None
        if child is None:
            return
        try:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
            try:
                code = child.proc.wait(MOUNT_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
                raise GatewayError("the mount did not flush and exit in time; killed it") from None
            if code != 0:
                raise GatewayError(f"the sealfs mount exited with status {code} while stopping")
        finally:
            child.close()

    def _own_share_root(self) -> None:
        """SMB users must be able to write the share's root, as its owner or its group."""
        mp = self.settings.mountpoint
        st = os.stat(mp)
        if self.settings.force_user:
            pw = pwd.getpwnam(self.settings.force_user)
            if (st.st_uid, st.st_gid) != (pw.pw_uid, pw.pw_gid):
                os.chown(mp, pw.pw_uid, pw.pw_gid)
            if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
                os.chmod(mp, stat.S_IMODE(st.st_mode) | 0o700)
        elif self.settings.group:
            try:
                gid = grp.getgrnam(self.settings.group).gr_gid
            except KeyError:
                raise GatewayError(f"no gateway users yet (group {self.settings.group} does not "
                                   "exist): add one with `sealfs gateway users add`") from None
            if st.st_gid != gid:
                os.chown(mp, -1, gid)
            if stat.S_IMODE(st.st_mode) & 0o2070 != 0o2070:
                os.chmod(mp, stat.S_IMODE(st.st_mode) | 0o2070)

    # -- smbd ---------------------------------------------------------------------------------
    def _start_smbd(self) -> None:
        smbd = shutil.which("smbd") or "/usr/sbin/smbd"
        if not os.path.exists(smbd):
            raise GatewayError("smbd not found: install Samba (apt-get install samba)")
        out = os.open(self.settings.state_dir / "log" / "smbd.stdout",
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # Its own session (pgid = pid): stopping it reaches every forked child too.
            proc = subprocess.Popen(
                [smbd, "--foreground", "--no-process-group",
                 f"--configfile={self.settings.conf_path}",
                 f"--debuglevel={self.settings.log_level}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        finally:
            os.close(out)
        self.smbd = _Child(proc, os.pidfd_open(proc.pid))

    def _smbd_died(self) -> float:
        """Reap it and its children; the delay before the next start."""
        child, self.smbd = self.smbd, None
        assert child is not None
        code = child.proc.wait()
        child.close()
        _kill_group(child.proc.pid, signal.SIGKILL)
        if time.monotonic() - child.started >= STABLE_AFTER:
            self._backoff = 0
        delay = BACKOFF[min(self._backoff, len(BACKOFF) - 1)]
        self._backoff += 1
        log.warning("smbd exited with status %s; restarting in %.0f s", code, delay)
        return delay

    def _stop_smbd(self, sig: int) -> None:
        child, self.smbd = self.smbd, None
        if child is None:
            return
        _kill_group(child.proc.pid, sig)
        try:
            child.proc.wait(SMBD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
        _wait_group_gone(child.proc.pid, SMBD_STOP_TIMEOUT)
        child.close()

    def _wait_listening(self, child: _Child | None, timeout: float = 30.0) -> None:
        host = self.settings.address or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child is None or child.proc.poll() is not None:
                raise GatewayError(f"smbd exited on start; see {self.settings.log_file}")
            try:
                with socket.create_connection((host, self.settings.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise GatewayError(f"smbd did not listen on port {self.settings.port} within {timeout:.0f} s")

    # -- signals ------------------------------------------------------------------------------
    def _install_signals(self) -> dict[int, object]:
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, object]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _on_signal(self, signum: int, _frame) -> None:
        if signum == signal.SIGHUP:
            # smbd rereads its configuration; the gateway keeps running.
            if self.smbd is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.smbd.proc.pid, signal.SIGHUP)
            return
        self._stop_signal = signum
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 64):
                pass

    @staticmethod
    def _open_log(path: Path | None) -> int:
        if path is None:
            return subprocess.DEVNULL
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """smbd's children exit a moment after it; wait so that a restart can bind the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    _kill_group(pgid, signal.SIGKILL)
