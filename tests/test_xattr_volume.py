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
