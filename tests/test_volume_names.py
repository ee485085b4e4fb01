"""Plaintext names: unicode kept byte-wise, case kept distinct, 255-byte names in the
long-name form (listed, renamed, unlinked together with their sidecar), ENAMETOOLONG beyond."""

from __future__ import annotations

import errno
import os
import unicodedata

import pytest

from sealfs.crypto.format.constants import LONGNAME_PREFIX, LONGNAME_SIDECAR_SUFFIX
from tests.conftest import backend_names
from tests.storepaths import storage_of


async def names_in(vol, path: str = "") -> list[str]:
    return sorted(name for name, _attr in await vol.listdir(path))


async def test_nfc_and_nfd_names_stay_distinct_byte_wise(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    nfc = unicodedata.normalize("NFC", "caf\u00e9-\u00c5ngstr\u00f6m")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd and nfc.encode() != nfd.encode()
    await vol.write_file(nfc, b"composed")
    await vol.write_file(nfd, b"decomposed")
    await vol.close()
    vol = await open_volume(store)
    listed = await names_in(vol)
    assert sorted([nfc, nfd]) == listed
    assert {n.encode() for n in listed} == {nfc.encode(), nfd.encode()}
    assert await vol.read_file(nfc) == b"composed"
    assert await vol.read_file(nfd) == b"decomposed"
    await vol.unlink(nfd)
    assert await names_in(vol) == [nfc]
    await vol.close()


async def test_unicode_names_of_all_planes_round_trip(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    names = ["\u65e5\u672c\u8a9e\u306e\u30d5\u30a1\u30a4\u30eb", "emoji-\U0001f512\U0001f511",
             "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "sp ace\ttab", "\u00e9" * 127]
    for n in names:
        await vol.mkdir(n)
        await vol.write_file(f"{n}/{n}", n.encode())
    await vol.close()
    vol = await open_volume(store)
    assert await names_in(vol) == sorted(names)
    for n in names:
        assert await names_in(vol, n) == [n]
        assert await vol.read_file(f"{n}/{n}") == n.encode()
    await vol.close()


async def test_names_that_differ_only_in_case_stay_distinct(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    for n in ["readme", "README", "ReadMe", "rEADME"]:
        await vol.write_file(n, n.encode())
    await vol.close()
    vol = await open_volume(store)
    assert await names_in(vol) == sorted(["readme", "README", "ReadMe", "rEADME"])
    for n in ["readme", "README", "ReadMe", "rEADME"]:
        assert await vol.read_file(n) == n.encode()
    entries = [e for e in os.listdir(store / await storage_of(vol, "")) if not e.startswith("sealfs.")]
    assert len({e.lower() for e in entries}) == 4
    await vol.close()


def _long_entries(store):
    names = backend_names(store)
    mains = [n for n in names if n.startswith(LONGNAME_PREFIX) and not n.endswith(LONGNAME_SIDECAR_SUFFIX)]
    sidecars = [n for n in names if n.startswith(LONGNAME_PREFIX) and n.endswith(LONGNAME_SIDECAR_SUFFIX)]
    return mains, sidecars


@pytest.mark.parametrize("char", ["a", "\u00e9", "\U0001f512"], ids=["ascii", "2-byte", "4-byte"])
async def test_255_byte_names_use_the_long_name_form_and_round_trip(char, make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    width = len(char.encode())
    name = char * (255 // width) + "z" * (255 % width)
    assert len(name.encode()) == 255
    await vol.write_file(name, b"long content")
    await vol.mkdir("d")
    mains, sidecars = _long_entries(store)
    assert len(mains) == 1 and sidecars == [mains[0] + LONGNAME_SIDECAR_SUFFIX]
    assert all(len(n) <= 255 for n in backend_names(store))
    await vol.close()

    vol = await open_volume(store)
    assert await names_in(vol) == sorted([name, "d"])
    assert await vol.read_file(name) == b"long content"
    assert (await vol.stat(name)).size == 12
    # rename long -> long (in another directory), then long -> short
    other = "y" * 255
    await vol.rename(name, f"d/{other}")
    assert await names_in(vol) == ["d"]
    assert await names_in(vol, "d") == [other]
    mains, sidecars = _long_entries(store)
    assert len(mains) == 1 and len(sidecars) == 1           # old sidecar removed
    await vol.rename(f"d/{other}", "short")
    assert _long_entries(store) == ([], [])
    assert await vol.read_file("short") == b"long content"
    # short -> long, then unlink removes the entry and its sidecar
    await vol.rename("short", name)
    assert await vol.read_file(name) == b"long content"
    await vol.unlink(name)
    assert _long_entries(store) == ([], [])
    assert await names_in(vol) == ["d"]
    await vol.close()


async def test_long_named_directories_hold_files_and_rmdir_removes_the_sidecar(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    dname = "D" * 250
    await vol.mkdir(dname)
    await vol.write_file(f"{dname}/inner", b"x")
    await vol.close()
    vol = await open_volume(store)
    assert await names_in(vol) == [dname]
    assert await names_in(vol, dname) == ["inner"]
    await vol.unlink(f"{dname}/inner")
    await vol.rmdir(dname)
    assert await names_in(vol) == []
    assert _long_entries(store) == ([], [])
    await vol.close()


async def test_hard_link_to_a_long_name_and_symlink_with_a_long_name(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.write_file("orig", b"shared")
    await vol.link("orig", "h" * 255)
    await vol.symlink("s" * 255, "orig")
    await vol.close()
    vol = await open_volume(store)
    assert await names_in(vol) == sorted(["orig", "h" * 255, "s" * 255])
    assert await vol.read_file("h" * 255) == b"shared"
    assert await vol.readlink("s" * 255) == "orig"
    await vol.close()


async def test_names_longer_than_255_bytes_fail_with_enametoolong(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.write_file("exists", b"")
    for bad in ["a" * 256, "\u00e9" * 128, "\U0001f512" * 64]:
        assert len(bad.encode()) > 255
        calls = [vol.create(bad), vol.mkdir(bad), vol.symlink(bad, "x"), vol.rename("exists", bad),
                 vol.link("exists", bad), vol.stat(bad), vol.open(bad)]
        for call in calls:
            with pytest.raises(OSError) as info:
                await call
            assert info.value.errno == errno.ENAMETOOLONG
    assert await names_in(vol) == ["exists"]
    await vol.close()


async def test_invalid_names_are_rejected(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    for bad in ["a\0b", ".."]:
        with pytest.raises(OSError) as info:
            await vol.create(bad)
        assert info.value.errno == errno.EINVAL
    await vol.close()
