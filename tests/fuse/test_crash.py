"""kill -9 of the mount mid-workload, and tampered ciphertext: never silent damage.

After a crash every file must still be readable (no EIO), have a size it really had
at some point, and files fsync'd before the workload must be intact. A flipped byte
in a chunk must read as EIO (never as wrong bytes) with a log line naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sealfs.crypto.format.layout import slot_offset, stored_size
from tests.mounting import Mount, init_store, sealfs

pytestmark = pytest.mark.fuse

CHUNK = 64 * 1024

WORKLOAD = textwrap.dedent("""
    import json, os, random, sys
    root, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    names = [f"w{i}" for i in range(6)]
    sizes = {}
    log = open(log_path, "a", buffering=1)

    def note(**event):
        log.write(json.dumps(event) + "\\n")        # before the operation: it may never finish

    def path(n):
        return os.path.join(root, n)

    while True:
        name = rng.choice(names)
        op = rng.choice(["append", "overwrite", "grow", "shrink", "rename", "create"])
        size = sizes.get(name)
        if size is None or op == "create":
            data = os.urandom(rng.randint(0, 3 * 65536))
            note(op="create", name=name, sizes=[0, len(data)])
            with open(path(name), "wb") as f:
                f.write(data)
            sizes[name] = len(data)
        elif op == "append":
            n = rng.randint(1, 100_000)
            note(op=op, name=name, sizes=[size + n])
            with open(path(name), "ab") as f:
                f.write(os.urandom(n))
            sizes[name] = size + n
        elif op == "overwrite":
            off = rng.randint(0, size)
            n = rng.randint(1, 100_000)
            new = max(size, off + n)
            note(op=op, name=name, sizes=[new])
            with open(path(name), "r+b") as f:
                f.seek(off)
                f.write(os.urandom(n))
            sizes[name] = new
        elif op in ("grow", "shrink"):
            new = size + rng.randint(1, 200_000) if op == "grow" else rng.randint(0, size)
            note(op=op, name=name, sizes=[new])
            os.truncate(path(name), new)
            sizes[name] = new
        else:
            dst = rng.choice([n for n in names if n != name])
            note(op=op, name=dst, sizes=[size], source=name)
            os.rename(path(name), path(dst))
            sizes[dst] = sizes.pop(name)
""")


def allowed_sizes(log: Path) -> dict[str, set[int]]:
    allowed: dict[str, set[int]] = {}
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue                           # the last line may be cut short
        allowed.setdefault(event["name"], set()).update(event["sizes"])
    return allowed


def read_all(root: Path) -> dict[str, bytes]:
    """Every file under root, read in full; any OSError (EIO above all) fails the test."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            try:
                out[str(p.relative_to(root))] = p.read_bytes()
            except OSError as exc:
                raise AssertionError(f"{p} unreadable after a crash: {exc}") from None
    return out


def crash_during(mount: Mount, workload: list[str], after: float) -> None:
    """Run a workload script against the mount, kill -9 the mount after some seconds of
    it, then mount again."""
    proc = subprocess.Popen([sys.executable, *workload],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    assert proc.poll() is None, "the workload stopped before the crash"
    mount.kill()
    proc.kill()
    proc.wait(30)
    mount.start()


@pytest.fixture
def local_mount(tmp_path: Path, keyfile: Path, mount_env: dict):
    store = tmp_path / "store"
    init_store(store, keyfile, "64K", env=mount_env)
    mount = Mount(store, tmp_path / "mnt", keyfile, env=mount_env).start()
    try:
        yield mount
    finally:
        mount.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_mid_workload(local_mount: Mount, tmp_path: Path, seed: int):
    mount = local_mount
    rng = random.Random(seed)
    work = mount.mountpoint / "work"
    work.mkdir()
    durable = {f"durable{i}": os.urandom(rng.randint(0, 3 * CHUNK)) for i in range(4)}
    for name, data in durable.items():
        fd = os.open(work / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
    dfd = os.open(work, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)

    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    log = tmp_path / "ops.log"
    for round_ in range(2):
        crash_during(mount, [str(script), str(work), str(log), str(seed * 10 + round_)],
                     rng.uniform(0.3, 2.0))

        files = read_all(work)
        allowed = allowed_sizes(log)
        assert len(log.read_text().splitlines()) > 5 * (round_ + 1), "the workload barely ran"
        for name, data in durable.items():
            assert files.get(name) == data, f"fsync'd {name} damaged by the crash"
        for name, data in files.items():
            if name in durable:
                continue
            assert name in allowed, f"{name} exists but was never created"
            assert len(data) in allowed[name], (
                f"{name} has size {len(data)}, never one of its sizes {sorted(allowed[name])}")
        for name in files:                      # the tree stays writable after recovery
            with open(work / name, "ab") as f:
                f.write(b"")
    # Offline, every chunk authenticates: nothing is left for fsck but leftovers it removes
    # (in-flight creations, journals of files the recovery rounds did not reopen).
    mount.stop()
    r = sealfs("fsck", str(mount.store), "--keyfile", str(mount.keyfile), "--repair",
               env=mount.env, check=False)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert all("leftover" in line or "journal" in line for line in out.splitlines()
               if line.startswith("REPAIRED")), out
    mount.start()


def test_flipped_ciphertext_byte_reads_as_eio_and_is_logged(local_mount: Mount):
    mount = local_mount
    size = 3 * CHUNK + 1234
    data = os.urandom(size)
    victim = mount.mountpoint / "victim.bin"
    victim.write_bytes(data)
    (mount.mountpoint / "bystander").write_bytes(b"fine")
    mount.stop()

    candidates = [p for p in mount.store_dir.rglob("*")
                  if p.is_file() and p.stat().st_size == stored_size(size, CHUNK)]
    assert len(candidates) == 1, candidates
    backend = candidates[0]
    raw = bytearray(backend.read_bytes())
    raw[slot_offset(1, CHUNK) + 5000] ^= 0x01          # inside chunk 1's ciphertext
    backend.write_bytes(bytes(raw))
    log_start = mount.log.stat().st_size

    mount.start()
    with open(victim, "rb") as f:
        assert f.read(CHUNK) == data[:CHUNK]            # chunk 0 is untouched
        f.seek(CHUNK + 4000)
        with pytest.raises(OSError) as info:
            f.read(100)
        assert info.value.errno == errno.EIO
        f.seek(2 * CHUNK)
        assert f.read(CHUNK) == data[2 * CHUNK:3 * CHUNK]
    with pytest.raises(OSError) as info:
        victim.read_bytes()
    assert info.value.errno == errno.EIO
    assert (mount.mountpoint / "bystander").read_bytes() == b"fine"
    new_log = mount.log.read_bytes()[log_start:].decode(errors="replace")
    lines = [line for line in new_log.splitlines() if "victim.bin" in line]
    assert lines, f"no log line names victim.bin:\n{new_log}"


OVERWRITER = textwrap.dedent("""
    import os, random, sys
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    size, span, chunk = 4 << 20, 1 << 20, 65536
    version = rng.randrange(1, 250)
    while True:
        off = rng.randrange(0, (size - span) // chunk + 1) * chunk
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, bytes([version]) * span, off)
        os.close(fd)                     # the flush: 16 chunks rewritten where they lie
        version = version % 250 + 1
""")


def test_kill_9_during_in_place_rewrites_leaves_every_chunk_whole(local_mount: Mount, tmp_path: Path):
    """Each rewrite fills whole chunks with one byte value: after any crash every chunk must
    read (no EIO) and be uniform, one version or another. A kill rarely lands inside the
    ~0.1 ms pwrite that could tear a slot, so this is the end-to-end check of chunk-level
    atomicity; tests/test_crash_ordering.py tears every write at every page boundary."""
    mount = local_mount
    target = mount.mountpoint / "big"
    target.write_bytes(bytes(4 << 20))
    script = tmp_path / "overwriter.py"
    script.write_text(OVERWRITER)
    rng = random.Random(7)
    for round_ in range(6):
        crash_during(mount, [str(script), str(target), str(round_)], rng.uniform(0.3, 1.2))
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise AssertionError(f"round {round_}: unreadable after a crash: {exc}") from None
        assert len(data) == 4 << 20
        for i in range(0, len(data), CHUNK):
            piece = data[i:i + CHUNK]
            assert piece == piece[:1] * CHUNK, f"round {round_}: chunk {i // CHUNK} is mixed"
