"""Previous versions over SMB: a real smbd serving vfs_shadow_copy2 snapshot directories
made by the test. Listed with FSCTL_SRV_ENUMERATE_SNAPSHOTS, read with the timewarp token
in every CREATE; SMB cannot make or delete them."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from sealfs.backends.registry import open_backend
from tests.conftest import run_sealfs
from tests.servers.samba import new_shadow_store, shadow_copy2_installed, take_shadow_copy

pytestmark = pytest.mark.smb


@pytest.fixture(autouse=True)
def _shadow_copy2_installed() -> None:
    if not shadow_copy2_installed():
        pytest.fail("Samba's vfs_shadow_copy2 is not installed (apt-get install samba-vfs-modules)")


def test_previous_versions_are_listed_and_read_never_made(samba, keyfile: Path, tmp_path: Path) -> None:
    store = new_shadow_store(samba)
    url, env = store.url, {"SEALFS_SMB_PASSWORD": samba.password}
    auth = ["--keyfile", keyfile]

    def sealfs(*args):
        return run_sealfs(*args, *auth, env=env)

    assert sealfs("init", url, "--chunk-size", "4K").code == 0
    src = tmp_path / "v1"
    src.write_bytes(b"version one")
    assert sealfs("put", url, src, "notes.txt").code == 0
    older = take_shadow_copy(store, time.time() - 7200)
    src.write_bytes(b"version two")
    assert sealfs("put", url, src, "notes.txt").code == 0
    assert sealfs("put", url, src, "later.txt").code == 0
    newer = take_shadow_copy(store, time.time() - 3600)

    res = sealfs("snapshot", "list", url)
    assert res.code == 0, res.err
    ids = [line.split()[0] for line in res.text.splitlines()]
    assert ids == [older, newer]                      # oldest first

    res = sealfs("cat", url, "notes.txt", "--snapshot", older)
    assert res.code == 0 and res.out == b"version one", res.err
    res = sealfs("ls", url, "--snapshot", older)
    assert res.code == 0 and "later.txt" not in res.text and "notes.txt" in res.text, res.err
    res = sealfs("ls", url, "--snapshot", newer)
    assert "later.txt" in res.text, res.err
    res = sealfs("cat", url, "notes.txt")
    assert res.out == b"version two"
    dest = tmp_path / "restored"
    dest.mkdir()
    res = sealfs("restore", url, dest, "--snapshot", older)
    assert res.code == 0 and (dest / "notes.txt").read_bytes() == b"version one", res.err

    for args in (("snapshot", "create", url), ("snapshot", "delete", url, older)):
        res = sealfs(*args)
        assert res.code == 1 and "snapshots are created by the server" in res.err, res.err
        assert "Azure Files REST store" in res.err
    res = sealfs("cat", url, "notes.txt", "--snapshot", "2024-01-01")
    assert res.code == 2 and "@GMT" in res.err


async def test_a_previous_version_is_read_only(samba) -> None:
    store = new_shadow_store(samba)
    (store.local / "f").write_bytes(b"old")
    token = take_shadow_copy(store, time.time() - 60)
    (store.local / "f").write_bytes(b"new")
    (store.local / "g").write_bytes(b"later")
    options = store.options()
    options.snapshot = token
    at = open_backend(store.url, options)
    try:
        h = await at.open("f")
        assert await at.read(h, 0, 10) == b"old"
        await at.close(h)
        assert sorted(await at.listdir("")) == ["f"]
        for attempt in (lambda: at.open("f", write=True), lambda: at.mkdir("d"), lambda: at.unlink("f")):
            with pytest.raises(PermissionError) as info:
                await attempt()
            assert info.value.errno == errno.EROFS
        # Underneath the read-only wrapper, the server itself refuses to write a previous version.
        with pytest.raises(OSError):
            await at.inner.mkdir("d")
    finally:
        await at.aclose()
    assert (store.local / "f").read_bytes() == b"new" and not (store.local / "d").exists()
