"""Extended attributes through the Volume library (no mount): fsck of their blobs, and the
writer order that leaves only orphans after a crash."""

from __future__ import annotations

import errno

import pytest

from sealfs.fs.core.xattrs import XATTR_CREATE, XATTR_REPLACE
from sealfs.fs.tools.fsck import fsck_volume


async def _fsck(vol, repair=False) -> list[str]:
    lines: list[str] = []
    await fsck_volume(vol, repair, lines.append)
    return lines


async def test_rules_without_a_mount(make_volume, open_volume):
    vol = await open_volume(await make_volume())
    try:
        await vol.write_file("f", b"x")
        await vol.setxattr("f", b"user.a", b"1")
        with pytest.raises(OSError) as e:
            await vol.setxattr("f", b"user.a", b"2", flags=XATTR_CREATE)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(OSError) as e:
            await vol.setxattr("f", b"user.b", b"2", flags=XATTR_REPLACE)
        assert e.value.errno == errno.ENODATA
        await vol.setxattr("f", b"trusted.t", b"3")
        assert await vol.listxattr("f", uid=1000) == [b"user.a"]
        with pytest.raises(OSError) as e:
            await vol.getxattr("f", b"trusted.t", uid=1000)
        assert e.value.errno == errno.ENODATA
        with pytest.raises(PermissionError):
            await vol.setxattr("f", b"trusted.u", b"3", uid=1000)
    finally:
        await vol.close()


async def test_fsck_checks_blobs_and_finds_orphans(make_volume, open_volume):
    store = await make_volume()
    vol = await open_volume(store)
    try:
        await vol.write_file("f", b"x")
        await vol.mkdir("d")
        await vol.setxattr("f", b"user.a", b"1")
        await vol.setxattr("d", b"user.b", b"2")
        assert await _fsck(vol) == []
        f_blob = store / await vol.xattr_blob_of("f")
        d_blob = store / await vol.xattr_blob_of("d")
        raw = bytearray(f_blob.read_bytes())
        raw[30] ^= 1
        f_blob.write_bytes(bytes(raw))
        lines = await _fsck(vol)
        assert len(lines) == 1 and lines[0].startswith("PROBLEM: /f: extended attributes")
        # an orphan: the blob of an inode whose flag is off (a crash mid-removal)
        await vol.removexattr("d", b"user.b")
        d_blob.parent.mkdir(parents=True, exist_ok=True)
        d_blob.write_bytes(b"leftover")
        (d_blob.parent / "sealfs.tmp.0123").write_bytes(b"")
        lines = await _fsck(vol)
        assert any("orphaned xattr blob" in line for line in lines)
        assert any("interrupted xattr update" in line for line in lines)
        lines = await _fsck(vol, repair=True)
        assert not d_blob.exists()
        assert not (d_blob.parent / "sealfs.tmp.0123").exists()
    finally:
        await vol.close()


def _acl(*entries: tuple[int, int, int]) -> bytes:
    from sealfs.fs.core import acl
    return acl.pack(list(entries))


@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_a_crash_at_any_step_of_chmod_keeps_mode_and_mask_in_step(kind, make_volume,
                                                                        keyfile, tmp_path):
    """chmod of an inode with an access ACL: at every crash point, the mode a reader
    shows and the ACL's owner, mask and other bits agree, and are the old or the new."""
    from sealfs.crypto.keys.kms import KeySecrets
    from sealfs.fs.core import acl
    from sealfs.fs.core.pins import PinStore
    from sealfs.fs.core.volume import Volume
    from tests.test_crash_ordering import SnapshotRecorder, _install_store, _load

    store = await make_volume()
    secrets = KeySecrets(keyfile=keyfile)
    vol = await _load(store, secrets)
    if kind == "file":
        await vol.write_file("x", b"data")
    else:
        await vol.mkdir("x")
    await vol.setxattr("x", b"user.keep", b"1")
    await vol.setxattr("x", acl.ACCESS, _acl((acl.USER_OBJ, 6, 0), (acl.USER, 6, 4242),
                                             (acl.GROUP_OBJ, 4, 0), (acl.MASK, 6, 0),
                                             (acl.OTHER, 4, 0)))
    assert (await vol.stat("x")).mode & 0o777 == 0o664
    await vol.close()

    rec = SnapshotRecorder(store)
    vol = await Volume.load(rec, secrets, pins=PinStore())
    await vol.setattr("x", mode=0o600)
    await vol.close()
    assert len(rec.states) > 2

    crashed = tmp_path / "crashed"
    seen = set()
    for label, files in rec.states:
        _install_store(crashed, files)
        vol = await _load(crashed, secrets)
        try:
            entries = acl.parse(await vol.getxattr("x", acl.ACCESS))
            mode = (await vol.stat("x")).mode & 0o777
            assert await vol.getxattr("x", b"user.keep") == b"1"
        finally:
            await vol.close()
        bits = acl.mode_of(entries, 0)
        assert bits == mode, f"crash {label}: ACL says {bits:o}, mode {mode:o}"
        assert mode in (0o664, 0o600), f"crash {label}: mode {mode:o}"
        assert (acl.USER, 6, 4242) in entries, f"crash {label}: the named entry went"
        seen.add(mode)
    assert seen == {0o664, 0o600}


async def test_an_open_files_xattrs_are_read_once_per_open(make_volume, open_volume, keyfile):
    """The kernel asks for security.capability before every write: on a file with xattrs
    that costs no backend read while the file is open; setxattr and removexattr keep the
    copy in memory right; the next open reads the blob again (another client's change)."""
    from sealfs.backends.local import LocalBackend
    from sealfs.crypto.keys.kms import KeySecrets
    from sealfs.fs.core.pins import PinStore
    from sealfs.fs.core.volume import Volume

    class Counting(LocalBackend):
        blob_opens = 0

        async def open(self, path, *, write=False, create=False, exclusive=False):
            if path.startswith("x/") and not write:
                type(self).blob_opens += 1
            return await super().open(path, write=write, create=create, exclusive=exclusive)

    store = await make_volume()
    vol = await Volume.load(Counting(store), KeySecrets(keyfile=keyfile), pins=PinStore())
    other = await open_volume(store)
    try:
        await vol.write_file("f", b"")
        await vol.setxattr("f", b"user.a", b"1")
        h = await vol.open("f", write=True)
        Counting.blob_opens = 0
        for i in range(20):
            with pytest.raises(OSError) as e:
                await vol.getxattr("f", b"security.capability", handle=h)
            assert e.value.errno == errno.ENODATA
            await h.write(i * 4096, b"x" * 4096)
        assert Counting.blob_opens == 1
        await vol.setxattr("f", b"user.b", b"2", handle=h)
        assert await vol.getxattr("f", b"user.b", handle=h) == b"2"
        await vol.removexattr("f", b"user.a", handle=h)
        assert await vol.listxattr("f", handle=h) == [b"user.b"]
        assert Counting.blob_opens == 1
        await h.close()
        await other.setxattr("f", b"user.c", b"3")        # another client, while closed
        h = await vol.open("f")
        assert sorted(await vol.listxattr("f", handle=h)) == [b"user.b", b"user.c"]
        await vol.removexattr("f", b"user.b", handle=h)
        await vol.removexattr("f", b"user.c", handle=h)   # the last: the blob goes
        assert await vol.listxattr("f", handle=h) == []
        with pytest.raises(OSError) as e:
            await vol.getxattr("f", b"user.c", handle=h)
        assert e.value.errno == errno.ENODATA
        await h.close()
    finally:
        await other.close()
        await vol.close()
