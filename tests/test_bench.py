"""`sealfs bench` end to end with tiny sizes: every output exists, one row per
(chunk size, workload) for sealfs and per workload for the plain peer, all positive."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(90)]

SEALFS_WORKLOADS = {"seq_write", "seq_read", "cold_read", "rand_read_4k", "rand_write_4k",
                    "create", "stat", "delete", "overhead_large", "overhead_small", "peak_rss"}


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                    reason="needs /dev/fuse and fusermount3")
def test_bench_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-m", "sealfs.fs.cli", "bench", "--size", "8", "--files", "30",
         "--seconds", "1", "--chunk-sizes", "4K,64K", "--repeats", "1", "--peers", "plain",
         "--out", str(out), "--workdir", str(work)],
        capture_output=True, text=True, timeout=85)
    assert result.returncode == 0, result.stderr[-3000:]

    for name in ("results.json", "results.csv", "results.md", "throughput.png", "iops.png",
                 "overhead.png", "memory.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((out / "results.json").read_text())
    assert data["errors"] == []
    rows = data["rows"]
    sealfs = [r for r in rows if r["kind"] == "sealfs"]
    keys = [(r["chunk_size"], r["workload"]) for r in sealfs]
    assert len(keys) == len(set(keys)), "one row per (chunk size, workload)"
    assert set(keys) == {(cs, w) for cs in ("4K", "64K") for w in SEALFS_WORKLOADS}
    plain = {r["workload"] for r in rows if r["target"] == "plain"}
    assert {"seq_write", "seq_read", "cold_read", "rand_read_4k", "create"} <= plain
    assert "peak_rss" not in plain, "the plain directory has no mount process to measure"
    rss = [r["median"] for r in sealfs if r["workload"] == "peak_rss"]
    assert all(20 < v < 2000 for v in rss), rss          # MiB of a live Python process
    for r in rows:
        assert r["median"] > 0 and r["min"] > 0 and r["max"] >= r["median"] >= r["min"], r
        assert r["n"] == 1

    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert all(float(r["median"]) > 0 for r in csv_rows)

    md = (out / "results.md").read_text()
    assert "sealfs-local-4K" in md and "sealfs-local-64K" in md and "| seq_write |" in md
    # nothing left mounted or behind in the work directory
    assert not any(os.path.ismount(p) for p in work.rglob("mnt"))
    assert list(work.iterdir()) == [] or all(not any(p.iterdir()) for p in work.iterdir())


needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                                reason="needs /dev/fuse and fusermount3")


def _bench(out: Path, work: Path, *args: str, timeout: float) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "sealfs.fs.cli", "bench", "--repeats", "1", "--out", str(out),
         "--workdir", str(work), *args],
        capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["errors"] == []
    return data


def _by_target(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """target -> workload -> row; every number is positive."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        assert r["median"] > 0, r
        out.setdefault(r["target"], {})[r["workload"]] = r
    return out


@needs_fuse
@pytest.mark.smb
@pytest.mark.timeout(240)
def test_smb_peers_measure_the_same_share_as_sealfs(tmp_path: Path) -> None:
    """smb-raw, smbprotocol and smbclient run only the sequential workload (the others
    leave them out, not fail them); rclone-smb runs everything; the SMB sessions report
    their encryption."""
    from tests.conftest import need_smbd
    need_smbd()
    data = _bench(tmp_path / "out", tmp_path / "work", "--backends", "smb", "--chunk-sizes", "64K",
                  "--peers", "smb-raw,smbprotocol,smbprotocol-reuse,smbclient,rclone-smb",
                  "--size", "4", "--files", "10",
                  "--seconds", "0", timeout=230)
    t = _by_target(data["rows"])
    for peer in ("smb-raw", "smbprotocol", "smbprotocol-reuse", "smbclient"):
        assert set(t[peer]) == {"seq_write", "seq_read", "cold_read"}, peer
        assert t[peer]["seq_write"]["backend"] == "smb"
    assert {"seq_write", "seq_read", "cold_read", "create", "stat", "delete"} <= set(t["rclone-smb"])
    assert {"seq_write", "seq_read", "cold_read", "create"} <= set(t["sealfs-smb-64K"])
    assert t["smb-raw"]["seq_write"]["backend"] == "smb"
    notes = data["meta"]["target_notes"]
    assert "AES" in notes["smb-raw"]["negotiated"] and "encrypt=True" in notes["smb-raw"]["negotiated"]
    assert "SMB3" in notes["rclone-smb"]["smb_sessions"]
    assert "GCM" in notes["rclone-smb"]["smb_sessions"] or "CCM" in notes["rclone-smb"]["smb_sessions"]
    md = (tmp_path / "out" / "results.md").read_text()
    for base in ("smb-raw", "smbprotocol", "smbprotocol-reuse", "smbclient", "rclone-smb"):
        assert f"Ratio to {base}" in md, base
    assert not any(os.path.ismount(p) for p in (tmp_path / "work").rglob("mnt"))
    assert not list((tmp_path / "work").rglob("auth")), "smbclient's credentials file is removed"


@needs_fuse
@pytest.mark.smb
@pytest.mark.timeout(240)
@pytest.mark.skipif(os.geteuid() != 0, reason="the gateway runs as root")
def test_gateway_bench_against_its_plain_share_and_the_direct_mount(tmp_path: Path) -> None:
    """`--backends gateway`: smbclient put/get through the gateway and through the same smbd
    configuration on a plain directory, the local mount in the same run, the ratios, and the
    gateway's CPU per GiB split between smbd and the mount; no account, mount or run
    directory left behind."""
    from tests.conftest import need_smbd
    need_smbd()
    if shutil.which("smbclient") is None:
        pytest.skip("smbclient is not installed")
    groups_before = {line.split(":")[0] for line in Path("/etc/group").read_text().splitlines()}
    data = _bench(tmp_path / "out", tmp_path / "work", "--backends", "gateway", "--chunk-sizes", "64K",
                  "--peers", "", "--size", "16", "--seconds", "0", "--files", "0", timeout=230)
    t: dict[str, dict[str, dict]] = {}
    for r in data["rows"]:
        t.setdefault(r["target"], {})[r["workload"]] = r
    seq = {"seq_write", "seq_read", "cold_read"}
    cpu = {"cpu_write", "cpu_read", "cpu_cold_read"}
    assert set(t["gateway-plain"]) == seq | cpu
    assert set(t["sealfs-gateway-64K"]) == seq | cpu
    assert seq <= set(t["sealfs-local-64K"])
    assert t["sealfs-gateway-64K"]["seq_write"]["kind"] == "sealfs"
    assert t["gateway-plain"]["seq_write"]["kind"] == "peer"
    assert all(t[x][w]["median"] > 0 for x in t for w in seq & set(t[x]))
    assert t["sealfs-gateway-64K"]["cpu_write"]["median"] > 0     # smbd + encrypting mount
    notes = data["meta"]["target_notes"]["sealfs-gateway-64K"]
    assert "smbd" in notes["cpu_write split"] and "mount" in notes["cpu_write split"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Ratio to gateway-plain" in md and "mount used directly" in md
    groups_after = {line.split(":")[0] for line in Path("/etc/group").read_text().splitlines()}
    assert not {g for g in groups_after - groups_before if g.startswith("sealfs-bench")}
    assert not any(os.path.ismount(p) for p in (tmp_path / "work").rglob("*") if p.is_dir())


@pytest.mark.smb
@pytest.mark.timeout(120)
def test_smb_client_peers_fail_with_a_clear_error_on_a_wrong_password(samba, tmp_path: Path) -> None:
    from sealfs.bench.samba import SmbShare
    from sealfs.bench.smb_clients import SmbclientTarget, SmbprotocolTarget
    from sealfs.bench.targets import TargetError
    share = SmbShare(samba.store_url, "not-the-password", samba.share_path)
    with (SmbclientTarget(tmp_path, share) as target,
          pytest.raises(TargetError, match="smbclient put failed: .*LOGON_FAILURE")):
        target.sequential(1)
    with (SmbprotocolTarget(tmp_path, share) as target,
          pytest.raises(TargetError, match="(?i)smbprotocol write failed: .*(logon|password|auth)") as err):
        target.sequential(1)
    assert "\n" not in str(err.value) and "not-the-password" not in str(err.value)
    assert not list(samba.share_path.glob("smb*.dat")), "nothing was written"


@needs_fuse
@pytest.mark.skipif(shutil.which("cryfs") is None, reason="cryfs is not installed")
@pytest.mark.timeout(240)
def test_cryfs_peer_produces_numbers(tmp_path: Path) -> None:
    data = _bench(tmp_path / "out", tmp_path / "work", "--chunk-sizes", "64K", "--peers", "cryfs",
                  "--size", "4", "--files", "10", "--seconds", "0", timeout=230)
    t = _by_target(data["rows"])
    assert {"seq_write", "seq_read", "cold_read", "create", "stat", "delete"} <= set(t["cryfs"])


@needs_fuse
@pytest.mark.skipif(shutil.which("securefs") is None, reason="securefs is not installed")
@pytest.mark.timeout(240)
def test_securefs_peer_produces_numbers_and_a_ratio_table(tmp_path: Path) -> None:
    data = _bench(tmp_path / "out", tmp_path / "work", "--chunk-sizes", "64K", "--peers", "securefs",
                  "--size", "4", "--files", "10", "--seconds", "0.5", timeout=230)
    t = _by_target(data["rows"])
    assert {"seq_write", "seq_read", "cold_read", "create", "stat", "delete"} <= set(t["securefs"])
    # securefs 0.13 refuses O_DIRECT: that workload says so in the notes, the others ran
    if "rand_read_4k" not in t["securefs"]:
        assert "refuses O_DIRECT" in data["meta"]["target_notes"]["securefs"]["random 4K"]
    assert {"rand_read_4k", "rand_write_4k"} <= set(t["sealfs-local-64K"])
    assert all(t["securefs"][w]["median"] > 0 for w in ("seq_write", "create"))
    assert "Ratio to securefs" in (tmp_path / "out" / "results.md").read_text()
    assert not any(os.path.ismount(p) for p in (tmp_path / "work").rglob("mnt"))


def test_smb_peers_are_skipped_with_a_reason_without_the_smb_backend() -> None:
    from sealfs.bench.runner import BenchConfig, build_specs, skipped_peers
    cfg = BenchConfig(chunk_sizes=["64K"], backends=["local"], peers=["plain", "smb-raw", "rclone-smb", "nope"])
    assert [s.label for s in build_specs(cfg, None, None)] == ["plain", "sealfs-local-64K"]
    why = skipped_peers(cfg)
    assert why["nope"] == "unknown peer"
    assert set(why) >= {"smb-raw", "nope"}
    assert all(w in ("runs only with --backends smb", "not installed") for p, w in why.items() if p != "nope")


@needs_fuse
@pytest.mark.timeout(120)
def test_pyfuse3_peer_runs_every_workload_and_gets_a_ratio_table(tmp_path: Path) -> None:
    data = _bench(tmp_path / "out", tmp_path / "work", "--chunk-sizes", "64K", "--peers", "pyfuse3",
                  "--size", "4", "--files", "20", "--seconds", "0.5", "--tarball", timeout=110)
    t = _by_target(data["rows"])
    assert {"seq_write", "seq_read", "cold_read", "rand_read_4k", "rand_write_4k", "create",
            "stat", "delete", "tar_extract", "tar_read", "tar_delete", "peak_rss"} <= set(t["pyfuse3"])
    assert t["pyfuse3"]["overhead_large"]["median"] == pytest.approx(1.0, abs=0.01)  # no crypto
    assert "Ratio to pyfuse3" in (tmp_path / "out" / "results.md").read_text()
    assert not any(os.path.ismount(p) for p in (tmp_path / "work").rglob("mnt"))


@needs_fuse
@pytest.mark.timeout(60)
def test_passthrough_reference_fs_is_a_faithful_pass_through(tmp_path: Path) -> None:
    """The ceiling it stands for only means something if it does the same work: every byte
    and name lands in the backing directory as written, O_DIRECT included."""
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    store.mkdir()
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "sealfs.bench.passthrough", str(store), str(mnt)],
                            stderr=subprocess.PIPE)
    try:
        from sealfs.bench.targets import wait_live
        wait_live(mnt, proc, 30, None)
        payload = os.urandom(3 * 4096)
        (mnt / "d").mkdir()
        (mnt / "d" / "f").write_bytes(payload)
        assert (store / "d" / "f").read_bytes() == payload
        fd = os.open(mnt / "d" / "f", os.O_RDONLY | os.O_DIRECT)
        try:
            assert os.pread(fd, 4096, 4096) == payload[4096:8192]
        finally:
            os.close(fd)
        os.rename(mnt / "d" / "f", mnt / "g")
        os.symlink("g", mnt / "link")
        assert (mnt / "link").read_bytes() == payload
        assert sorted(os.listdir(store)) == ["d", "g", "link"]
        os.truncate(mnt / "g", 5)
        assert (store / "g").read_bytes() == payload[:5]
        # xattrs pass through too (the kernel asks for them on every `ls -l` entry)
        os.setxattr(store / "g", "user.k", b"v")
        assert os.getxattr(mnt / "g", "user.k") == b"v"
        assert "user.k" in os.listxattr(mnt / "g")
        with pytest.raises(OSError) as missing:
            os.getxattr(mnt / "g", "security.selinux")
        assert missing.value.errno == errno.ENODATA
        os.unlink(mnt / "link")
        os.rmdir(mnt / "d")
        assert sorted(os.listdir(mnt)) == ["g"]
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "missing")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        proc.wait(30)


def test_chart_legend_lists_a_peer_missing_from_the_first_panel() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sealfs.bench.report import legend_entries
    fig, (first, second) = plt.subplots(1, 2)
    first.axhline(1, label="gocryptfs")
    first.plot([1, 2], [1, 2], label="sealfs (local)")
    second.axhline(1, label="gocryptfs")
    second.axhline(2, label="securefs")          # no random-I/O number, but a create one
    try:
        assert list(legend_entries([first, second])) == ["gocryptfs", "sealfs (local)", "securefs"]
    finally:
        plt.close(fig)


@needs_fuse
@pytest.mark.azfiles
@pytest.mark.timeout(240)
def test_azfiles_bench_reports_sealfs_as_a_ratio_of_the_sdk_through_the_latency_proxy(tmp_path: Path) -> None:
    """`--backends azfiles` starts the Azure Files test server itself; the SDK ceiling and
    the raw backend run on the same share as the mount, through the same delaying proxy."""
    data = _bench(tmp_path / "out", tmp_path / "work", "--backends", "azfiles", "--chunk-sizes", "64K",
                  "--peers", "azfiles-sdk,azfiles-raw,plain", "--size", "4", "--files", "5",
                  "--seconds", "0", "--latency-ms", "10", timeout=230)
    t = _by_target(data["rows"])
    for peer in ("azfiles-sdk", "azfiles-raw"):
        assert set(t[peer]) == {"seq_write", "seq_read", "cold_read"}, peer
        assert t[peer]["seq_write"]["backend"] == "azfiles"
    sealfs = t["sealfs-azfiles-64K"]
    assert {"seq_write", "seq_read", "cold_read", "create", "stat", "delete"} <= set(sealfs)
    # the bytes on the share, listed through the REST API: 64 KiB chunks cost a tag and a nonce each
    assert 1.0 < sealfs["overhead_large"]["median"] < 1.01
    assert 1.0 < sealfs["overhead_small"]["median"] < 1.1
    assert "10 ms round trip" in data["meta"]["latency"] and "azfiles" in data["meta"]["latency"]
    assert "max_concurrency=16" in data["meta"]["target_notes"]["azfiles-sdk"]["pattern"]
    md = (tmp_path / "out" / "results.md").read_text()
    for base in ("azfiles-sdk", "azfiles-raw"):
        section = md.split(f"Ratio to {base}", 1)[1].split("\n\n", 2)[1]
        assert "sealfs-azfiles-64K" in section and "| seq_write | " in section, base
    assert not any(os.path.ismount(p) for p in (tmp_path / "work").rglob("mnt"))


def test_azfiles_peers_are_skipped_with_a_reason_without_the_azfiles_backend() -> None:
    from sealfs.bench.runner import BenchConfig, skipped_peers
    cfg = BenchConfig(chunk_sizes=["64K"], backends=["local", "smb"], peers=["azfiles-sdk", "azfiles-raw"])
    assert skipped_peers(cfg) == {"azfiles-sdk": "runs only with --backends azfiles",
                                  "azfiles-raw": "runs only with --backends azfiles"}


def test_bench_refuses_a_latency_proxy_in_front_of_a_real_azure_share(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sealfs.fs.cli", "bench", "--azfiles-url",
         "https://acct.file.core.windows.net/share", "--latency-ms", "10", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--latency-ms" in result.stderr and "real share" in result.stderr


@pytest.mark.serial       # twenty round trips must take under five: times the wall clock
@pytest.mark.timeout(60)
def test_latency_proxy_delays_every_round_trip_yet_pipelines_and_keeps_every_byte() -> None:
    """A delay line, not a slow link: one exchange costs the round trip, twenty exchanges
    sent back to back cost about one, and a bulk transfer arrives intact and in order."""
    import socket
    import threading
    import time

    from sealfs.bench.latency import LatencyProxy

    listener = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(1 << 20):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    rtt = 0.1
    with LatencyProxy("127.0.0.1", listener.getsockname()[1], rtt * 1000) as proxy, \
            socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def exchange(payload: bytes) -> float:
            t0 = time.monotonic()
            got = bytearray()
            reader = threading.Thread(target=lambda: [got.extend(s.recv(1 << 20))
                                                      for _ in iter(lambda: len(got) < len(payload), False)])
            reader.start()
            s.sendall(payload)
            reader.join(30)
            assert bytes(got) == payload
            return time.monotonic() - t0

        assert exchange(b"x") >= rtt
        t0 = time.monotonic()
        for i in range(20):
            s.sendall(bytes([i]))
        got = b""
        while len(got) < 20:
            got += s.recv(64)
        assert got == bytes(range(20))
        assert rtt <= time.monotonic() - t0 < 5 * rtt, "requests in flight overlap their round trips"
        assert exchange(os.urandom(8 << 20)) < 30
    listener.close()


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                    reason="needs /dev/fuse and fusermount3")
def test_bench_tree_lists_a_tree_cold(tmp_path: Path) -> None:
    """--tree-files: cold `ls -lR` and `find` of a tree, for sealfs and the peers alike."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "sealfs.fs.cli", "bench", "--size", "0", "--files", "0",
         "--seconds", "0", "--tree-files", "200", "--chunk-sizes", "64K", "--peers", "plain",
         "--out", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=85)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["errors"] == []
    got = {(r["target"], r["workload"]): r["median"] for r in data["rows"]}
    for target in ("plain", "sealfs-local-64K"):
        for workload in ("ls_lR", "find"):
            assert got[(target, workload)] > 0, (target, workload)
