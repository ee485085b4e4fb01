"""Opt-in: a real Azure Files share over HTTPS, named by an environment variable.

SEALFS_LIVE_AZFILES_URL=https://ACCOUNT.file.core.windows.net/SHARE/some/dir
Credentials as for any command: Entra ID (DefaultAzureCredential), or SEALFS_AZURE_SAS,
or SEALFS_AZURE_ACCOUNT_KEY.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.mounting import sealfs

URL = os.environ.get("SEALFS_LIVE_AZFILES_URL")


@pytest.mark.live
@pytest.mark.skipif(not URL, reason="set SEALFS_LIVE_AZFILES_URL to a real share to run")
def test_live_share_round_trip_over_https(tmp_path, keyfile):
    env = dict(os.environ, SEALFS_STATE_DIR=str(tmp_path / "state"))
    store = f"{URL.rstrip('/')}/sealfs-live-{uuid.uuid4().hex[:8]}"
    sealfs("init", store, "--keyfile", str(keyfile), env=env)
    payload = os.urandom(9 * 1024 * 1024 + 17)          # more than two 4 MiB ranges
    (tmp_path / "x").write_bytes(payload)
    sealfs("put", store, str(tmp_path / "x"), "/x", "--keyfile", str(keyfile), env=env)
    out = sealfs("cat", store, "/x", "--keyfile", str(keyfile), env=env)
    assert out.stdout == payload
    sealfs("fsck", store, "--keyfile", str(keyfile), env=env)
