"""results.json, results.csv, results.md and PNG charts from a Results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .runner import Results
from .workloads import WORKLOADS

# peers sealfs targets get a ratio table against: peer -> only sealfs on this backend (None: all)
RATIO_BASES: dict[str, str | None] = {"plain": None, "gocryptfs": None, "securefs": None,
                                      "pyfuse3": "local", "smbprotocol": "smb",
                                      "smbprotocol-reuse": "smb", "smb-raw": "smb",
                                      "smbclient": "smb", "rclone-smb": "smb",
                                      "azfiles-sdk": "azfiles", "azfiles-raw": "azfiles",
                                      "gateway-plain": "gateway"}
RATIO_NOTES = {"smbprotocol": " (the goal for seq_*: at least 0.80 of raw smbprotocol)",
               "smbprotocol-reuse": (" (the same goal against smbprotocol without its page "
                                     "faults: the stricter form)"),
               "smb-raw": " (sealfs's own SMB backend without crypto and FUSE: the stricter ceiling)",
               "smbclient": " (Samba's C client; the aim: toward half of it)",
               "pyfuse3": " (the Python FUSE stack without crypto: how close to its ceiling)",
               "azfiles-sdk": (" (the plain azure-storage-file-share SDK, upload_file/download_file: "
                               "the ceiling; the goal for seq_*: at least 0.80)"),
               "azfiles-raw": " (sealfs's own Azure Files backend without crypto and FUSE)",
               "gateway-plain": (" (the gateway's own smbd configuration serving a plain directory, "
                                 "smbclient put/get; the aim for seq_*: 0.5 or more)")}

SIZE_ORDER = ["4K", "8K", "16K", "32K", "64K", "128K", "256K", "512K", "1M", "2M", "4M"]


def legend_entries(axes) -> dict[str, object]:
    """label -> line, over every panel: a peer may have no number in the first panel
    (securefs refuses O_DIRECT, so it has no random I/O line) yet belongs in the legend."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return entries


def _size_key(cs: str) -> int:
    try:
        return SIZE_ORDER.index(cs.upper())
    except ValueError:
        return 99


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def write_all(results: Results, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = results.rows()
    paths = [out / "results.json", out / "results.csv", out / "results.md"]
    paths[0].write_text(json.dumps({"meta": results.meta, "errors": results.errors, "rows": rows},
                                   indent=2) + "\n")
    with open(paths[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "kind", "backend", "chunk_size", "workload", "unit", "median", "min",
                    "max", "n"])
        for r in rows:
            w.writerow([r["target"], r["kind"], r["backend"], r["chunk_size"], r["workload"], r["unit"],
                        f"{r['median']:.6g}", f"{r['min']:.6g}", f"{r['max']:.6g}", r["n"]])
    paths[2].write_text(markdown(results))
    paths += charts(results, out)
    return paths


def _table(results: Results) -> dict[str, dict[str, dict]]:
    """target -> workload -> row."""
    t: dict[str, dict[str, dict]] = {}
    for r in results.rows():
        t.setdefault(r["target"], {})[r["workload"]] = r
    return t


def _ordered_targets(results: Results) -> list[str]:
    specs = results.specs
    return sorted(specs, key=lambda label: (specs[label].kind != "peer", specs[label].backend,
                                        _size_key(specs[label].chunk_size or "")))


def markdown(results: Results) -> str:
    t = _table(results)
    targets = [label for label in _ordered_targets(results) if label in t]
    workloads = [w for w in WORKLOADS if any(w in t[label] for label in targets)]
    m = results.meta
    lines = [f"# sealfs bench ({m.get('started', '')})", "",
             f"{m.get('cpus')} CPUs; sequential {m.get('size_mib')} MiB (1 MiB I/O); random 4 KiB "
             f"({'O_DIRECT' if m.get('random_io_direct', True) else 'buffered'}, fio psync) "
             f"for {m.get('seconds')} s each; {m.get('files')} small files; repeats {m.get('repeats')} "
             "(median, [min–max])."
             + (f" Latency: {m['latency']}." if m.get("latency") else ""), ""]
    head = ["workload", "unit"] + targets
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for w in workloads:
        unit, higher = WORKLOADS[w]
        cells = [w, unit + ("" if higher else " (lower better)")]
        for label in targets:
            r = t[label].get(w)
            if r is None:
                cells.append("–")
            elif w.startswith("overhead"):
                cells.append(f"{r['median']:.4f}")
            elif r["n"] > 1 and r["min"] != r["max"]:
                cells.append(f"{_fmt(r['median'])} [{_fmt(r['min'])}–{_fmt(r['max'])}]")
            else:
                cells.append(_fmt(r["median"]))
        lines.append("| " + " | ".join(cells) + " |")
    # ratios against the baselines measured in the same run
    for base, only in RATIO_BASES.items():
        if base not in t:
            continue
        sealfs = [label for label in targets if results.specs[label].kind == "sealfs"
                  and (only is None or results.specs[label].backend == only)]
        if not sealfs:
            continue
        note = RATIO_NOTES.get(base, "")
        lines += ["", f"Ratio to {base} (same run; >1 means sealfs is better){note}:", ""]
        head = ["workload"] + sealfs
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for w in workloads:
            if w.startswith("overhead") or w not in t[base]:
                continue
            unit, higher = WORKLOADS[w]
            cells = [w]
            for label in sealfs:
                r = t[label].get(w)
                b = t[base][w]["median"]
                if r is None or b <= 0 or r["median"] <= 0:
                    cells.append("–")
                else:
                    ratio = r["median"] / b if higher else b / r["median"]
                    cells.append(f"{ratio:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += _gateway_vs_direct(results, t, workloads)
    notes = m.get("target_notes") or {}
    skipped = m.get("peers_skipped") or {}
    if notes or skipped:
        lines += ["", "Notes:", ""]
        lines += [f"- {label}: {key}: {value}" for label, kv in notes.items() for key, value in kv.items()]
        if isinstance(skipped, dict):
            lines += [f"- {peer} skipped: {why}" for peer, why in skipped.items()]
        else:
            lines += [f"- {peer} skipped" for peer in skipped]
    if results.errors:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in results.errors]
    return "\n".join(lines) + "\n"


def _gateway_vs_direct(results: Results, t: dict, workloads: list[str]) -> list[str]:
    """sealfs-gateway-CS over sealfs-local-CS: what serving the mount over SMB costs."""
    pairs = [(label, f"sealfs-local-{results.specs[label].chunk_size}") for label in t
             if results.specs[label].backend == "gateway" and results.specs[label].kind == "sealfs"]
    pairs = [(gw, local) for gw, local in pairs if local in t]
    if not pairs:
        return []
    lines = ["", "Ratio of the gateway (smbclient put/get) to the same chunk size's mount used "
             "directly (same run):", "", "| workload | " + " | ".join(gw for gw, _ in pairs) + " |",
             "|" + "---|" * (len(pairs) + 1)]
    for w in ("seq_write", "seq_read", "cold_read"):
        if w not in workloads:
            continue
        cells = [w]
        for gw, local in pairs:
            a, b = t[gw].get(w), t[local].get(w)
            cells.append(f"{a['median'] / b['median']:.2f}" if a and b and b["median"] > 0 else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def charts(results: Results, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = _table(results)
    specs = results.specs
    backends = sorted({s.backend for s in specs.values() if s.kind == "sealfs"})
    peers = [label for label, s in specs.items() if s.kind == "peer" and label in t]
    sizes = sorted({s.chunk_size for s in specs.values() if s.kind == "sealfs"}, key=_size_key)
    colors = {"plain": "tab:gray", "gocryptfs": "tab:green", "rclone": "tab:purple", "cryfs": "tab:brown",
              "securefs": "tab:cyan", "pyfuse3": "tab:red",
              "smb-raw": "tab:olive", "rclone-smb": "tab:pink", "smbprotocol": "tab:orange",
              "smbprotocol-reuse": "goldenrod",
              "smbclient": "black", "azfiles-sdk": "tab:blue", "azfiles-raw": "navy"}
    paths = []

    def panel(ax, workload: str, with_peers: bool = True) -> None:
        unit = WORKLOADS[workload][0]
        for backend in backends:
            xs, ys, lo, hi = [], [], [], []
            for i, cs in enumerate(sizes):
                r = t.get(f"sealfs-{backend}-{cs}", {}).get(workload)
                if r:
                    xs.append(i)
                    ys.append(r["median"])
                    lo.append(r["median"] - r["min"])
                    hi.append(r["max"] - r["median"])
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"sealfs ({backend})")
        if with_peers:
            for p in peers:
                r = t[p].get(workload)
                if r:
                    ax.axhline(r["median"], linestyle="--", color=colors.get(p, "tab:red"), label=p)
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_xlabel("sealfs chunk size")
        ax.set_title(workload)
        ax.set_ylabel(unit)
        lines = [ln for ln in ax.get_lines() if len(ln.get_ydata())]
        values = [v for ln in lines for v in ln.get_ydata() if v > 0]
        if values and max(values) / min(values) > 20:
            ax.set_yscale("log")      # peers an order of magnitude apart: ratios stay readable
        else:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, which="both")

    groups = [("throughput.png", ["seq_write", "seq_read", "cold_read"]),
              ("iops.png", ["rand_read_4k", "rand_write_4k", "create", "stat", "delete"]),
              ("tarball.png", ["tar_extract", "tar_read", "tar_delete"]),
              ("overhead.png", ["overhead_small", "overhead_large"]),
              ("memory.png", ["peak_rss"]),
              ("cpu.png", ["cpu_write", "cpu_read", "cpu_cold_read"])]
    for name, wls in groups:
        wls = [w for w in wls if any(w in t.get(label, {}) for label in specs)]
        if not wls:
            continue
        ncols = min(3, len(wls))
        nrows = (len(wls) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows + 0.4), squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax, w in zip(flat, wls, strict=False):     # flat has a panel per grid cell
            panel(ax, w)
        for ax in flat[len(wls):]:
            ax.set_visible(False)
        legend = legend_entries(flat[:len(wls)])
        fig.legend(list(legend.values()), list(legend), loc="lower center",
                   ncol=max(1, len(legend)), fontsize=8)
        fig.tight_layout(rect=(0, 0.4 / (3.6 * nrows + 0.4) + 0.04, 1, 1))
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def load(path: Path) -> Results:
    """A Results back from results.json (to redraw charts and tables)."""
    from .runner import TargetSpec
    data = json.loads(Path(path).read_text())
    res = Results(meta=data["meta"], errors=data.get("errors", []))
    for r in data["rows"]:
        res.specs.setdefault(r["target"], TargetSpec(r["target"], r["kind"], r["backend"],
                                                     r["chunk_size"] or None, None))
        res.samples[(r["target"], r["workload"])] = r["samples"]
    return res


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 3:
        sys.exit("usage: python -m sealfs.bench.report RESULTS.json OUTDIR")
    for p in write_all(load(Path(sys.argv[1])), Path(sys.argv[2])):
        print(p)
