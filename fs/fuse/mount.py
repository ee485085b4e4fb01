"""Running a mount: preflight checks, the per-volume lock, the trio main loop, shutdown.

Shutdown order matters: on SIGINT/SIGTERM or an external unmount the FUSE loop stops,
then every dirty chunk is written back, then the kernel mount goes away, then keys
are zeroed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from ...errors import UsageError
from ..core.volume import Volume
from .notify import notify_stopping
from .operations import SealfsOperations, periodic_writeback
from .tuning import widen_readahead

log = logging.getLogger("sealfs.mount")


def lock_dir() -> Path:
    base = os.environ.get("SEALFS_RUN_DIR")
    if base:
        return Path(base)
    if os.getuid() == 0:
        return Path("/run/sealfs")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/sealfs-{os.getuid()}")


def check_mountpoint(mountpoint: str, allow_nonempty: bool = False) -> Path:
    path = Path(mountpoint)
    try:
        os.statvfs(path)          # stat() may answer from the attribute cache; statfs cannot
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        # A mount whose process died ("Transport endpoint is not connected"): clear it.
        log.warning("clearing a dead mount on %s", mountpoint)
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    if not path.exists():
        raise UsageError(f"mount point {mountpoint} does not exist")
    if not path.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(path):
        raise UsageError(f"{mountpoint} is already a mount point")
    if not allow_nonempty and any(path.iterdir()):
        raise UsageError(f"mount point {mountpoint} is not empty (use -o nonempty to mount anyway)")
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing: load the fuse module or give the container the device")
    return path.resolve()


class VolumeLock:
    """One mount per volume per host: an flock on /run/sealfs/<volume id>.lock."""

    def __init__(self, volume_id: str) -> None:
        self.path = lock_dir() / f"{volume_id}.lock"
        self._fd: int | None = None

    def acquire(self, mountpoint: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            where = holder.split("\n", 1)[1] if "\n" in holder else "elsewhere"
            raise UsageError(f"this volume is already mounted on this host (at {where})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{mountpoint}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def find_mount_owner(mountpoint: Path) -> tuple[int, Path] | None:
    """(pid, lock path) of the sealfs process serving mountpoint, from the lock files."""
    directory = lock_dir()
    if not directory.exists():
        return None
    for lock in directory.glob("*.lock"):
        try:
            pid_line, mp_line = lock.read_text().split("\n")[:2]
        except (OSError, ValueError):
            continue
        if Path(mp_line) == mountpoint:
            return int(pid_line), lock
    return None


async def serve(volume: Volume, mountpoint: Path, options: set[str],
                on_ready: Callable[[], None] | None = None) -> None:
    ops = SealfsOperations(volume)
    await ops.prepare()
    # noatime: what sealfs does (docs/FORMAT.md section 1), so the mount says so.
    fuse_options = set(pyfuse3.default_options) | {"fsname=sealfs", "subtype=sealfs", "noatime"}
    if os.getuid() == 0:
        fuse_options.add("allow_other")
    fuse_options |= options - {"nonempty"}
    # An ACL the kernel would not enforce is refused (EOPNOTSUPP), never stored.
    volume.acls_enforced = "default_permissions" in fuse_options
    ops.after_init = lambda: widen_readahead(mountpoint)
    pyfuse3.init(ops, str(mountpoint), fuse_options)
    unmounted = False
    try:
        log.info("mounted %s on %s (chunk size %d)", volume.backend.location, mountpoint,
                 volume.chunk_size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, nursery.cancel_scope)
            volume.background = nursery
            nursery.start_soon(periodic_writeback, volume)
            nursery.start_soon(volume.broker.run_sweeper)
            if on_ready is not None:
                on_ready()
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        volume.background = None
        notify_stopping("flushing and unmounting")
        try:
            await volume.flush_all()
        finally:
            pyfuse3.close(unmount=True)
            unmounted = True
            log.info("unmounted %s", mountpoint)
    assert unmounted


async def _watch_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s: flushing and unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def unmount(mountpoint: str, timeout: float = 60.0) -> None:
    """Unmount and wait until the serving process has flushed and exited."""
    path = Path(mountpoint).resolve()
    if not os.path.ismount(path):
        raise UsageError(f"{mountpoint} is not mounted")
    owner = find_mount_owner(path)
    result = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise OSError(errno.EBUSY, f"cannot unmount {mountpoint}: {message}")
    if owner is None:
        return
    pid, lock = owner
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        time.sleep(0.05)
    raise OSError(errno.ETIMEDOUT, f"the sealfs process {pid} did not finish within {timeout:.0f} s")
