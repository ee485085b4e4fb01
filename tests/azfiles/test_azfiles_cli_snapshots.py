"""`sealfs snapshot`, `--snapshot ID`, `sync --snapshot` and soft delete in `info`/`init`, as
subprocesses against the Azure Files test server (a share of its own per test)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.azfiles.conftest import OwnShare
from tests.conftest import run_sealfs

pytestmark = pytest.mark.azfiles


@pytest.fixture
def vol(own_share: OwnShare, keyfile: Path, tmp_path: Path):
    """An initialised volume on its own share; returns (url, auth args)."""
    key_file = tmp_path / "account.key"
    key_file.write_text(own_share.server.account_key)
    key_file.chmod(0o600)
    auth = ["--keyfile", keyfile, "--azure-account-key-file", key_file]
    res = run_sealfs("init", own_share.url, *auth, "--chunk-size", "4K")
    assert res.code == 0, res.err
    return own_share.url, auth


def _put(url: str, auth: list, tmp_path: Path, path: str, data: bytes) -> None:
    src = tmp_path / "upload"
    src.write_bytes(data)
    res = run_sealfs("put", url, src, path, *auth)
    assert res.code == 0, res.err


def test_create_list_read_and_delete_a_snapshot(vol, own_share: OwnShare, tmp_path: Path) -> None:
    url, auth = vol
    _put(url, auth, tmp_path, "notes.txt", b"version one")
    res = run_sealfs("snapshot", "create", url, "--tag", "why=test", *auth)
    assert res.code == 0, res.err
    snap = res.text.strip().splitlines()[-1]              # the id is the last line
    _put(url, auth, tmp_path, "notes.txt", b"version two, longer")
    _put(url, auth, tmp_path, "later.txt", b"after the snapshot")

    res = run_sealfs("snapshot", "list", url, *auth)
    assert res.code == 0, res.err
    line = next(row for row in res.text.splitlines() if row.startswith(snap))
    assert "why=test" in line and "sealfs=manual" in line and "UTC" in line

    res = run_sealfs("cat", url, "notes.txt", "--snapshot", snap, *auth)
    assert res.code == 0 and res.out == b"version one", res.err
    res = run_sealfs("ls", url, "--snapshot", snap, *auth)
    assert res.code == 0 and "notes.txt" in res.text and "later.txt" not in res.text, res.err
    out = tmp_path / "got.txt"
    res = run_sealfs("get", url, "notes.txt", out, "--snapshot", snap, *auth)
    assert res.code == 0 and out.read_bytes() == b"version one", res.err
    dest = tmp_path / "restored"
    dest.mkdir()
    res = run_sealfs("restore", url, dest, "--snapshot", snap, *auth)
    assert res.code == 0, res.err
    assert sorted(os.listdir(dest)) == ["notes.txt"] and (dest / "notes.txt").read_bytes() == b"version one"
    res = run_sealfs("info", url, "--snapshot", snap, *auth)
    assert res.code == 0 and f"snapshot {snap}" in res.text, res.err

    res = run_sealfs("cat", url, "notes.txt", *auth)        # the live volume moved on
    assert res.out == b"version two, longer"

    res = run_sealfs("snapshot", "delete", url, snap, *auth)
    assert res.code == 0, res.err
    assert snap not in run_sealfs("snapshot", "list", url, *auth).text
    res = run_sealfs("cat", url, "notes.txt", "--snapshot", snap, *auth)
    assert res.code != 0 and "does not exist" in res.err
    res = run_sealfs("snapshot", "delete", url, "not-an-id", *auth)
    assert res.code == 2 and "snapshot id" in res.err


def test_sync_snapshot_after_success_only(vol, own_share: OwnShare, tmp_path: Path) -> None:
    url, auth = vol
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"first")
    res = run_sealfs("sync", src, url, "--snapshot", *auth)
    assert res.code == 0, res.err
    snap = res.text.strip().splitlines()[-1].rpartition(" ")[2]
    listing = run_sealfs("snapshot", "list", url, *auth).text
    line = next(row for row in listing.splitlines() if row.startswith(snap))
    digest = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:32]
    assert "sealfs=sync" in line and f"source={digest}" in line and "time=" in line
    assert str(src) not in listing and "src" not in line.replace("source=", "")   # no path in metadata

    (src / "a.txt").write_bytes(b"second")
    before = len(own_share.server.snapshots)
    # One file's upload fails (a 400 is never retried): the sync reports it, takes no snapshot.
    own_share.server.fail_next("create_file", 400, code="InvalidHeaderValue")
    res = run_sealfs("sync", src, url, "--snapshot", *auth)
    assert res.code == 1 and "1 errors" in res.text, (res.text, res.err)
    assert "no snapshot" in res.err
    assert len(own_share.server.snapshots) == before
    res = run_sealfs("sync", src, url, "--snapshot", *auth)          # a clean rerun takes one
    assert res.code == 0 and len(own_share.server.snapshots) == before + 1, res.err
    res = run_sealfs("cat", url, "a.txt", "--snapshot", snap, *auth)
    assert res.out == b"first", res.err


def test_sync_snapshot_is_refused_up_front_where_the_store_cannot(tmp_path: Path, keyfile: Path) -> None:
    store = tmp_path / "store"
    assert run_sealfs("init", store, "--keyfile", keyfile, "--chunk-size", "4K").code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    res = run_sealfs("sync", src, store, "--snapshot", "--keyfile", keyfile)
    assert res.code == 2 and "cannot make snapshots" in res.err
    assert run_sealfs("ls", store, "--keyfile", keyfile).text.strip() == ""     # nothing copied
    res = run_sealfs("ls", store, "--snapshot", "x", "--keyfile", keyfile)
    assert res.code == 2 and "no snapshots" in res.err


def test_info_shows_soft_delete_and_init_warns_when_off(own_share: OwnShare, keyfile: Path,
                                                          tmp_path: Path) -> None:
    srv = own_share.server
    key_file = tmp_path / "account.key"
    key_file.write_text(srv.account_key)
    auth = ["--keyfile", keyfile, "--azure-account-key-file", key_file]
    res = run_sealfs("init", own_share.url, *auth)
    assert res.code == 0 and "soft delete" not in res.err, res.err
    res = run_sealfs("info", own_share.url, *auth)
    assert "soft delete:  on (7 days)" in res.text, res.err

    srv.share_soft_delete = (False, 0)
    res = run_sealfs("info", own_share.url, *auth)
    assert "soft delete:  off" in res.text
    res = run_sealfs("init", own_share.url + "/second", *auth)
    assert res.code == 0, res.err
    warnings = [line for line in res.err.splitlines() if "soft delete" in line]
    assert len(warnings) == 1 and "off" in warnings[0]

    srv.share_soft_delete = None
    res = run_sealfs("init", own_share.url + "/third", *auth)
    assert res.code == 0 and "soft delete is unknown" in res.err, res.err


def test_a_read_only_snapshot_mount_beside_the_live_mount(vol, tmp_path: Path) -> None:
    import errno

    from tests.mounting import Mount
    url, auth = vol
    _put(url, auth, tmp_path, "doc.txt", b"then")
    snap = run_sealfs("snapshot", "create", url, *auth).text.strip().splitlines()[-1]
    _put(url, auth, tmp_path, "doc.txt", b"now, changed")
    env = dict(os.environ, SEALFS_STATE_DIR=str(tmp_path / "state"), SEALFS_RUN_DIR=str(tmp_path / "run"))
    extra = tuple(map(str, auth[2:]))
    keyfile = Path(auth[1])
    with Mount(url, tmp_path / "live", keyfile, env, extra=extra) as live, \
            Mount(url, tmp_path / "then", keyfile, env, extra=(*extra, "--snapshot", snap)) as then:
        assert (live.mountpoint / "doc.txt").read_bytes() == b"now, changed"
        assert (then.mountpoint / "doc.txt").read_bytes() == b"then"
        options = next(line.split()[3] for line in Path("/proc/mounts").read_text().splitlines()
                       if line.split()[1] == str(then.mountpoint))
        assert "ro" in options.split(",")
        for attempt in (lambda: (then.mountpoint / "doc.txt").write_bytes(b"x"),
                        lambda: (then.mountpoint / "new").write_bytes(b"x"),
                        lambda: (then.mountpoint / "d").mkdir(),
                        lambda: (then.mountpoint / "doc.txt").unlink()):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS
        (live.mountpoint / "more.txt").write_bytes(b"live writes go on")
        assert not (then.mountpoint / "more.txt").exists()
    assert run_sealfs("cat", url, "more.txt", *auth).out == b"live writes go on"
