"""Format 2's layout: store paths bounded by a constant, a store depth that does not grow
with the visible depth, O(1) directory rename, and a tree whose shape the store hides."""

from __future__ import annotations

import os

import pytest

from sealfs.crypto.format.constants import STORAGE_DIR
from sealfs.crypto.format.locator import is_storage_path
from tests.storepaths import longest_store_path, storage_of, store_depth

STORE_PATH_BOUND = 300


async def build(vol, depth: int, width: int) -> str:
    """depth directories of width-byte names, each holding a file, a long-named file (255
    bytes: the long-name form and its sidecar) and a long-named subdirectory; returns the
    deepest directory's path."""
    path = ""
    for level in range(depth):
        path += "/" + f"{level:03d}".ljust(width, "n")
        await vol.mkdir(path)
        await vol.write_file(path + "/" + "f" * width, b"x")
        await vol.write_file(path + "/" + "L" * 255, b"y")
        await vol.mkdir(path + "/" + "D" * 255)
    return path


async def test_the_longest_store_path_is_bounded_whatever_the_depth(make_volume, open_volume):
    """35 levels of 100-byte names (3.5 KB of visible path) plus 255-byte names at every
    level: every store path stays within the constant bound."""
    store = await make_volume(4096)
    vol = await open_volume(store)
    try:
        deepest = await build(vol, 35, 100)
        assert len(deepest.encode()) > 3500
        assert await vol.read_file(deepest + "/" + "f" * 100) == b"x"
    finally:
        await vol.close()
    longest = longest_store_path(store)
    assert longest <= STORE_PATH_BOUND, longest
    vol = await open_volume(store)
    try:
        names = [p for p, _ in await vol.walk()]
        assert len(names) == 35 * 4
    finally:
        await vol.close()


@pytest.mark.parametrize("width", [10, 127])
async def test_the_store_depth_does_not_grow_with_the_visible_depth(make_volume, open_volume,
                                                                    width):
    depths = []
    for depth in (1, 3, 30):
        store = await make_volume(4096)
        vol = await open_volume(store)
        try:
            await build(vol, depth, width)
        finally:
            await vol.close()
        depths.append(store_depth(store))
    # d / fan-out / storage / stub / sealfs.dir, however deep the tree
    assert depths == [5, 5, 5]


async def test_every_storage_is_flat_under_d_and_the_store_root_holds_no_names(
        make_volume, open_volume):
    """Without the key the store shows storages side by side: which one is inside which
    cannot be read from where they are."""
    store = await make_volume(4096)
    vol = await open_volume(store)
    try:
        await build(vol, 4, 20)
        await vol.mkdir("/other")
    finally:
        await vol.close()
    assert sorted(os.listdir(store)) == [STORAGE_DIR, "sealfs.dir", "sealfs.json"]
    storages = sorted(p.relative_to(store).as_posix() for p in store.glob(f"{STORAGE_DIR}/*/*"))
    assert all(is_storage_path(s) for s in storages)
    assert len(storages) == 1 + 4 * 2 + 1          # the root, each level and its D..., /other
    for s in storages:                              # a storage holds entries, never storages
        assert all(not is_storage_path(f"{s}/{e}") for e in os.listdir(store / s))


async def test_renaming_a_directory_moves_nothing_below_it(make_volume, open_volume):
    """One backend rename of the stub: the storages below, and a file open below the
    renamed directory, stay where they were and keep working."""
    store = await make_volume(4096)
    vol = await open_volume(store)
    try:
        deepest = await build(vol, 5, 30)
        top = deepest.split("/")[1]
        f = await vol.open(deepest + "/" + "f" * 30, write=True)
        bpath = f.state.bpath
        storage = await storage_of(vol, deepest)
        before = {p.relative_to(store).as_posix() for p in store.rglob("*")}
        await vol.rename("/" + top, "/moved")
        moved = "/moved" + deepest[len(top) + 1:]
        assert await storage_of(vol, moved) == storage
        await f.write(1, b"written after the rename")
        await f.close()
        assert f.state.bpath == bpath
        assert await vol.read_file(moved + "/" + "f" * 30) == b"xwritten after the rename"
        after = {p.relative_to(store).as_posix() for p in store.rglob("*")}
        # the same backend objects, but for the top directory's stub (and the record in it)
        # under its new name
        assert len(before - after) == len(after - before) == 2
        assert {p.rsplit("/", 1)[-1] for p in before - after} >= {"sealfs.dir"}
        with pytest.raises(FileNotFoundError):
            await vol.stat(deepest)
    finally:
        await vol.close()
    vol = await open_volume(store)
    try:
        assert await vol.read_file(moved + "/" + "f" * 30) == b"xwritten after the rename"
    finally:
        await vol.close()
