"""Opt-in: a real Azure Files share (or any SMB 3 server) named by environment variables.

SEALFS_LIVE_SMB_URL=smb://ACCOUNT@ACCOUNT.file.core.windows.net/SHARE/some/empty/dir
SEALFS_LIVE_SMB_PASSWORD=<storage account key>
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.mounting import sealfs

URL = os.environ.get("SEALFS_LIVE_SMB_URL")


@pytest.mark.live
@pytest.mark.skipif(not URL or not os.environ.get("SEALFS_LIVE_SMB_PASSWORD"),
                    reason="set SEALFS_LIVE_SMB_URL and SEALFS_LIVE_SMB_PASSWORD to run")
def test_live_share_round_trip(tmp_path, keyfile):
    env = dict(os.environ, SEALFS_STATE_DIR=str(tmp_path / "state"))
    store = f"{URL.rstrip('/')}/sealfs-live-{uuid.uuid4().hex[:8]}"
    sealfs("init", store, "--keyfile", str(keyfile), "--smb-require-aes256", env=env)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "x").write_bytes(payload)
    sealfs("put", store, str(tmp_path / "x"), "/x", "--keyfile", str(keyfile), env=env)
    out = sealfs("cat", store, "/x", "--keyfile", str(keyfile), env=env)
    assert out.stdout == payload
