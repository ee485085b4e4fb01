"""Real FUSE mounts for tests: `sealfs mount` in a child process, always unmounted.

The mount runs as a separate process (as users run it), so tests can also kill it
with SIGKILL and remount the same store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SEALFS = [sys.executable, "-m", "sealfs.fs.cli"]


def sealfs(*args: str, env: dict | None = None, check: bool = True, input: bytes | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([*SEALFS, *args], capture_output=True, env=env, input=input,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"sealfs {' '.join(args)} failed ({result.returncode}): "
                             f"{result.stderr.decode(errors='replace')}")
    return result


class Mount:
    """A running `sealfs mount STORE MOUNTPOINT` process."""

    def __init__(self, store: Path | str, mountpoint: Path, keyfile: Path | None, env: dict | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.store = store
        self.store_dir = Path(store) if "://" not in str(store) else None
        self.mountpoint = mountpoint
        self.keyfile = keyfile
        self.env = dict(env or os.environ)
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.log = mountpoint.parent / f"{mountpoint.name}.log"

    def start(self, timeout: float = 30) -> Mount:
        self.mountpoint.mkdir(exist_ok=True)
        with open(self.log, "ab") as logf:      # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*SEALFS, "-v", "mount", str(self.store), str(self.mountpoint),
                 *(["--keyfile", str(self.keyfile)] if self.keyfile else []), *self.extra],
                env=self.env, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _live(self.mountpoint):
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited with {self.proc.returncode}: {self.log_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"mount did not come up: {self.log_text()}")
            time.sleep(0.02)
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> None:
        """Clean unmount through `sealfs umount`; asserts the process exits 0."""
        if self.proc is None:
            return
        if os.path.ismount(self.mountpoint):
            sealfs("umount", str(self.mountpoint), env=self.env)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.proc = None
        assert code == 0, f"mount process exited with {code}: {self.log_text()}"

    def kill(self) -> None:
        """SIGKILL: the crash case. Leaves no mount behind."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None
        # Unconditionally: a dead mount answers ENOTCONN, which os.path.ismount() takes for
        # "not a mount" (auto_unmount may not have got to it yet on a loaded machine).
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        time.sleep(0.05)

    def close(self) -> None:
        """Teardown: a clean stop if it can (its failure still raises), else a kill."""
        if self.proc is None:
            return
        try:
            self.stop()
        except Exception:
            self.kill()
            raise

    def remount(self) -> Mount:
        self.stop()
        return self.start()

    def __enter__(self) -> Mount:
        return self.start()

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.stop()
        else:
            self.kill()


def _live(mountpoint: Path) -> bool:
    """Mounted and answering (a dead FUSE mount answers ENOTCONN)."""
    try:
        os.statvfs(mountpoint)
    except OSError:
        return False
    return os.path.ismount(mountpoint)


def init_store(store: Path | str, keyfile: Path, chunk_size: str = "64K", env: dict | None = None) -> None:
    sealfs("init", str(store), "--keyfile", str(keyfile), "--chunk-size", chunk_size, env=env)
