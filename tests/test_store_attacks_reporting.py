"""The store is untrusted input: attacks planted in the store directory, then the normal
commands run (as root, in subprocesses): every entry that fails authentication, or that
sealfs never writes, is an error named by its ciphertext path, counted, exit code 4,
and everything that is fine is still processed. Nothing hangs, nothing crashes.

The attacks: a flipped bit in a file header, in a directory's sealfs.dir, in an encoded
name; a forged long-name entry whose sidecar repeats a name that is already listed (a
copy of a genuine sidecar, or a short name's encoding); a FIFO under an encoded-looking
name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from sealfs.backends.local import LocalBackend
from sealfs.crypto.format.names import b32encode, long_name_entry, sidecar_of
from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
from sealfs.fs.core.pins import PinStore
from sealfs.fs.core.volume import Volume
from tests.conftest import run_sealfs

CS = 4096
LONG = "L" * 200              # a long-name entry (sidecar)
GOOD = {"top/good.txt": b"good file\n", "top/d/inner.txt": b"inner\n",
        "top/" + LONG: b"long name\n"}
# what each attack damages (plaintext paths, all below /top)
VICTIMS = {"top/bad.txt": b"victim\n", "top/sub/x.txt": b"below a damaged sealfs.dir\n",
           "top/flip.txt": b"its name gets a flipped bit\n"}
TIMEOUT = 30                  # a FIFO opened blocking would hang the command forever


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A pristine volume with good and victim files, and the backend path of each."""
    root = tmp_path_factory.mktemp("attacks")
    keyfile = root / "key"
    keyfile.write_bytes(os.urandom(32))
    keyfile.chmod(0o600)
    store = root / "store"
    store.mkdir()

    async def main() -> dict[str, str]:
        secrets = KeySecrets(keyfile=keyfile)
        pins = PinStore(root / "pins.json")
        await Volume.init(LocalBackend(store), provider_for_init(None, secrets),
                          chunk_size=CS, pins=pins)
        vol = await Volume.load(LocalBackend(store), secrets, pins=pins)
        for d in ("top", "top/d", "top/sub"):
            await vol.mkdir(d)
        for path, data in {**GOOD, **VICTIMS}.items():
            await vol.write_file(path, data)
        bpaths = {}
        for path in [*GOOD, *VICTIMS, "top", "top/sub"]:
            bpaths[path] = (await vol.paths.entry(path))[2]
        await vol.close()
        return bpaths
    return store, keyfile, trio.run(main)


@pytest.fixture
def volume(template, tmp_path):
    store, keyfile, bpaths = template
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy, keyfile, bpaths


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(raw)


def attack_header(store: Path, bpaths: dict) -> tuple[Path, set[str]]:
    target = store / bpaths["top/bad.txt"]
    _flip(target, 40)                       # inside the sealed part of the header
    return target, {"top/bad.txt"}


def attack_dir_record(store: Path, bpaths: dict) -> tuple[Path, set[str]]:
    target = store / bpaths["top/sub"]
    _flip(target / "sealfs.dir", -1)
    return target, {"top/sub", "top/sub/x.txt"}


def attack_name(store: Path, bpaths: dict) -> tuple[Path, set[str]]:
    old = store / bpaths["top/flip.txt"]
    name = old.name
    i = len(name) // 2
    flipped = name[:i] + ("b" if name[i] != "b" else "c") + name[i + 1:]   # still base32
    new = old.with_name(flipped)
    old.rename(new)
    return new, {"top/flip.txt"}


def attack_forged_long_name(store: Path, bpaths: dict) -> tuple[Path, set[str]]:
    """A second entry whose sidecar is a copy of the genuine long name's sidecar."""
    genuine = store / bpaths["top/" + LONG]
    forged = genuine.with_name(long_name_entry(b32encode(os.urandom(200))))
    shutil.copyfile(genuine, forged)
    shutil.copyfile(sidecar_of(str(genuine)), sidecar_of(str(forged)))
    return forged, set()


def attack_short_name_in_sidecar(store: Path, bpaths: dict) -> tuple[Path, set[str]]:
    """A long-name entry whose sidecar holds a short name's encoding: its hash matches."""
    genuine = store / bpaths["top/good.txt"]
    encoded = genuine.name
    forged = genuine.with_name(long_name_entry(encoded))
    shutil.copyfile(genuine, forged)
    Path(sidecar_of(str(forged))).write_text(encoded)
    return forged, set()


def attack_fifo(store: Path, bpaths: dict) -> tuple[Path, set[str]]:
    """A FIFO in place of a file, under its genuine encrypted name."""
    fifo = store / bpaths["top/bad.txt"]
    fifo.unlink()
    os.mkfifo(fifo)
    return fifo, {"top/bad.txt"}


ATTACKS = {
    "header": attack_header,
    "dir-record": attack_dir_record,
    "name": attack_name,
    "forged-long-name": attack_forged_long_name,
    "short-name-in-sidecar": attack_short_name_in_sidecar,
    "fifo": attack_fifo,
}


def sealfs(*args) -> object:
    try:
        return run_sealfs(*args, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sealfs {' '.join(map(str, args[:2]))} hung on the planted entry")


def assert_reported(res, bad: Path, text: str) -> None:
    assert res.code == 4, (res.code, res.err)
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    assert str(bad) in text, text       # named by its ciphertext path


def unaffected(volume_paths: list[str], damaged: set[str]) -> list[str]:
    return sorted(p for p in volume_paths if not any(p == d or p.startswith(d + "/")
                                                     for d in damaged))


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_restore_counts_and_names_every_entry_that_fails(volume, tmp_path, attack):
    store, keyfile, bpaths = volume
    bad, damaged = ATTACKS[attack](store, bpaths)
    dst = tmp_path / "dst"
    res = sealfs("restore", store, dst, "--keyfile", keyfile)
    assert_reported(res, bad, res.err)
    assert re.search(r"restore: \d+ copied .*, 1 errors$", res.text.strip()), res.text
    for path, data in {**GOOD, **VICTIMS}.items():
        if path not in damaged:
            assert (dst / path).read_bytes() == data, path
        else:
            assert not (dst / path).exists()
    assert [p.name for p in (dst / "top").iterdir() if p.name.startswith(".sealfs")] == []


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_sync_counts_the_store_side_and_still_backs_up(volume, tmp_path, attack):
    store, keyfile, bpaths = volume
    bad, _damaged = ATTACKS[attack](store, bpaths)
    src = tmp_path / "src"
    (src / "top").mkdir(parents=True)
    (src / "top" / "new.txt").write_bytes(b"new\n")
    res = sealfs("sync", src, store, "--keyfile", keyfile)
    assert_reported(res, bad, res.err)
    assert re.search(r"sync: 1 copied .*, 1 errors$", res.text.strip()), res.text
    cat = sealfs("cat", store, "/top/new.txt", "--keyfile", keyfile)
    assert (cat.code, cat.out) == (0, b"new\n")


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_ls_recursive_lists_the_good_and_names_the_bad(volume, attack):
    store, keyfile, bpaths = volume
    bad, damaged = ATTACKS[attack](store, bpaths)
    res = sealfs("ls", "-R", store, "/", "--keyfile", keyfile)
    assert_reported(res, bad, res.err)
    assert "1 entries failed authentication" in res.err, res.err
    listed = [line.rstrip("/") for line in res.text.splitlines()]
    assert len(listed) == len(set(listed)), listed          # no name twice
    wanted = unaffected([*GOOD, *VICTIMS, "top", "top/d", "top/sub"], damaged)
    assert sorted(listed) == wanted
    plain = sealfs("ls", store, "/top", "--keyfile", keyfile)
    assert_reported(plain, bad, plain.err)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_rm_recursive_removes_the_good_and_leaves_the_bad(volume, attack):
    store, keyfile, bpaths = volume
    bad, _damaged = ATTACKS[attack](store, bpaths)
    res = sealfs("rm", "-r", store, "/top", "--keyfile", keyfile)
    assert_reported(res, bad, res.err)
    assert "1 entries failed authentication" in res.err, res.err
    for path in GOOD:
        assert not (store / bpaths[path]).exists(), path
    assert os.path.lexists(bad)                               # evidence kept
    left = sealfs("ls", "-R", store, "/", "--keyfile", keyfile)
    assert left.code == 4 and str(bad) in left.err, left.err


@pytest.mark.parametrize("attack", ATTACKS)
def test_fsck_reports_the_entry_by_its_ciphertext_path(volume, attack):
    store, keyfile, bpaths = volume
    bad, _damaged = ATTACKS[attack](store, bpaths)
    res = sealfs("fsck", store, "--keyfile", keyfile)
    assert_reported(res, bad, res.text)
    problems = [line for line in res.text.splitlines() if line.startswith("PROBLEM: ")]
    assert len(problems) == 1 and str(bad) in problems[0], res.text
    assert "1 problems" in res.text.splitlines()[-1]


@pytest.mark.slow
def test_sync_delete_keeps_a_damaged_entry_and_the_directories_holding_it(volume, tmp_path):
    """--delete of a directory with a damaged file inside: the rest goes, the damaged file
    and its directory stay, and the one damaged entry is one error (exit 4)."""
    store, keyfile, bpaths = volume
    bad = store / bpaths["top/sub/x.txt"]
    _flip(bad, 40)
    src = tmp_path / "src"
    (src / "top").mkdir(parents=True)
    (src / "top" / "good.txt").write_bytes(GOOD["top/good.txt"])
    res = sealfs("sync", "--delete", src, store, "--keyfile", keyfile)
    assert_reported(res, bad, res.err)
    assert re.search(r"sync: 1 copied .*, 1 errors$", res.text.strip()), res.text
    assert bad.exists()
    left = sealfs("ls", "-R", store, "/", "--keyfile", keyfile)
    assert [line.rstrip("/") for line in left.text.splitlines()] == ["top", "top/good.txt",
                                                                     "top/sub"]
    assert left.code == 4 and str(bad) in left.err
