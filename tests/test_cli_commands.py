"""The `sealfs` CLI surface: init, info, ls, cat, put, get, rm, mkdir, mv; exit codes
and one-line errors. Every command runs as a subprocess with no terminal on stdin."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.conftest import run_sealfs
from tests.storepaths import entry_path, storage_path


def assert_one_line_error(res, code: int, *needles: str) -> None:
    assert res.code == code, (res.code, res.err)
    assert len(res.err_lines) == 1, res.err
    assert "Traceback" not in res.err
    assert res.err_lines[0].startswith("sealfs:"), res.err
    for needle in needles:
        assert needle in res.err, (needle, res.err)


@pytest.fixture
def vol4k(tmp_path, keyfile):
    store = tmp_path / "cli-store"
    res = run_sealfs("init", store, "--keyfile", keyfile, "--chunk-size", "4K")
    assert res.code == 0, res.err
    return store, keyfile


def sf(vol, *args):
    store, keyfile = vol
    return run_sealfs(*args[:1], store, *args[1:], "--keyfile", keyfile)


@pytest.mark.slow
def test_init_creates_a_missing_keyfile_with_mode_0600(tmp_path):
    key = tmp_path / "new.key"
    store = tmp_path / "s"
    res = run_sealfs("init", store, "--keyfile", key)
    assert res.code == 0, res.err
    assert key.exists() and len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cfg = json.loads((store / "sealfs.json").read_text())
    assert cfg["volume_id"] in res.text and "chunk size 64K" in res.text
    assert cfg["chunk_size"] == 64 * 1024
    # a second init of the same store is refused and changes nothing
    before = (store / "sealfs.json").read_bytes()
    res = run_sealfs("init", store, "--keyfile", key)
    assert_one_line_error(res, 2, "already")
    assert (store / "sealfs.json").read_bytes() == before


def test_init_keeps_an_existing_keyfile(tmp_path, keyfile):
    key_bytes = keyfile.read_bytes()
    assert run_sealfs("init", tmp_path / "s", "--keyfile", keyfile).code == 0
    assert keyfile.read_bytes() == key_bytes


@pytest.mark.slow
@pytest.mark.parametrize("text,size,shown", [("4096", 4096, "4K"), ("64K", 65536, "64K"),
                                             ("1M", 1 << 20, "1M")])
def test_init_chunk_size_accepts_bytes_and_suffixes(tmp_path, keyfile, text, size, shown):
    store = tmp_path / "s"
    res = run_sealfs("init", store, "--keyfile", keyfile, "--chunk-size", text)
    assert res.code == 0, res.err
    assert json.loads((store / "sealfs.json").read_text())["chunk_size"] == size
    res = run_sealfs("info", store, "--keyfile", keyfile)
    assert res.code == 0, res.err
    assert f"chunk size:   {shown}" in res.text


@pytest.mark.slow
@pytest.mark.parametrize("text", ["3000", "8M", "1K", "banana", "-4K"])
def test_init_rejects_bad_chunk_sizes_and_creates_no_volume(tmp_path, keyfile, text):
    store = tmp_path / "s"
    res = run_sealfs("init", store, "--keyfile", keyfile, f"--chunk-size={text}")
    assert res.code in (2, 3), (res.code, res.err)
    assert len(res.err_lines) == 1 and "Traceback" not in res.err, res.err
    assert not (store / "sealfs.json").exists()
    assert not (store / "sealfs.dir").exists()


def test_init_without_any_key_source_and_no_tty_is_a_usage_error(tmp_path):
    res = run_sealfs("init", tmp_path / "s")
    assert_one_line_error(res, 2, "--keyfile")
    assert not (tmp_path / "s" / "sealfs.json").exists()


def test_info_shows_the_volume_parameters(vol4k):
    store, _ = vol4k
    cfg = json.loads((store / "sealfs.json").read_text())
    res = sf(vol4k, "info")
    assert res.code == 0, res.err
    assert cfg["volume_id"] in res.text
    assert "keyfile" in res.text and "sealfs v2" in res.text


@pytest.mark.slow
def test_put_cat_get_round_trip_binary_files(vol4k, tmp_path):
    data = os.urandom(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_650_000_000_123_456_789))
    src.chmod(0o640)
    assert sf(vol4k, "put", src, "/data.bin").code == 0
    res = sf(vol4k, "cat", "/data.bin")
    assert res.code == 0 and res.out == data
    out = tmp_path / "out.bin"
    res = sf(vol4k, "get", "/data.bin", out)
    assert res.code == 0, res.err
    assert out.read_bytes() == data
    assert out.stat().st_mtime_ns == 1_650_000_000_123_456_789
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    # get into an existing directory keeps the name
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    assert sf(vol4k, "get", "data.bin", outdir).code == 0
    assert (outdir / "data.bin").read_bytes() == data
    # put over an existing file replaces it (also with an empty file)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sf(vol4k, "put", empty, "/data.bin").code == 0
    res = sf(vol4k, "cat", "/data.bin")
    assert res.code == 0 and res.out == b""


@pytest.mark.slow
def test_put_into_a_directory_uses_the_local_name(vol4k, tmp_path):
    src = tmp_path / "report.txt"
    src.write_bytes(b"hello")
    assert sf(vol4k, "mkdir", "/docs").code == 0
    assert sf(vol4k, "put", src, "/docs").code == 0
    assert sf(vol4k, "cat", "/docs/report.txt").out == b"hello"


@pytest.mark.slow
def test_ls_plain_long_and_recursive(vol4k, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x" * 1234)
    src.chmod(0o600)
    assert sf(vol4k, "mkdir", "-p", "/a/b/c").code == 0
    assert sf(vol4k, "put", src, "/a/b/file").code == 0
    assert sf(vol4k, "put", src, "/top").code == 0
    res = sf(vol4k, "ls")
    assert res.code == 0 and res.text.splitlines() == ["a/", "top"]
    res = sf(vol4k, "ls", "/a/b", "-l")
    lines = res.text.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("drwxr-xr-x") and lines[0].endswith(" c")
    assert lines[1].startswith("-rw-------") and " 1234 " in lines[1] and lines[1].endswith(" file")
    res = sf(vol4k, "ls", "-R")
    assert sorted(res.text.splitlines()) == sorted(["a/", "a/b/", "a/b/c/", "a/b/file", "top"])
    res = sf(vol4k, "ls", "/top", "-l")
    assert res.code == 0 and res.text.strip().endswith("top") and " 1234 " in res.text


@pytest.mark.slow
def test_mkdir_with_and_without_p(vol4k):
    assert sf(vol4k, "mkdir", "/d").code == 0
    assert_one_line_error(sf(vol4k, "mkdir", "/d"), 1, "exists")
    assert_one_line_error(sf(vol4k, "mkdir", "/x/y"), 1, "No such file")
    assert sf(vol4k, "mkdir", "-p", "/d/e/f").code == 0
    assert sf(vol4k, "mkdir", "-p", "/d/e/f").code == 0
    assert sf(vol4k, "ls", "-R").text.splitlines() == ["d/", "d/e/", "d/e/f/"]


@pytest.mark.slow
def test_rm_files_and_directories(vol4k, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"1")
    assert sf(vol4k, "mkdir", "-p", "/d/e").code == 0
    assert sf(vol4k, "put", src, "/d/e/f").code == 0
    assert sf(vol4k, "put", src, "/g").code == 0
    assert sf(vol4k, "rm", "/g").code == 0
    assert_one_line_error(sf(vol4k, "rm", "/d"), 1, "Is a directory")
    assert_one_line_error(sf(vol4k, "rm", "/nope"), 1, "No such file")
    assert sf(vol4k, "rm", "-r", "/d").code == 0
    assert sf(vol4k, "ls").text == ""
    store, keyfile = vol4k
    assert sorted(os.listdir(store)) == ["d", "sealfs.dir", "sealfs.json"]
    root = storage_path(store, keyfile, "")
    assert list(store.glob("d/*/*")) == [root]         # the storages of /d and /d/e went
    assert list(root.iterdir()) == []


@pytest.mark.slow
def test_mv_renames_and_moves_into_directories(vol4k, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"payload")
    assert sf(vol4k, "put", src, "/a").code == 0
    assert sf(vol4k, "mkdir", "/dir").code == 0
    assert sf(vol4k, "mv", "/a", "/b").code == 0
    assert sf(vol4k, "mv", "/b", "/dir").code == 0
    assert sf(vol4k, "ls", "-R").text.splitlines() == ["dir/", "dir/b"]
    assert sf(vol4k, "cat", "/dir/b").out == b"payload"
    assert_one_line_error(sf(vol4k, "mv", "/dir", "/dir/sub"), 1)
    assert_one_line_error(sf(vol4k, "mv", "/missing", "/x"), 1, "No such file")


@pytest.mark.slow
def test_get_leaves_no_local_file_when_the_source_fails_to_authenticate(vol4k, tmp_path):
    store, keyfile = vol4k
    src = tmp_path / "big"
    src.write_bytes(os.urandom(2_500_000))
    assert sf(vol4k, "put", src, "/big").code == 0
    entry = entry_path(store, keyfile, "/big")
    raw = bytearray(entry.read_bytes())
    raw[-5] ^= 0xFF                                   # the final chunk's tag
    entry.write_bytes(raw)
    out = tmp_path / "restored"
    res = sf(vol4k, "get", "/big", out)
    assert_one_line_error(res, 4)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "sealfs-part" in p.name] == []


def test_errors_are_one_line_without_traceback_unless_debug(vol4k):
    res = sf(vol4k, "cat", "/nope")
    assert_one_line_error(res, 1, "No such file or directory", "/nope")
    store, keyfile = vol4k
    res = run_sealfs("--debug", "cat", store, "/nope", "--keyfile", keyfile)
    assert res.code != 0 and "Traceback" in res.err


def test_a_directory_that_is_not_a_volume_is_a_config_error(tmp_path, keyfile):
    (tmp_path / "plain").mkdir()
    res = run_sealfs("ls", tmp_path / "plain", "--keyfile", keyfile)
    assert_one_line_error(res, 3, "not a sealfs volume", "sealfs init")


def test_unknown_commands_and_options_are_usage_errors(vol4k):
    store, keyfile = vol4k
    res = run_sealfs("frobnicate")
    assert res.code == 2 and "Traceback" not in res.err
    res = run_sealfs("ls", store, "--no-such-option", "--keyfile", keyfile)
    assert res.code == 2 and len(res.err_lines) == 1


def test_module_and_console_script_agree(vol4k):
    import shutil
    import subprocess
    import sys
    script = shutil.which("sealfs", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("no sealfs console script next to this interpreter")
    out = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "init" in out.stdout and "cat" in out.stdout


def test_ls_and_cat_handle_names_that_are_not_utf8(tmp_path, keyfile):
    """FUSE may create any byte string as a name (kept with surrogateescape)."""
    import trio

    from sealfs.backends.local import LocalBackend
    from sealfs.crypto.keys.kms import KeySecrets, provider_for_init
    from sealfs.fs.core.pins import PinStore
    from sealfs.fs.core.volume import Volume
    store = tmp_path / "s"
    store.mkdir()

    async def main():
        secrets = KeySecrets(keyfile=keyfile)
        await Volume.init(LocalBackend(store), provider_for_init(None, secrets), pins=PinStore())
        vol = await Volume.load(LocalBackend(store), secrets, pins=PinStore())
        await vol.write_file("latin1-caf\udce9", b"bytes name")
        await vol.close()
    trio.run(main)
    res = run_sealfs("ls", store, "-l", "--keyfile", keyfile)
    assert res.code == 0, res.err
    assert b"latin1-caf" in res.out and len(res.out.splitlines()) == 1
