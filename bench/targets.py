"""What every benchmark target is: a context manager that yields a live mount point.

    with SealfsTarget(work, chunk_size="64K") as t:
        t.mountpoint      # where workloads run
        t.storage         # local directory holding the bytes it stores (None if unknown)
        t.remount()       # drop every cache the mount holds (cold reads)
        t.settle(path, n) # block until a written file's bytes are on the storage
        t.notes           # facts for results.json meta (negotiated cipher, what is timed)

Every target unmounts in ``finally`` (``fusermount3 -u -z`` as the last resort), so an
interrupted benchmark leaves no mount behind. A DirectTarget is no mount at all: it
measures its own workloads (e.g. the SMB backend without the filesystem above it).

The base classes and helpers live here, apart from the peers (peers.py, smb_raw.py,
smb_clients.py), so that every peer module imports them and none imports another.
"""

from __future__ import annotations

import abc
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

# workload groups a target can run (runner.run_one); most mounts run them all
WORKLOAD_GROUPS = frozenset({"sequential", "random", "small_files", "tarball"})


class TargetError(RuntimeError):
    pass


def is_live(mountpoint: Path) -> bool:
    try:
        os.statvfs(mountpoint)
    except OSError:
        return False
    return os.path.ismount(mountpoint)


def lazy_unmount(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint) or not _statable(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def _statable(path: Path) -> bool:
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def wait_live(mountpoint: Path, proc: subprocess.Popen | None, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while not is_live(mountpoint):
        if proc is not None and proc.poll() is not None:
            raise TargetError(f"mount exited with {proc.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise TargetError(f"mount of {mountpoint} did not come up: {_tail(log)}")
        time.sleep(0.02)


def _tail(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def quiesce_disk() -> None:
    """Write back every dirty page before a timed write starts (untimed), so a target's
    sequential write does not pay for the previous target's: without it the same code's
    ratio to a peer swung twofold with what had been written just before."""
    os.sync()


def drop_file_cache(root: Path) -> None:
    """Evict clean page-cache pages of root, or of every file under it (cold reads of the backend)."""
    if root is None or not root.exists():
        return
    if not root.is_dir():
        _drop_one(str(root))
        return
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _drop_one(os.path.join(dirpath, name))


def _drop_one(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def run_tool(what: str, argv: list[str], timeout: float = 60) -> None:
    """Run a peer's setup command; a failure is a TargetError with the end of its stderr."""
    result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
    if result.returncode != 0:
        raise TargetError(f"{what}: {result.stderr.decode(errors='replace')[-1000:]}")


class Target(abc.ABC):
    """Base: a mount point inside a private work directory."""

    name = "target"
    kind = "peer"          # "sealfs" or "peer"
    backend = "local"
    chunk_size: str | None = None
    workloads: frozenset[str] = WORKLOAD_GROUPS

    def __init__(self, work: Path) -> None:
        self.work = Path(work) / f"{self.name}-{secrets.token_hex(3)}"
        self.work.mkdir(parents=True)
        self.mountpoint = self.work / "mnt"
        self.storage: Path | None = self.work / "store"
        self.log = self.work / "mount.log"
        self.notes: dict[str, str] = {}

    def settle(self, path: Path, size: int) -> None:
        """Return once the file just written and closed is on the storage (write-back caches)."""

    @property
    def label(self) -> str:
        return self.name

    @abc.abstractmethod
    def mount(self) -> None: ...

    @abc.abstractmethod
    def unmount(self) -> None: ...

    def remount(self) -> None:
        self.unmount()
        drop_file_cache(self.storage)
        self.mount()

    def peak_rss(self) -> int | None:
        """Peak resident memory of the process serving the mount (None: no such process)."""
        return None

    def storage_bytes(self) -> int | None:
        if self.storage is None or not self.storage.exists():
            return None
        total = 0
        for dirpath, _dirs, files in os.walk(self.storage):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    def __enter__(self) -> Target:
        try:
            self.setup()
            self.mount()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def setup(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.unmount()
        except Exception:  # noqa: BLE001 (closing anyway: the lazy unmount below is the last resort)
            pass
        finally:
            lazy_unmount(self.mountpoint)
            shutil.rmtree(self.work, ignore_errors=True)


class ProcessTarget(Target):
    """A mount served by a child process: spawned, waited for, unmounted, killed if stuck."""

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ)

    def _spawn(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> None:
        """Start the mount process (stdin: e.g. a password, then EOF) and wait until it is live."""
        with open(self.log, "ab") as logf:     # the child keeps its own descriptor
            self.proc = subprocess.Popen(argv, env=self.env, stdout=logf, stderr=logf,
                                         stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE)
        if stdin is not None:
            try:
                self.proc.stdin.write(stdin)
                self.proc.stdin.close()
            except OSError:
                pass  # it exited already: wait_live reports how
        try:
            wait_live(self.mountpoint, self.proc, timeout, self.log)
        except BaseException:
            self._kill()
            raise

    def peak_rss(self) -> int | None:
        """VmHWM of the mount process since it started (each mount is a fresh process)."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def _request_unmount(self) -> None:
        """Ask the process to flush and go (each peer has its own way)."""
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)

    def unmount(self) -> None:
        if self.proc is None:
            return
        try:
            if os.path.ismount(self.mountpoint):
                self._request_unmount()
            self.proc.wait(120)
            self.proc = None
        finally:
            if self.proc is not None:
                self._kill()

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        lazy_unmount(self.mountpoint)

    def close(self) -> None:
        try:
            self.unmount()
        except Exception:  # noqa: BLE001 (whatever failed, the process must not outlive the target)
            self._kill()
        finally:
            lazy_unmount(self.mountpoint)
            shutil.rmtree(self.work, ignore_errors=True)


class DirectTarget(Target):
    """Not a mount: measures its own workloads (runner.run_one calls sequential())."""

    workloads = frozenset({"sequential"})

    def mount(self) -> None:
        pass

    def unmount(self) -> None:
        pass

    @abc.abstractmethod
    def sequential(self, size_mib: int) -> dict[str, float]: ...
