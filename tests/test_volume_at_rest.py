"""Nothing plain at rest: contents, names and metadata never reach the backend in clear."""

from __future__ import annotations

import os
import re

from tests.conftest import backend_files, backend_names

MARKER = b"SEALFS-PLAINTEXT-MARKER-7f3a9c"
NAMES = ["secret-report.txt", "Quarterly Numbers", "notes", "a", "x" * 200, "caf\u00e9"]


async def _populate(vol):
    await vol.mkdir("private-dir")
    await vol.mkdir("private-dir/nested-secret")
    for name in NAMES:
        await vol.write_file(name, MARKER * 3 + name.encode())
        await vol.write_file(f"private-dir/nested-secret/{name}", MARKER + b"\n" * 5000 + MARKER)
    big = (MARKER + os.urandom(50)) * 2000          # spans many chunks, marker at every offset mod 16
    await vol.write_file("private-dir/big.bin", big)
    f = await vol.open("notes", write=True)
    await f.write(70_000, MARKER)                   # partial chunk write after the first flush
    await f.close()
    await vol.symlink("link-to-secret-report", "secret-report.txt")


async def test_marker_written_through_the_volume_never_appears_in_any_backend_file(make_volume, open_volume):
    for cs in (4096, 65536):
        store = await make_volume(cs)
        vol = await open_volume(store)
        await _populate(vol)
        await vol.close()
        files = backend_files(store)
        assert len(files) > len(NAMES)
        for path in files:
            raw = path.read_bytes()
            assert MARKER not in raw, path
            assert MARKER[:12] not in raw, path
            assert b"secret-report" not in raw, path
        # and the volume still reads it all back
        vol = await open_volume(store)
        assert (await vol.read_file("notes"))[70_000:] == MARKER
        assert await vol.readlink("link-to-secret-report") == "secret-report.txt"
        await vol.close()


async def test_plaintext_names_never_appear_in_backend_names(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await _populate(vol)
    await vol.rename("notes", "private-dir/renamed-notes")
    await vol.close()
    names = backend_names(store)
    plain = NAMES + ["private-dir", "nested-secret", "big.bin", "renamed-notes", "link-to-secret-report"]
    for entry in names:
        for name in plain:
            if len(name) >= 3:
                assert name.lower() not in entry.lower(), (name, entry)
        assert "secret" not in entry and "private" not in entry


async def test_every_backend_entry_name_is_lowercase_for_case_insensitive_backends(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await _populate(vol)
    await vol.mkdir("UPPER")
    await vol.write_file("UPPER/MiXeD", b"1")
    await vol.write_file("UPPER/" + "L" * 255, b"long")
    await vol.close()
    names = backend_names(store)
    assert names
    for entry in names:
        assert entry == entry.lower(), entry
        assert re.fullmatch(r"[a-z0-9.]+", entry), entry
    # and no two entries in one directory collide case-insensitively
    for _dirpath, dirs, files in os.walk(store):
        entries = dirs + files
        assert len({e.lower() for e in entries}) == len(entries)


async def test_backend_file_permissions_are_private(make_volume, open_volume):
    store = await make_volume(4096)
    vol = await open_volume(store)
    await vol.write_file("world-readable-in-volume", b"x", mode=0o644)
    await vol.close()
    for path in backend_files(store):
        assert path.stat().st_mode & 0o077 == 0, path
