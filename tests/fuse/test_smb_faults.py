"""smbd killed and restarted under a live mount: reconnect, never a false success."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from tests.conftest import need_smbd
from tests.mounting import Mount, init_store
from tests.servers.samba import SambaServer, new_store


def test_smbd_killed_and_restarted_during_a_long_write(tmp_path: Path, keyfile: Path, mount_env: dict):
    need_smbd()
    server = SambaServer()
    server.start()
    try:
        store = new_store(server)
        env = dict(mount_env, SEALFS_SMB_PASSWORD=server.password)
        init_store(store.url, keyfile, "64K", env=env)
        mount = Mount(store.url, tmp_path / "mnt", keyfile, env=env).start()
        try:
            bystander = os.urandom(500_000)
            (mount.mountpoint / "bystander").write_bytes(bystander)
            block = os.urandom(1024 * 1024)
            outcome: dict = {}

            def writer() -> None:
                digest = hashlib.sha256()
                try:
                    with open(mount.mountpoint / "long", "wb") as f:
                        for _ in range(96):
                            f.write(block)
                            digest.update(block)
                            time.sleep(0.01)
                        f.flush()
                        os.fsync(f.fileno())
                    outcome["ok"] = digest.hexdigest()
                except OSError as exc:
                    outcome["error"] = exc.errno

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(0.4)
            server.kill()
            time.sleep(0.5)
            server.start()
            thread.join(120)
            assert not thread.is_alive()
            mount.remount()
            if "ok" in outcome:
                # Success was reported: every byte must be on the server.
                data = (mount.mountpoint / "long").read_bytes()
                assert hashlib.sha256(data).hexdigest() == outcome["ok"]
            else:
                assert outcome["error"] == 5, outcome          # EIO, nothing else
            assert (mount.mountpoint / "bystander").read_bytes() == bystander
        finally:
            if mount.proc is not None:
                try:
                    mount.stop()
                except Exception:  # noqa: BLE001 (a mount that cannot stop is killed)
                    mount.kill()
    finally:
        server.stop()
        server.cleanup()
