"""Layering of the packages (docs/architecture.md), read from the real imports with ``ast``.

Every import inside ``edgeinfer`` (module level or inside a function, absolute or relative) is resolved to
the top-level package it comes from and to the one it reaches; an import that runs upward fails the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgeinfer"

# package -> packages it must never import (lower layers do not know the ones above them)
FORBIDDEN: dict[str, set[str]] = {
    "kernels": {"models", "engine", "api", "cluster", "split", "bench", "testbed", "cli"},
    "models": {"engine", "api", "cluster", "split", "bench", "cli"},
    "engine": {"api", "cluster", "split", "bench", "cli"},
    "cluster": {"api", "split", "bench", "cli"},
    "split": {"api", "cluster", "engine", "cli"},
    "testbed": {"cluster", "api", "engine", "split", "bench", "cli"},
    "bench": {"api", "cluster", "cli"},
    "api": {"cli", "bench", "split"},
    "units": {"kernels", "models", "engine", "api", "cluster", "split", "bench", "testbed", "process", "cli"},
    "process": {"kernels", "models", "engine", "api", "cluster", "split", "bench", "testbed", "units", "cli"},
    # a client of remote services (httpx): the engine/models offline for IDs, split's wire for the DNN client
    "inspect": {"api", "cluster", "bench", "testbed", "cli"},
}

# the only modules that may touch the generated gRPC code: proto conversion lives at the transport edge
# (wire.py: tensors <-> proto messages; auth.py: gRPC credentials and interceptors; used only by those two)
PROTO_OWNERS = {
    "edgeinfer.cluster.node",
    "edgeinfer.cluster.client",
    "edgeinfer.cluster.wire",
    "edgeinfer.cluster.auth",
    "edgeinfer.cluster.proto.node_pb2_grpc",
}
# the top level: the CLI wires everything
UNLAYERED = {"cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Fully qualified names of everything ``path`` imports (``from a import b`` gives ``a.b``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def _top(name: str) -> str | None:
    """The top-level package of an ``edgeinfer`` name (``edgeinfer.units`` -> ``units``), else None."""
    parts = name.split(".")
    return parts[1] if parts[0] == "edgeinfer" and len(parts) > 1 else None


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def import_graph() -> dict[str, set[tuple[str, str]]]:
    """Top-level package -> {(package imported, 'module -> name')} for imports that cross packages."""
    graph: dict[str, set[tuple[str, str]]] = {}
    for path in _sources():
        module = _module_name(path)
        here = _top(module)
        for name in _imports(path):
            there = _top(name)
            if here and there and there != here:
                graph.setdefault(here, set()).add((there, f"{module} -> {name}"))
    return graph


def test_the_scan_sees_the_known_imports() -> None:
    """The scanner itself: imports the tree is known to make must be found (else it could pass blind)."""
    graph = import_graph()
    assert ("models", "edgeinfer.engine.shard -> edgeinfer.models.kv_cache.KVCache") in graph["engine"]
    assert any(t == "kernels" for t, _ in graph["models"])  # `from edgeinfer import kernels`
    assert any(t == "engine" for t, _ in graph["cluster"])  # the gateway is a Backend
    assert any(t == "engine" for t, _ in graph["api"])


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_upward(package: str) -> None:
    upward = sorted(why for there, why in import_graph().get(package, set()) if there in FORBIDDEN[package])
    assert not upward, f"{package} must not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(upward)


def test_every_package_has_a_layer() -> None:
    """A new top-level package must be placed in FORBIDDEN (and in docs/architecture.md's table)."""
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__")}
    unplaced = (packages | modules) - set(FORBIDDEN) - UNLAYERED
    assert not unplaced, f"place these in FORBIDDEN and docs/architecture.md: {sorted(unplaced)}"


def test_proto_conversion_only_at_the_transport_edge() -> None:
    """Logic never imports transport: only node.py / client.py (and auth's interceptors) see the proto."""
    offenders = []
    for path in _sources():
        module = _module_name(path)
        for name in _imports(path):
            if name.startswith("edgeinfer.cluster.proto") and module not in PROTO_OWNERS:
                offenders.append(f"{module} -> {name}")
            if (name == "grpc" or name.startswith("grpc.")) and module not in PROTO_OWNERS:
                offenders.append(f"{module} -> {name}")
    assert not offenders, "transport imported outside node.py/client.py:\n" + "\n".join(offenders)
