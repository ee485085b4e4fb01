"""The import graph keeps the layers of docs/ARCHITECTURE.md.

Built from the source (ast), not from importing it: every import statement counts, at
module level or inside a function, so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fs", "crypto", "backends", "bench")
# SDKs of one storage or key service: only the code that speaks to that service imports them
SERVICE_SDKS = ("smbprotocol", "smbclient", "spnego", "azure")
SDK_USERS = ("sealfs.backends", "sealfs.crypto.keys.kms_azure")


@dataclass(frozen=True)
class Edge:
    source: str          # importing module, e.g. sealfs.fs.cli.main
    target: str          # imported module, e.g. sealfs.fs.core.volume
    name: str | None     # the name imported from it (None: the module itself)
    line: int
    typing_only: bool = False   # under `if TYPE_CHECKING:`: never runs, so never a cycle

    def __str__(self) -> str:
        what = f"{self.target}.{self.name}" if self.name else self.target
        return f"{self.source}:{self.line} imports {what}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["sealfs", *parts])


def _modules() -> dict[str, Path]:
    found = {"sealfs": ROOT / "__init__.py", "sealfs.errors": ROOT / "errors.py"}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _edges_of(name: str, path: Path) -> Iterator[Edge]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test)
                   for stmt in node.body for inner in ast.walk(stmt)}
    for node in ast.walk(tree):
        only = id(node) in typing_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(name, alias.name, None, node.lineno, only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                if submodule in MODULES:      # `from . import workloads` is an edge to workloads
                    yield Edge(name, submodule, None, node.lineno, only)
                else:
                    yield Edge(name, module, alias.name, node.lineno, only)


EDGES = [edge for name, path in MODULES.items() for edge in _edges_of(name, path)]


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(source: tuple[str, ...], target: tuple[str, ...],
                exempt: tuple[str, ...] = ()) -> list[str]:
    return [str(e) for e in EDGES
            if _in(e.source, *source) and not _in(e.source, *exempt) and _in(e.target, *target)]


def test_the_graph_sees_the_code() -> None:
    """A parser that found nothing would pass every rule below."""
    assert "sealfs.fs.core.volume" in MODULES and "sealfs.bench.runner" in MODULES
    assert any(e.source == "sealfs.fs.cli.bench" and _in(e.target, "sealfs.bench") for e in EDGES)
    assert any(_in(e.target, "smbprotocol") for e in EDGES)


@pytest.mark.parametrize("source, forbidden, exempt", [
    # backends/ sees ciphertext only: no keys, no format, no filesystem
    (("sealfs.backends",), ("sealfs.fs", "sealfs.crypto", "sealfs.bench"), ()),
    # crypto/ does no storage I/O and knows no filesystem
    (("sealfs.crypto",), ("sealfs.fs", "sealfs.backends", "sealfs.bench"), ()),
    # the format is pure: key management sits on it, not under it
    (("sealfs.crypto.format",), ("sealfs.crypto.keys",), ()),
    # the core decides; the frontends (FUSE, CLI) and the offline tools sit on it
    (("sealfs.fs.core",), ("sealfs.fs.cli", "sealfs.fs.fuse", "sealfs.fs.tools"), ()),
    (("sealfs.fs.tools",), ("sealfs.fs.fuse", "sealfs.fs.cli"), ()),
    (("sealfs.fs.fuse",), ("sealfs.fs.cli", "sealfs.fs.tools"), ()),
    # the gateway runs `sealfs mount` and smbd as processes: no volume, no keys, no store in it
    (("sealfs.fs.gateway",), ("sealfs.fs.core", "sealfs.fs.fuse", "sealfs.fs.tools", "sealfs.fs.cli",
                              "sealfs.crypto", "sealfs.backends"), ()),
    (("sealfs.fs.core", "sealfs.fs.fuse", "sealfs.fs.tools"), ("sealfs.fs.gateway",), ()),
    # the product ships without its bench: one lazy entry point for `sealfs bench`
    (("sealfs.fs", "sealfs.crypto", "sealfs.backends"), ("sealfs.bench",), ("sealfs.fs.cli.bench",)),
    # only the code that talks to a service imports its SDK
    (("sealfs.fs", "sealfs.crypto", "sealfs.errors"), SERVICE_SDKS, SDK_USERS),
], ids=["backends", "crypto", "crypto.format", "fs.core", "fs.tools", "fs.fuse", "fs.gateway",
     "under-gateway", "bench-entry", "service-sdks"])
def test_layer_rule(source: tuple[str, ...], forbidden: tuple[str, ...], exempt: tuple[str, ...]) -> None:
    assert _violations(source, forbidden, exempt) == []


def test_the_cli_reaches_the_bench_through_one_entry_point() -> None:
    edges = [e for e in EDGES if e.source == "sealfs.fs.cli.bench" and _in(e.target, "sealfs.bench")]
    assert {(e.target, e.name) for e in edges} == {("sealfs.bench.cli", "run")}


def _private(edge: Edge) -> bool:
    parts = edge.target.split(".") + ([edge.name] if edge.name else [])
    return any(p.startswith("_") and not p.startswith("__") for p in parts)


def test_the_bench_uses_only_public_product_names() -> None:
    product = ("sealfs.fs", "sealfs.crypto", "sealfs.backends", "sealfs.errors")
    assert [str(e) for e in EDGES if _in(e.source, "sealfs.bench") and _in(e.target, *product)
            and _private(e)] == []


# (importer, module, name) still waiting for a public call; the test fails on an entry that
# no longer matches anything, so fixed ones are removed.
PENDING_PRIVATE: set[tuple[str, str, str]] = set()


def test_no_product_module_imports_another_modules_private_names() -> None:
    product = ("sealfs.fs", "sealfs.crypto", "sealfs.backends", "sealfs.errors")
    private = [e for e in EDGES if _in(e.source, *product) and _in(e.target, "sealfs") and _private(e)]
    assert [str(e) for e in private if (e.source, e.target, e.name) not in PENDING_PRIVATE] == []
    assert PENDING_PRIVATE - {(e.source, e.target, e.name) for e in private} == set(), \
        "fixed: remove these from PENDING_PRIVATE"


def _cycles(nodes: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {n: sorted({e.target for e in EDGES
                        if e.source == n and e.target in nodes and not e.typing_only})
             for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(n: str) -> None:
        index[n] = low[n] = len(index)
        stack.append(n)
        for m in graph[n]:
            if m not in index:
                visit(m)
                low[n] = min(low[n], low[m])
            elif m in stack:
                low[n] = min(low[n], index[m])
        if low[n] == index[n]:
            component = []
            while True:
                m = stack.pop()
                component.append(m)
                if m == n:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    global EDGES
    saved = EDGES
    EDGES = [Edge("a", "b", None, 1), Edge("b", "c", None, 1), Edge("c", "a", None, 1)]
    try:
        assert _cycles({"a", "b", "c"}) == [["a", "b", "c"]]
    finally:
        EDGES = saved


@pytest.mark.parametrize("package", ["sealfs.bench", "sealfs.fs", "sealfs.crypto", "sealfs.backends"])
def test_no_import_cycle(package: str) -> None:
    """Lazy imports count: a cycle they hold off is still a cycle."""
    assert _cycles({m for m in MODULES if _in(m, package)}) == []
