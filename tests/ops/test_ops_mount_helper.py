"""mount.fuse.sealfs: mount(8)'s calling convention -> a safe `sealfs mount` argv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sealfs.errors import UsageError
from sealfs.fs.fuse.mount_helper import (
    MountHelperError,
    build_mount_argv,
    main,
    parse_helper_args,
    split_options,
)

BASE = ["sealfs", "mount", "smb://h/share", "/mnt/v", "--daemon"]


def test_fstab_line_options() -> None:
    argv = build_mount_argv("smb://h/share", "/mnt/v", "defaults,_netdev,config=vol1")
    assert argv == BASE + ["--config", "vol1"]


def test_file_options_become_flags_rest_pass_through() -> None:
    argv = build_mount_argv(
        "smb://h/share", "/mnt/v",
        "rw,config=vol1,keyfile=/etc/sealfs/vol1.key,passphrase-file=/run/p,"
        "smb_password_file=/run/s,allow_other,nofail,noauto,x-systemd.automount,"
        "comment=x,noatime")
    assert argv == BASE + ["--config", "vol1", "--keyfile", "/etc/sealfs/vol1.key",
                           "--passphrase-file", "/run/p", "--smb-password-file", "/run/s",
                           "-o", "rw,allow_other,noatime"]


def test_list_of_options_and_quotes() -> None:
    argv = build_mount_argv("/srv/store", "/mnt/v", ["ro", 'config="a"', "ro,allow_other"])
    assert argv == ["sealfs", "mount", "/srv/store", "/mnt/v", "--daemon", "--config", "a",
                    "-o", "ro,allow_other"]
    assert split_options('a,b="x,y",c') == ["a", 'b="x,y"', "c"]


def test_no_options() -> None:
    assert build_mount_argv("/s", "/m", "") == ["sealfs", "mount", "/s", "/m", "--daemon"]
    assert build_mount_argv("/s", "/m", "defaults", program="/opt/bin/sealfs")[0] == "/opt/bin/sealfs"


@pytest.mark.parametrize("opt", ["passphrase=hunter2", "password=hunter2", "smb_password=hunter2",
                                 "smb-password=hunter2", "key=hunter2", "secret=hunter2"])
def test_secrets_never_reach_argv(opt: str) -> None:
    with pytest.raises(MountHelperError) as info:
        build_mount_argv("/s", "/m", f"config=v,{opt}")
    assert "hunter2" not in str(info.value)
    assert isinstance(info.value, UsageError)


def test_only_paths_in_argv(tmp_path: Path) -> None:
    """The secret files' contents never appear, only their paths."""
    keyfile = tmp_path / "k"
    keyfile.write_text("TOPSECRET")
    argv = build_mount_argv("/s", "/m", f"keyfile={keyfile},passphrase_file={keyfile}")
    assert str(keyfile) in argv and not any("TOPSECRET" in a for a in argv)


@pytest.mark.parametrize("opts,msg", [
    ("config", "needs a value"), ("config=", "needs a value"),
    ("config=a,config=b", "given twice"),
])
def test_bad_sealfs_options(opts: str, msg: str) -> None:
    with pytest.raises(MountHelperError, match=msg):
        build_mount_argv("/s", "/m", opts)


def test_parse_helper_args() -> None:
    assert parse_helper_args(["S", "/m", "-o", "a,b", "-oc", "-nv", "-t", "fuse.sealfs"]) == (
        "S", "/m", ["a,b", "c"], {"n", "v"})
    assert parse_helper_args(["-sfo", "x", "S", "/m"]) == ("S", "/m", ["x"], {"s", "f"})


@pytest.mark.parametrize("args,msg", [
    (["S"], "usage"), (["S", "/m", "extra"], "usage"), (["S", "/m", "-o"], "needs an argument"),
    (["S", "/m", "-t", "ext4"], "not fuse.sealfs"), (["S", "/m", "-N", "1"], "namespace"),
    (["S", "/m", "-z"], "unknown option"),
])
def test_parse_helper_args_errors(args: list[str], msg: str) -> None:
    with pytest.raises(MountHelperError, match=msg):
        parse_helper_args(args)


def test_main_fake_mode_prints_and_does_not_exec(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALFS_BIN", "/nonexistent/sealfs")
    assert main(["smb://h/s", "/mnt/v", "-f", "-o", "config=vol1,_netdev"]) == 0
    assert "/nonexistent/sealfs mount smb://h/s /mnt/v --daemon --config vol1" in capsys.readouterr().err


def test_main_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["only-one"]) == 1
    assert main(["S", "/m", "-o", "passphrase=hunter2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mount.fuse.sealfs: ") and "hunter2" not in err


def test_main_missing_binary(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SEALFS_BIN", "/nonexistent/sealfs")
    assert main(["S", "/m"]) == 32
    assert "cannot run /nonexistent/sealfs" in capsys.readouterr().err


def test_main_execs_sealfs(tmp_path: Path) -> None:
    """End to end in a child process (main() replaces the process image)."""
    out = tmp_path / "argv.json"
    stub = tmp_path / "sealfs"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"json.dump(sys.argv, open({str(out)!r}, 'w'))\n")
    stub.chmod(0o755)
    env = dict(os.environ, SEALFS_BIN=str(stub))
    res = subprocess.run(
        [sys.executable, "-c", "import sys; from sealfs.fs.fuse.mount_helper import main; sys.exit(main())",
         "smb://h/s", "/mnt/v", "-o", "defaults,_netdev,config=vol1,allow_other"],
        env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text()) == [str(stub), "mount", "smb://h/s", "/mnt/v", "--daemon",
                                           "--config", "vol1", "-o", "allow_other"]


def test_find_sealfs_follows_helper_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/sbin/mount.fuse.sealfs -> /usr/local/bin/mount.sealfs finds /usr/local/bin/sealfs."""
    from sealfs.fs.fuse import mount_helper
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("mount.sealfs", "sealfs"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    link = tmp_path / "mount.fuse.sealfs"
    link.symlink_to(bindir / "mount.sealfs")
    monkeypatch.delenv("SEALFS_BIN", raising=False)
    monkeypatch.setattr(sys, "argv", [str(link)])
    assert mount_helper.find_sealfs() == str(bindir / "sealfs")
    monkeypatch.chdir(bindir)                      # a bare argv[0] never searches the cwd
    monkeypatch.setattr(sys, "argv", ["mount.sealfs"])
    assert mount_helper.find_sealfs() != "sealfs" and mount_helper.find_sealfs() != str(bindir / "sealfs")
