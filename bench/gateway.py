"""`sealfs bench --backends gateway`: Samba's smbclient putting and getting a file through
`sealfs gateway`, against the same smbd configuration serving a plain directory.

- `sealfs-gateway-CS`: a real `sealfs gateway` (a fresh local volume of chunk size CS, one
  gateway user, smbd on 127.0.0.1), timed with smbclient put/get as SmbclientTarget does,
  plus the CPU seconds per GiB the gateway spends: smbd (with the per-connection child
  it forks) and the sealfs mount, from /proc/PID/stat.
- `gateway-plain`: a second smbd started from the gateway's own generated smb.conf, with
  only the port, the share's path (a plain directory with the share root's owner and
  mode), the bare-mount-point guard and its runtime directories changed: the ceiling the
  gateway is a ratio of.

The gateway needs root (it runs smbd and an allow_other mount) and creates one system
account and the share's group, both removed again when the target closes.
"""

from __future__ import annotations

import abc
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .samba import SmbShare
from .smb_clients import SmbclientTarget
from .targets import TargetError, drop_file_cache

SEALFS = [sys.executable, "-m", "sealfs.fs.cli"]
GiB = 1024**3
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- CPU of a process tree ---------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime + stime + cutime + cstime in seconds) of pid, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / CLK_TCK


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds of root and its live descendants, with what their reaped children used
    (smbd's per-connection child is reaped into its parent's cutime once it exits)."""
    return sum(st[1] for pid in {root} | descendants(root) if (st := _stat(pid)) is not None)


def settle_tree(root: int, before: set[int], timeout: float = 10) -> None:
    """Wait until the connection's smbd child has exited and been reaped, so that its CPU
    time is in its parent's cutime when tree_cpu reads it."""
    deadline = time.monotonic() + timeout
    while descendants(root) - before and time.monotonic() < deadline:
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> dict[int, str]:
    """pid -> command line of pid's direct children."""
    out = {}
    for child in descendants(pid):
        st = _stat(child)
        if st is not None and st[0] == pid:
            try:
                out[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return out


# -- the gateway -------------------------------------------------------------------------------
class BenchGateway:
    """`sealfs gateway` of a fresh local volume in work/, on 127.0.0.1, with one user.

    The run directory (mount point, smbd's lock directory, the plain twin's directory) is
    a temp directory of its own, mode 0711: smbd enters it as the SMB user, whatever the
    modes of --workdir and its parents are."""

    def __init__(self, chunk_size: str) -> None:
        self.chunk_size = chunk_size
        self.share = "bench" + secrets.token_hex(3)
        self.user = "sfb" + secrets.token_hex(4)
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self.work = Path()                    # set by the target before start()
        self.run_dir = Path()
        self.proc: subprocess.Popen | None = None
        self.user_added = False

    @property
    def store(self) -> Path:
        return self.work / "store"

    @property
    def state_dir(self) -> Path:
        return self.work / "state" / "gateway" / self.share

    @property
    def mountpoint(self) -> Path:
        return self.run_dir / self.share

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("SEALFS_KEYFILE", "SEALFS_PASSPHRASE", "SEALFS_CONFIG_DIR")}
        return dict(env, SEALFS_STATE_DIR=str(self.work / "state"),
                    SEALFS_GATEWAY_RUN_DIR=str(self.run_dir))

    @property
    def url(self) -> str:
        return f"smb://{self.user}@127.0.0.1:{self.port}/{self.share}"

    def _cli(self, *args: str, stdin: bytes | None = None, timeout: float = 120) -> None:
        r = subprocess.run([*SEALFS, *args], env=self.env, input=stdin, capture_output=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise TargetError(f"sealfs {' '.join(args[:2])} failed: "
                              f"{r.stderr.decode(errors='replace').strip()[-800:]}")

    def start(self) -> None:
        if os.geteuid() != 0:
            raise TargetError("the gateway runs smbd and an allow_other mount: bench it as root")
        self.run_dir = Path(tempfile.mkdtemp(prefix="sealfs-bench-gw-"))
        os.chmod(self.run_dir, 0o711)
        keyfile = self.work / "volume.key"
        keyfile.write_bytes(os.urandom(32))
        keyfile.chmod(0o600)
        self.store.mkdir()
        self._cli("init", str(self.store), "--keyfile", str(keyfile), "--chunk-size", self.chunk_size)
        self._cli("gateway", "users", "add", self.user, "--share", self.share,
                  stdin=f"{self.password}\n".encode())
        self.user_added = True
        log = self.work / "gateway.log"
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [*SEALFS, "gateway", str(self.store), "--share", self.share,
                 "--listen", f"127.0.0.1:{self.port}", "--keyfile", str(keyfile)],
                env=self.env, stdout=f, stderr=f, stdin=subprocess.DEVNULL)
        _wait_listening(self.port, self.proc, log)

    def pids(self) -> tuple[int, int]:
        """(smbd's main process, the mount process): the gateway's two children."""
        assert self.proc is not None
        kids = _children(self.proc.pid)
        smbd = [p for p, cmd in kids.items() if "smbd" in cmd.split(" ", 1)[0]]
        mount = [p for p, cmd in kids.items() if " mount " in cmd]
        if len(smbd) != 1 or len(mount) != 1:
            raise TargetError(f"the gateway's children are not one smbd and one mount: {kids}")
        return smbd[0], mount[0]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(180)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
            if self.user_added:
                self.user_added = False
                try:
                    self._cli("gateway", "users", "remove", self.user, "--share", self.share)
                finally:
                    subprocess.run(["groupdel", f"sealfs-{self.share}"[:32]], capture_output=True)
            if self.run_dir != Path():
                shutil.rmtree(self.run_dir, ignore_errors=True)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path | None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log is not None and log.exists() else ""
            raise TargetError(f"exited with {proc.returncode} before listening: {tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TargetError(f"nothing listened on port {port} within {timeout:.0f} s")


class PlainTwin:
    """A second smbd from the gateway's generated smb.conf, serving a plain directory: the
    same settings (encryption, signing, acl_xattr, DOS attributes, share modes, masks),
    only the port, the path, the mount guard and its runtime directories differ."""

    def __init__(self, gw: BenchGateway) -> None:
        self.gw = gw
        self.base = gw.work / "plain-smbd"
        self.path = gw.run_dir / ".plain"     # traversable like the mount point
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        gw, b = self.gw, self.base
        for sub in ("state", "cache", "pid", "log", "ncalrpc"):
            (b / sub).mkdir(parents=True, mode=0o700)
        shutil.copytree(gw.state_dir / "private", b / "private")
        lock = gw.run_dir / ".plain-lock"     # entered as the user, as the gateway's own is
        lock.mkdir(mode=0o700)
        root = os.stat(gw.mountpoint)          # the share root's owner, group and mode
        for d in (lock, self.path):
            if d == self.path:
                d.mkdir()
            os.chown(d, 0 if d == lock else root.st_uid, root.st_gid)
        os.chmod(lock, 0o710)
        os.chmod(self.path, root.st_mode & 0o7777)
        conf = twin_conf((gw.state_dir / "smb.conf").read_text(), {
            "smb ports": str(self.port), "path": str(self.path), "lock directory": str(lock),
            "private dir": str(b / "private"),
            "passdb backend": f"tdbsam:{b / 'private' / 'passdb.tdb'}",
            **{f"{d} directory": str(b / d) for d in ("state", "cache", "pid")},
            "ncalrpc dir": str(b / "ncalrpc"), "log file": str(b / "log" / "smbd.log"),
        }, drop={"root preexec", "root preexec close"})
        (b / "smb.conf").write_text(conf)
        os.chmod(b / "smb.conf", 0o600)
        self.proc = subprocess.Popen(
            [shutil.which("smbd") or "/usr/sbin/smbd", "--foreground", "--no-process-group",
             f"--configfile={b / 'smb.conf'}", "--debuglevel=0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)             # its own group: stopping it reaches its children
        _wait_listening(self.port, self.proc, None)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(15)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        proc.wait()


def twin_conf(text: str, replace: dict[str, str], drop: set[str]) -> str:
    """smb.conf text with the values of some keys replaced and others left out."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*([^=\[#]+?)\s*=", line)
        key = m.group(1) if m else None
        if key in drop:
            continue
        out.append(f"    {key} = {replace[key]}" if key in replace else line)
    missing = set(replace) - {m.group(1) for line in out if (m := re.match(r"\s*([^=\[#]+?)\s*=", line))}
    if missing:
        raise TargetError(f"the gateway's smb.conf has no {sorted(missing)}")
    return "\n".join(out) + "\n"


# -- the targets -------------------------------------------------------------------------------
class _CpuTimedSmbclient(SmbclientTarget):
    """SmbclientTarget that also takes the CPU seconds per GiB of a server process tree."""

    backend = "gateway"

    def __init__(self, work: Path, chunk_size: str) -> None:
        self.chunk_size = chunk_size
        self.gw = BenchGateway(chunk_size)
        super().__init__(work, SmbShare(self.gw.url, self.gw.password, None))
        self.gw.work = self.work               # the target's own directory, made by super()
        self.cpu: dict[str, float] = {}
        self.reads = 0

    @abc.abstractmethod
    def roots(self) -> dict[str, int]:
        """Part name -> the root pid of a process tree whose CPU time counts."""

    def _measured(self, what: str, nbytes: int, fn, *args) -> float:
        roots = self.roots()
        before = {name: (tree_cpu(pid), descendants(pid)) for name, pid in roots.items()}
        seconds = fn(*args)
        for name, pid in roots.items():
            settle_tree(pid, before[name][1])
            self.cpu[f"{what} {name}"] = (tree_cpu(pid) - before[name][0]) * GiB / nbytes
        return seconds

    def sequential(self, size_mib: int) -> dict[str, float]:
        self.cpu, self.reads = {}, 0
        out = super().sequential(size_mib)
        for what in ("write", "read", "cold_read"):
            parts = {k.split(" ", 1)[1]: v for k, v in self.cpu.items() if k.startswith(what + " ")}
            out[f"cpu_{what}"] = sum(parts.values())
            if len(parts) > 1:
                split = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
                self.notes[f"cpu_{what} split"] = split + " s/GiB"
        return out

    def _write(self, name: str, size_mib: int) -> float:
        return self._measured("write", size_mib * 1024 * 1024, super()._write, name, size_mib)

    def _read(self, name: str, nbytes: int) -> float:
        self.reads += 1
        what = "read" if self.reads == 1 else "cold_read"
        return self._measured(what, nbytes, super()._read, name, nbytes)


class GatewayTarget(_CpuTimedSmbclient):
    """smbclient put/get through `sealfs gateway`; CPU of smbd and the mount."""

    name = "sealfs-gateway"
    kind = "sealfs"

    def setup(self) -> None:
        super().setup()
        self.gw.start()
        self.share = SmbShare(self.gw.url, self.gw.password, self.gw.mountpoint)
        self.storage = self.gw.mountpoint
        self.notes["pattern"] = ("smbclient --client-protection=encrypt put/get through `sealfs gateway` "
                                 "(whole command timed); cpu_*: smbd with its connection child plus "
                                 "the sealfs mount, /proc/PID/stat, per GiB moved")

    def roots(self) -> dict[str, int]:
        smbd, mount = self.gw.pids()
        return {"smbd": smbd, "mount": mount}

    def _drop(self, name: str) -> None:
        drop_file_cache(self.gw.mountpoint / name)      # the mount's page cache
        drop_file_cache(self.gw.store)                  # and the sealed chunks under it

    def close(self) -> None:
        try:
            self.gw.stop()
        finally:
            super().close()


class GatewayPlainTarget(_CpuTimedSmbclient):
    """smbclient put/get on the gateway's smbd configuration serving a plain directory."""

    name = "gateway-plain"
    kind = "peer"

    def setup(self) -> None:
        super().setup()
        self.gw.start()
        self.twin = PlainTwin(self.gw)
        self.twin.start()
        self.share = SmbShare(f"smb://{self.gw.user}@127.0.0.1:{self.twin.port}/{self.gw.share}",
                              self.gw.password, self.twin.path)
        self.target = self.target.parse(self.share.url)
        self.notes["pattern"] = ("the gateway's generated smb.conf with path = a plain directory (port, "
                                 "mount guard and runtime directories changed), smbclient put/get; "
                                 "cpu_*: that smbd with its connection child")

    def roots(self) -> dict[str, int]:
        assert self.twin.proc is not None
        return {"smbd": self.twin.proc.pid}

    def close(self) -> None:
        try:
            twin = getattr(self, "twin", None)
            if twin is not None:
                twin.stop()
        finally:
            try:
                self.gw.stop()
            finally:
                super().close()
