"""Attacks planted in the store, seen through a real mount (THREAT_MODEL.md, "Reaction to
an integrity failure"): a name whose header or sealfs.dir fails authentication is listed
and every stat and open of it is EIO; a name that does not decrypt is left out with an
ERROR line naming its ciphertext path; a forged long-name entry never lists a name twice;
a planted FIFO neither hangs the listing nor the mount. The rest of the directory works.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.names import b32encode, long_name_entry, sidecar_of
from sealfs.crypto.keys.kms import KeySecrets
from sealfs.fs.core.volume import Volume

LONG = "L" * 200
FILES = {"top/good.txt": b"good\n", "top/bad.txt": b"bad\n", "top/sub/x.txt": b"x\n",
         "top/flip.txt": b"flip\n", "top/" + LONG: b"long\n"}


def _populate(mounted) -> None:
    mnt = mounted.mountpoint
    (mnt / "top" / "sub").mkdir(parents=True)
    for path, data in FILES.items():
        (mnt / path).write_bytes(data)


def _bpaths(store_dir: Path, keyfile: Path) -> dict[str, Path]:
    async def main() -> dict[str, Path]:
        vol = await Volume.load(LocalBackend(store_dir), KeySecrets(keyfile=keyfile))
        try:
            return {p: store_dir / (await vol.paths.entry(p))[2] for p in [*FILES, "top", "top/sub"]}
        finally:
            await vol.close()
    return trio.run(main)


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(raw)


def _run(*cmd: str, on_hang=None) -> subprocess.CompletedProcess:
    """A command on the mount, in a child with a timeout: a hung request cannot hang the
    test. A FUSE request already taken by the mount cannot be killed: on_hang must make
    the mount answer (or go away) before the child can be reaped."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        if on_hang is not None:
            on_hang()
        proc.kill()
        proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung on the planted entry")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.store_dir
def test_damaged_entries_are_listed_as_eio_or_left_out_and_logged(mounted, keyfile):
    _populate(mounted)
    mounted.stop()
    b = _bpaths(mounted.store_dir, keyfile)
    _flip(b["top/bad.txt"], 40)                                 # header
    _flip(b["top/sub"] / "sealfs.dir", -1)                      # directory record
    flip = b["top/flip.txt"]                                    # a bit of the name
    i = len(flip.name) // 2
    flipped = flip.with_name(flip.name[:i] + ("b" if flip.name[i] != "b" else "c")
                             + flip.name[i + 1:])
    flip.rename(flipped)
    genuine = b["top/" + LONG]                                  # a forged second long name
    forged = genuine.with_name(long_name_entry(b32encode(os.urandom(200))))
    shutil.copyfile(genuine, forged)
    shutil.copyfile(sidecar_of(str(genuine)), sidecar_of(str(forged)))
    mounted.start()

    top = mounted.mountpoint / "top"
    ls = _run("ls", "-1", str(top))
    assert ls.returncode == 0, ls.stderr
    assert ls.stdout.splitlines() == sorted([LONG, "bad.txt", "good.txt", "sub"])
    for name in ("bad.txt", "sub"):
        with pytest.raises(OSError) as exc:
            os.stat(top / name)
        assert exc.value.errno == errno.EIO, name
    with pytest.raises(OSError) as exc, open(top / "bad.txt", "rb"):
        pass
    assert exc.value.errno == errno.EIO
    with pytest.raises(OSError) as exc:
        os.listdir(top / "sub")
    assert exc.value.errno == errno.EIO
    assert (top / "good.txt").read_bytes() == b"good\n"
    assert (top / LONG).read_bytes() == b"long\n"
    with pytest.raises(FileNotFoundError):
        os.stat(top / "flip.txt")
    log = mounted.log.read_text(errors="replace")
    errors = [line for line in log.splitlines() if "ERROR" in line and "readdir" in line]
    for bad in (flipped, forged, b["top/bad.txt"], b["top/sub"]):
        rel = str(bad.relative_to(mounted.store_dir))
        assert any(rel in line for line in errors), (rel, log[-3000:])


@pytest.mark.parametrize("backend_kind", ["local"])
def test_a_planted_fifo_neither_hangs_the_listing_nor_the_mount(mounted, keyfile):
    _populate(mounted)
    mounted.stop()
    b = _bpaths(mounted.store_dir, keyfile)
    b["top/bad.txt"].unlink()
    os.mkfifo(b["top/bad.txt"])                 # under the file's genuine encrypted name
    mounted.start()

    def unstick() -> None:
        # the mount is stuck opening the FIFO (on its event loop): free it, and kill it
        # so that neither the child nor teardown waits on it
        _release_readers(b["top/bad.txt"])
        mounted.kill()

    top = mounted.mountpoint / "top"
    ls = _run("ls", "-1", str(top), on_hang=unstick)
    assert ls.returncode == 0, ls.stderr
    assert "good.txt" in ls.stdout.splitlines()
    st = _run("stat", str(top / "bad.txt"), on_hang=unstick)
    assert st.returncode != 0 and "Input/output error" in st.stderr, st.stderr
    cat = _run("cat", str(top / "good.txt"), on_hang=unstick)
    assert (cat.returncode, cat.stdout) == (0, "good\n")
    rel = str(b["top/bad.txt"].relative_to(mounted.store_dir))
    assert rel in mounted.log.read_text(errors="replace")


def _release_readers(fifo: Path) -> None:
    """If the mount did open the FIFO (and block on it), give it end-of-file so that it
    can unmount: opening the write end without blocking works only while a reader waits."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass                    # ENXIO: nobody is reading it, as it should be
