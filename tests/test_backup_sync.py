"""`sealfs sync` / `sealfs restore` on local, smb and azfiles stores, through the CLI
(subprocesses)."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.mounting import SEALFS, init_store, sealfs
from tests.storepaths import storage_of
from tests.stores import StoreKit

MODES = (0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o4755, 0o2750)


def make_tree(root: Path, files: int = 210, big: int = 5 * 1024 * 1024, seed: int = 1) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    dirs = [root]
    for i in range(12):
        d = rng.choice(dirs) / f"dir{i}"
        d.mkdir()
        dirs.append(d)
    (root / "empty").mkdir()
    (root / "dir0" / "empty-nested").mkdir(parents=True, exist_ok=True)
    (root / "dir0" / "empty-nested").chmod(0o750)
    for i in range(files):
        d = rng.choice(dirs)
        p = d / (f"file{i}.txt" if i % 7 else f"ünïcode {i} with spaces.bin")
        p.write_bytes(rng.randbytes(rng.choice((0, 1, 100, 4096, 65536, 65537, 200_000))))
        p.chmod(rng.choice(MODES))
        t = 1_600_000_000_000_000_000 + rng.randrange(10**15)
        os.utime(p, ns=(t, t))
    (root / "big.bin").write_bytes(os.urandom(big))
    os.symlink("big.bin", root / "link-to-big")
    os.symlink("/nonexistent/target", root / "empty-parent-dangling")
    os.symlink("dir0", root / "dirlink")
    (root / "a").mkdir(exist_ok=True)
    (root / "a" / ("long" * 50)).write_bytes(b"long name")      # 200 bytes: a long-name entry
    for d in sorted(dirs, key=lambda p: -len(p.parts)):
        t = 1_500_000_000_000_000_000 + rng.randrange(10**15)
        os.utime(d, ns=(t, t))
    (root / "dir3").chmod(0o711)


def snapshot(root: Path, step: int = 1) -> dict[str, tuple]:
    """Everything sync promises to keep: kind, mode, mtime, content or link target. Times
    are cut to step, the store's declared Capabilities.time_resolution_ns (SMB and Azure
    Files keep 100 ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns // step * step)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns // step * step)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns // step * step, p.read_bytes())
    return out


def key_args(keyfile: Path) -> list[str]:
    return ["--keyfile", str(keyfile)]


def summary(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.decode().splitlines() if line.startswith("sync:")]
    return lines[-1]


async def volume_names(store: StoreKit, keyfile: Path) -> list[str]:
    vol = await store.load(keyfile)
    try:
        return [p for p, _ in await vol.walk("")]
    finally:
        await vol.close()


@pytest.fixture
def vstore(store_kit: StoreKit, keyfile: Path) -> StoreKit:
    """An initialized store on local, smb and azfiles: .url for the CLI, .root on disk."""
    init_store(store_kit.url, keyfile)
    return store_kit


@pytest.mark.slow
async def test_sync_restore_roundtrip_and_incremental(tmp_path, keyfile, vstore):
    src = tmp_path / "src"
    make_tree(src)
    first = sealfs("sync", str(src), vstore.url, "--path", "/backup", *key_args(keyfile))
    n_files = sum(1 for v in snapshot(src).values() if v[0] != "dir")
    assert summary(first) == (f"sync: {n_files} copied ({sum(len(v[3]) for v in snapshot(src).values() if v[0] == 'file')} bytes), "
                              f"0 deleted, 0 unchanged, 0 errors")
    assert first.stderr == b""                   # no progress bar without a TTY
    assert not list(vstore.root.rglob("sealfs.tmp.*"))        # no temporary left in the store

    out = tmp_path / "out"
    restored = sealfs("restore", vstore.url, str(out), "--path", "/backup", *key_args(keyfile))
    assert b"0 errors" in restored.stdout
    step = vstore.capabilities.time_resolution_ns
    want, got = snapshot(src, step), snapshot(out, step)
    assert got.keys() == want.keys()
    for rel in want:
        assert got[rel] == want[rel], rel
    assert stat.S_IMODE(os.stat(out).st_mode) == stat.S_IMODE(os.stat(src).st_mode)

    second = sealfs("sync", str(src), vstore.url, "--path", "/backup", *key_args(keyfile))
    assert summary(second) == f"sync: 0 copied (0 bytes), 0 deleted, {n_files} unchanged, 0 errors"

    # Touch one file's mtime and change another's mode: one copy; the mode is fixed in place.
    os.utime(src / "big.bin", ns=(1, 1))
    victim = next(p for p in (src / "dir0").iterdir() if p.is_file())
    victim.chmod(0o612)
    third = sealfs("sync", str(src), vstore.url, "--path", "/backup", *key_args(keyfile))
    assert summary(third).startswith(f"sync: 1 copied ({5 * 1024 * 1024} bytes), 0 deleted")
    out2 = tmp_path / "out2"
    sealfs("restore", vstore.url, str(out2), "--path", "/backup", *key_args(keyfile))
    assert snapshot(out2, step) == snapshot(src, step)


@pytest.mark.slow
async def test_delete_exclude_and_dry_run(tmp_path, keyfile, vstore):
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "keep").mkdir()
    (src / "keep" / "a.txt").write_text("a")
    (src / "keep" / "b.log").write_text("b")
    (src / "cache" / "c.txt").write_text("c")
    (src / "gone.txt").write_text("gone")
    args = [str(src), vstore.url, *key_args(keyfile)]

    r = sealfs("sync", *args, "--exclude", "*.log", "--exclude", "cache/")
    assert summary(r).startswith("sync: 2 copied")
    names = set(await volume_names(vstore, keyfile))
    assert names == {"keep", "keep/a.txt", "gone.txt"}

    # Everything, then exclude + delete: excluded entries in the volume are kept.
    sealfs("sync", *args)
    (src / "gone.txt").unlink()
    (src / "keep" / "b.log").unlink()
    before = set(await volume_names(vstore, keyfile))
    assert "gone.txt" in before and "keep/b.log" in before

    dry = sealfs("sync", *args, "--delete", "--exclude", "*.log", "--dry-run")
    assert "would delete /gone.txt" in dry.stdout.decode() + dry.stderr.decode()
    assert "1 deleted" in summary(dry)
    assert set(await volume_names(vstore, keyfile)) == before

    (src / "new.txt").write_text("new")
    dry = sealfs("sync", *args, "--dry-run")
    assert summary(dry).startswith("sync: 1 copied")
    assert set(await volume_names(vstore, keyfile)) == before

    r = sealfs("sync", *args, "--delete", "--exclude", "*.log")
    assert summary(r).startswith("sync: 1 copied (3 bytes), 1 deleted")
    after = set(await volume_names(vstore, keyfile))
    assert "gone.txt" not in after and "new.txt" in after
    assert "keep/b.log" in after                  # excluded: not deleted

    r = sealfs("sync", *args, "--delete")
    assert "keep/b.log" not in set(await volume_names(vstore, keyfile))

    # A file that became a directory (and back) is replaced.
    (src / "new.txt").unlink()
    (src / "new.txt").mkdir()
    (src / "new.txt" / "inner").write_text("x")
    sealfs("sync", *args, "--delete")
    out = tmp_path / "out"
    sealfs("restore", vstore.url, str(out), *key_args(keyfile))
    step = vstore.capabilities.time_resolution_ns
    assert snapshot(out, step) == snapshot(src, step)


@pytest.mark.slow
async def test_checksum_catches_same_size_same_mtime_change(tmp_path, keyfile, vstore):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "data.bin"
    f.write_bytes(b"A" * 10000)
    os.utime(f, ns=(10**18, 10**18))
    args = [str(src), vstore.url, *key_args(keyfile)]
    sealfs("sync", *args)
    f.write_bytes(b"A" * 5000 + b"B" + b"A" * 4999)
    os.utime(f, ns=(10**18, 10**18))
    assert summary(sealfs("sync", *args)).startswith("sync: 0 copied")
    assert summary(sealfs("sync", *args, "--checksum")).startswith("sync: 1 copied (10000 bytes)")
    assert summary(sealfs("sync", *args, "--checksum")).startswith("sync: 0 copied (0 bytes), 0 deleted, 1 unchanged")
    out = tmp_path / "out"
    sealfs("restore", vstore.url, str(out), *key_args(keyfile))
    assert (out / "data.bin").read_bytes() == f.read_bytes()
    assert os.stat(out / "data.bin").st_mtime_ns == 10**18


@pytest.mark.slow
async def test_per_file_errors_are_reported_and_counted(tmp_path, keyfile, vstore, monkeypatch):
    """One failing file: one stderr line, counted, the rest still copied (the CLI exits 1)."""
    import io

    import sealfs.fs.tools.sync as sync_mod
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "bad.txt", "c.txt"):
        (src / name).write_text(name)
    real_upload = sync_mod._upload

    async def flaky(f, fh, reporter):
        is_bad = fh.read(3) == b"bad"                    # each file holds its own name
        fh.seek(0)
        written = await real_upload(f, fh, reporter)
        if is_bad:                                        # after a complete temporary
            raise OSError(5, "Input/output error")
        return written
    monkeypatch.setattr(sync_mod, "_upload", flaky)
    err = io.StringIO()
    vol = await vstore.load(keyfile)
    try:
        stats = await sync_mod.sync_tree(vol, src, sync_mod.SyncOptions(),
                                         sync_mod.Reporter("sync", stream=err))
    finally:
        await vol.close()
    assert (stats.copied, stats.errors) == (2, 1)
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "bad.txt" in lines[0] and "Input/output error" in lines[0]
    assert stats.summary() == "sync: 2 copied (10 bytes), 0 deleted, 0 unchanged, 1 errors"
    assert sorted(await volume_names(vstore, keyfile)) == ["a.txt", "c.txt"]
    assert not list(vstore.root.rglob("sealfs.tmp.*"))        # the failed file's temporary is gone


@pytest.mark.slow
async def test_fatal_errors_use_exit_codes(tmp_path, keyfile, vstore):
    src = tmp_path / "src"
    src.mkdir()
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)  # secret files: owner only (or they are refused)
    r = sealfs("sync", str(src), vstore.url, "--keyfile", str(wrong), check=False)
    assert r.returncode == 5, r.stderr
    r = sealfs("sync", str(tmp_path / "missing"), vstore.url, *key_args(keyfile), check=False)
    assert r.returncode == 2 and b"is not a directory" in r.stderr
    r = sealfs("sync", str(src), vstore.missing(), *key_args(keyfile), check=False)
    assert r.returncode == 3


@pytest.mark.slow
async def test_sync_from_config_file(tmp_path, keyfile, vstore, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.txt").write_text("x")
    (src / "skip.tmp").write_text("t")
    conf = tmp_path / "job.toml"
    conf.write_text(f'store = "{vstore.url}"\nkeyfile = "{keyfile}"\n'
                    f'[sync]\nsource = "{src}"\npath = "/cfg"\nexclude = ["*.tmp"]\n')
    r = sealfs("sync", "--config", str(conf))
    assert summary(r).startswith("sync: 1 copied (1 bytes)")
    assert set(await volume_names(vstore, keyfile)) == {"cfg", "cfg/x.txt"}
    out = tmp_path / "out"
    sealfs("restore", "--config", str(conf), str(out))
    assert (out / "x.txt").read_text() == "x" and not (out / "skip.tmp").exists()


@pytest.mark.slow
async def test_kill_9_then_rerun_gives_exact_copy(tmp_path, keyfile, vstore):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    for i in range(80):
        (src / f"f{i:02d}.bin").write_bytes(rng.randbytes(1024 * 1024 + i))
    root = vstore.local_path(keyfile, "", storage_of)
    proc = subprocess.Popen([*SEALFS, "sync", str(src), vstore.url, *key_args(keyfile)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(os.listdir(root)) < 8 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "sync finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # Nothing half-written under a final name: every visible file is complete and exact.
    vol = await vstore.load(keyfile)
    try:
        listed = await vol.walk("")
        finals = [p for p, _ in listed]
        assert len(finals) < 80
        for p in finals:
            assert await vol.read_file(p) == (src / p).read_bytes(), p
    finally:
        await vol.close()

    r = sealfs("sync", str(src), vstore.url, *key_args(keyfile))
    assert summary(r).endswith("0 errors")
    names = await volume_names(vstore, keyfile)
    assert not list(vstore.root.rglob("sealfs.tmp.sync.*"))   # the rerun removed the killed run's
    left = list(vstore.root.rglob("sealfs.tmp.*"))
    if vstore.kind == "azfiles":
        # A kill inside the backend's create_file (create, fill, rename into place) leaves
        # its reserved in-flight name, which sync's rerun does not claim (it removes only
        # its own); fsck --repair does.
        assert all(p.name.startswith("sealfs.tmp.azx") for p in left), left
        sealfs("fsck", vstore.url, "--repair", *key_args(keyfile))      # exits 0: all repaired
        left = list(vstore.root.rglob("sealfs.tmp.*"))
    assert not left
    assert sorted(names) == sorted(p.name for p in src.iterdir())
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sealfs-sync.0011223344556677.part").write_bytes(b"a user's file")
    sealfs("restore", vstore.url, str(out), *key_args(keyfile))
    assert (out / ".sealfs-sync.0011223344556677.part").read_bytes() == b"a user's file"
    (out / ".sealfs-sync.0011223344556677.part").unlink()
    step = vstore.capabilities.time_resolution_ns
    assert snapshot(out, step) == snapshot(src, step)
    assert summary(sealfs("sync", str(src), vstore.url, *key_args(keyfile))).startswith("sync: 0 copied")


@pytest.mark.slow
async def test_cli_exits_1_when_a_file_fails(tmp_path, keyfile, vstore):
    """A file whose final name is held by an (excluded, so protected) volume directory."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("file")
    (src / "y").write_text("fine")
    sealfs("mkdir", vstore.url, "/x", *key_args(keyfile))
    r = sealfs("sync", str(src), vstore.url, "--exclude", "x/", *key_args(keyfile), check=False)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sync: error: ") and str(src / "x") in lines[0]
    assert summary(r) == "sync: 1 copied (4 bytes), 0 deleted, 0 unchanged, 1 errors"
    names = await volume_names(vstore, keyfile)
    assert sorted(names) == ["x", "y"]          # the directory, y
    assert not list(vstore.root.rglob("sealfs.tmp.*"))   # no temporary left behind
