"""Runs every (target, repeat) through the workloads and aggregates median/min/max.

Repeats are interleaved (repeat 1 of every target, then repeat 2 ...) so that a burst
of load from other processes on the machine spreads over all targets instead of
skewing one of them; ratios against peers measured in the same run are what to read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from . import workloads as W
from .azfiles import AZ_PEERS, AzShare, BenchAzureFiles, share_from_env
from .latency import LatencyProxy
from .peers import PEERS, SMB_PEERS, SealfsTarget, peer_available
from .samba import SmbShare
from .targets import DirectTarget, Target


@dataclass
class BenchConfig:
    chunk_sizes: list[str]
    backends: list[str]
    peers: list[str]
    size_mib: int = 256
    seconds: float = 5
    files: int = 1000
    tree_files: int = 0
    tarball: bool = False
    repeats: int = 1
    out: Path = Path("bench-results")
    smb_url: str | None = None
    smb_password: str | None = None
    workdir: Path | None = None
    rand_file_mib: int | None = None
    direct: bool = True
    azfiles_url: str | None = None
    latency_ms: float = 0          # round-trip time added in front of smb and azfiles (0: none)


@dataclass
class TargetSpec:
    label: str
    kind: str
    backend: str
    chunk_size: str | None
    factory: Callable[[Path], Target]


@dataclass
class Results:
    meta: dict
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    specs: dict[str, TargetSpec] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        rows = []
        for label, spec in self.specs.items():
            for workload, (unit, higher) in W.WORKLOADS.items():
                values = self.samples.get((label, workload))
                if not values:
                    continue
                rows.append({
                    "target": label, "kind": spec.kind, "backend": spec.backend,
                    "chunk_size": spec.chunk_size or "", "workload": workload, "unit": unit,
                    "higher_is_better": higher, "median": statistics.median(values),
                    "min": min(values), "max": max(values), "n": len(values),
                    "samples": values,
                })
        return rows


def skipped_peers(cfg: BenchConfig) -> dict[str, str]:
    """Requested peers that will not run, and why."""
    why = {}
    for peer in cfg.peers:
        if peer not in PEERS and peer not in SMB_PEERS and peer not in AZ_PEERS:
            why[peer] = "unknown peer"
        elif not peer_available(peer):
            why[peer] = "not installed"
        elif peer in SMB_PEERS and "smb" not in cfg.backends:
            why[peer] = "runs only with --backends smb"
        elif peer in AZ_PEERS and "azfiles" not in cfg.backends:
            why[peer] = "runs only with --backends azfiles"
    return why


def build_specs(cfg: BenchConfig, smb_url: str | None, smb_local: Path | None,
                share: SmbShare | None = None, azure: AzShare | None = None) -> list[TargetSpec]:
    specs: list[TargetSpec] = []
    skipped = skipped_peers(cfg)
    backends = list(cfg.backends)
    if "gateway" in backends:
        # its two references in the same run: the same smbd configuration on a plain
        # directory, and the sealfs mount used directly (the local backend)
        from .gateway import GatewayPlainTarget
        specs.append(TargetSpec("gateway-plain", "peer", "gateway", None,
                                lambda work: GatewayPlainTarget(work, cfg.chunk_sizes[0])))
        if "local" not in backends:
            backends.insert(backends.index("gateway"), "local")
    for peer in cfg.peers:
        if peer in skipped:
            continue
        if peer in SMB_PEERS:
            share = share or SmbShare(smb_url, cfg.smb_password, smb_local)
            specs.append(TargetSpec(peer, "peer", "smb", None,
                                    lambda work, f=SMB_PEERS[peer], share=share: f(work, share)))
        elif peer in AZ_PEERS:
            specs.append(TargetSpec(peer, "peer", "azfiles", None,
                                    lambda work, f=AZ_PEERS[peer]: f(work, _az_dir(azure))))
        else:
            specs.append(TargetSpec(peer, "peer", "local", None, PEERS[peer]))
    for backend in backends:
        for cs in cfg.chunk_sizes:
            if backend == "local":
                def factory(work: Path, cs: str = cs) -> Target:
                    return SealfsTarget(work, cs)
            elif backend == "gateway":
                def factory(work: Path, cs: str = cs) -> Target:
                    from .gateway import GatewayTarget
                    return GatewayTarget(work, cs)
            elif backend == "azfiles":
                def factory(work: Path, cs: str = cs) -> Target:
                    return SealfsTarget(work, cs, "azfiles", azure=_az_dir(azure))
            else:
                def factory(work: Path, cs: str = cs) -> Target:
                    import secrets
                    name = f"bench-{secrets.token_hex(4)}"
                    return SealfsTarget(work, cs, "smb", smb_url=f"{smb_url}/{name}",
                                        smb_local=(smb_local / name) if smb_local else None,
                                        smb_password=cfg.smb_password)
            specs.append(TargetSpec(f"sealfs-{backend}-{cs}", "sealfs", backend, cs, factory))
    return specs


def _az_dir(azure: AzShare | None) -> AzShare:
    """A fresh directory of the share for one target run (the target removes it)."""
    import secrets
    if azure is None:
        raise RuntimeError("the azfiles backend has no share")
    return azure.child(f"bench-{secrets.token_hex(4)}")


def open_shares(cfg: BenchConfig, stack: contextlib.ExitStack, meta: dict
                ) -> tuple[str | None, Path | None, SmbShare | None, AzShare | None]:
    """The SMB and Azure Files shares the backends in cfg need (throwaway servers unless
    given), each behind a latency proxy when cfg.latency_ms asks for one."""
    smb_url, smb_local, share, azure = cfg.smb_url, None, None, None
    if "smb" in cfg.backends:
        if not smb_url:
            from .samba import BenchSamba
            server = stack.enter_context(BenchSamba())
            smb_url, smb_local = server.url, server.share_path
            cfg.smb_password = server.password
            share = server.share()
            meta["smb"] = "throwaway smbd on 127.0.0.1, encryption required"
        if cfg.latency_ms > 0:
            from ..backends.smb import SmbTarget
            t = SmbTarget.parse(smb_url)
            proxy = stack.enter_context(LatencyProxy(t.host, t.port, cfg.latency_ms))
            smb_url = _with_port(smb_url, proxy.port)
            share = dataclasses.replace(share or SmbShare(cfg.smb_url, cfg.smb_password, None), url=smb_url)
    if "azfiles" in cfg.backends:
        if cfg.azfiles_url:
            azure = share_from_env(cfg.azfiles_url)
            meta["azfiles"] = "the share --azfiles-url names"
        else:
            azure = stack.enter_context(BenchAzureFiles())
            meta["azfiles"] = ("the Azure Files REST test server (tests/servers/azfiles.py) on 127.0.0.1: "
                               "HTTPS, SharedKey, bytes in memory")
        if cfg.latency_ms > 0:
            proxy = stack.enter_context(LatencyProxy(*azure.address, cfg.latency_ms))
            azure = azure.via(proxy.port)
    if cfg.latency_ms > 0:
        meta["latency"] = (f"{cfg.latency_ms:g} ms round trip added by a delaying TCP proxy "
                           f"(bench/latency.py, {cfg.latency_ms / 2:g} ms each way) in front of "
                           + " and ".join(b for b in cfg.backends if b != "local"))
    return smb_url, smb_local, share, azure


def _with_port(url: str, port: int) -> str:
    """smb://USER@HOST[:PORT]/SHARE with the port replaced and the host 127.0.0.1 (the proxy)."""
    u = urlsplit(url)
    user = f"{u.username}@" if u.username else ""
    return u._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


def run_one(target: Target, cfg: BenchConfig, tar_path: Path | None,
            step: Callable[[str], None], errors: list[str] | None = None) -> dict[str, float]:
    """The workloads cfg asks for that the target runs (others leave no row for it). A
    workload that fails (e.g. a peer that refuses O_DIRECT) is reported in errors and
    the target's other workloads still run."""
    out: dict[str, float] = {}
    runs = target.workloads

    def attempt(name: str, fn: Callable[[], dict[str, float]]) -> None:
        step(name)
        try:
            out.update(fn())
        except W.Unsupported as exc:
            target.notes[name] = f"not measured: {exc}"
        except Exception as exc:
            if errors is None:
                raise
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}")

    if cfg.size_mib > 0 and "sequential" in runs:
        if isinstance(target, DirectTarget):
            attempt("sequential", lambda: target.sequential(cfg.size_mib))
        else:
            attempt("sequential", lambda: W.sequential(target, cfg.size_mib))
    if cfg.seconds > 0 and "random" in runs:
        rand_mib = cfg.rand_file_mib or max(4, min(cfg.size_mib or 64, 256))
        attempt("random 4K", lambda: W.random_io(target, rand_mib, cfg.seconds, cfg.direct))
    if cfg.files > 0 and "small_files" in runs:
        attempt("small files", lambda: W.small_files(target, cfg.files))
    if cfg.tree_files > 0 and "small_files" in runs:
        attempt("tree", lambda: W.tree(target, cfg.tree_files))
    if tar_path is not None and "tarball" in runs:
        attempt("tarball", lambda: W.tarball(target, tar_path))
    return out


def run_bench(cfg: BenchConfig, console=None) -> Results:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cfg.out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="sealfs-bench-", dir=cfg.workdir))
    results = Results(meta={
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "size_mib": cfg.size_mib, "seconds": cfg.seconds, "files": cfg.files,
        "tarball": cfg.tarball, "random_io_direct": cfg.direct, "repeats": cfg.repeats,
        "chunk_sizes": cfg.chunk_sizes,
        "backends": cfg.backends, "peers_requested": cfg.peers, "workdir": str(base),
        "latency_ms": cfg.latency_ms,
    })
    try:
        with contextlib.ExitStack() as stack:
            smb_url, smb_local, share, azure = open_shares(cfg, stack, results.meta)
            specs = build_specs(cfg, smb_url, smb_local, share, azure)
            results.specs = {s.label: s for s in specs}
            results.meta["targets"] = [s.label for s in specs]
            results.meta["peers_skipped"] = skipped_peers(cfg)
            results.meta["target_notes"] = {}
            tar_path = W.make_tarball(base) if cfg.tarball else None
            if tar_path is not None:
                results.meta["tarball_bytes"] = tar_path.stat().st_size
            total = len(specs) * cfg.repeats
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=False) as progress:
                task = progress.add_task("bench", total=total)
                for rep in range(cfg.repeats):
                    for spec in specs:
                        def step(what: str, spec=spec, rep=rep) -> None:
                            progress.update(task, description=f"{spec.label} #{rep + 1}: {what}")
                        step("mounting")
                        target = None
                        failed: list[str] = []
                        try:
                            with spec.factory(base) as target:
                                values = run_one(target, cfg, tar_path, step, failed)
                        except Exception as exc:  # noqa: BLE001 (one target failing must not lose the others)
                            results.errors.append(f"{spec.label} #{rep + 1}: {type(exc).__name__}: {exc}")
                            progress.console.print(f"[red]{spec.label} #{rep + 1} failed:[/] {exc}")
                            values = {}
                        for why in failed:
                            results.errors.append(f"{spec.label} #{rep + 1}: {why}")
                            progress.console.print(f"[red]{spec.label} #{rep + 1}:[/] {why}")
                        if target is not None and target.notes:
                            results.meta["target_notes"][spec.label] = dict(target.notes)
                        for k, v in values.items():
                            results.samples.setdefault((spec.label, k), []).append(v)
                        progress.advance(task)
            results.meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results
