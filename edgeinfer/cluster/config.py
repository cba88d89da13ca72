"""The cluster YAML (documented in docs/cluster.md): which model, which nodes, how to plan."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgeinfer.cluster.host import parse_bytes
from edgeinfer.planner.pipeline import OBJECTIVES, STRATEGIES

WIRE = ("f16", "bf16", "f32")


class ConfigError(ValueError):
    pass


@dataclass
class NodeSpec:
    name: str
    address: str  # host:port
    memory_limit: int | None = None  # caps what the planner may put on the node (bytes)


@dataclass
class FixedStage:
    node: str  # a node name, or "local"
    start: int
    end: int


@dataclass
class ClusterConfig:
    model: str
    nodes: list[NodeSpec]
    name: str | None = None
    ctx_size: int = 4096
    wire_dtype: str = "f16"
    rpc_timeout: float = 60.0
    threads: int = 0
    objective: str = "latency"
    strategy: str = "auto"
    local: bool = False  # the gateway itself may hold the first layers (device<->edge)
    local_memory_limit: int | None = None
    local_threads: int | None = None
    stages: list[FixedStage] = field(default_factory=list)
    dns: str | None = None
    dns_port: int = 50051
    dns_expect: int = 1
    dns_timeout: float = 60.0
    path: str | None = None


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def load_config(path: str | Path) -> ClusterConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cluster file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    _require(isinstance(raw, dict), f"{path}: the top level must be a mapping")
    return parse_config(raw, str(path))


def parse_config(raw: dict, where: str = "cluster config") -> ClusterConfig:
    known = {
        "model",
        "name",
        "nodes",
        "discovery",
        "planner",
        "ctx_size",
        "wire_dtype",
        "rpc_timeout",
        "threads",
    }
    unknown = set(raw) - known
    _require(not unknown, f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    _require(
        isinstance(raw.get("model"), str) and raw["model"],
        f"{where}: 'model' (name or GGUF path) is required",
    )
    nodes = []
    for i, n in enumerate(raw.get("nodes") or []):
        _require(isinstance(n, dict) and "address" in n, f"{where}: nodes[{i}] needs an 'address: host:port'")
        addr = str(n["address"])
        _require(":" in addr, f"{where}: nodes[{i}].address {addr!r} must be host:port")
        try:
            limit = parse_bytes(n.get("memory_limit"))
        except ValueError as exc:
            raise ConfigError(f"{where}: nodes[{i}]: {exc}") from None
        nodes.append(NodeSpec(str(n.get("name") or addr), addr, limit))
    names = [n.name for n in nodes]
    _require(len(set(names)) == len(names), f"{where}: node names must be unique: {names}")
    _require("local" not in names, f"{where}: 'local' is reserved for the gateway's own device")
    disc = raw.get("discovery") or {}
    _require(isinstance(disc, dict), f"{where}: 'discovery' must be a mapping")
    _require(
        bool(nodes) != bool(disc.get("dns")), f"{where}: give either 'nodes' or 'discovery: {{dns: ...}}'"
    )
    planner = raw.get("planner") or {}
    _require(isinstance(planner, dict), f"{where}: 'planner' must be a mapping")
    cfg = ClusterConfig(
        model=raw["model"],
        nodes=nodes,
        name=raw.get("name"),
        ctx_size=int(raw.get("ctx_size", 4096)),
        wire_dtype=str(raw.get("wire_dtype", "f16")),
        rpc_timeout=float(raw.get("rpc_timeout", 60)),
        threads=int(raw.get("threads", 0)),
        objective=str(planner.get("objective", "latency")),
        strategy=str(planner.get("strategy", "auto")),
        local=bool(planner.get("local", False)),
        local_memory_limit=parse_bytes(planner.get("local_memory_limit")),
        local_threads=planner.get("local_threads"),
        dns=disc.get("dns"),
        dns_port=int(disc.get("port", 50051)),
        dns_expect=int(disc.get("expect", 1)),
        dns_timeout=float(disc.get("timeout", 60)),
        path=where,
    )
    _require(cfg.wire_dtype in WIRE, f"{where}: wire_dtype must be one of {WIRE}")
    _require(cfg.objective in OBJECTIVES, f"{where}: planner.objective must be one of {OBJECTIVES}")
    _require(cfg.strategy in STRATEGIES, f"{where}: planner.strategy must be one of {STRATEGIES}")
    _require(cfg.ctx_size > 0 and cfg.rpc_timeout > 0, f"{where}: ctx_size and rpc_timeout must be positive")
    for i, s in enumerate(planner.get("stages") or []):
        ok = (
            isinstance(s, dict)
            and "node" in s
            and isinstance(s.get("layers"), list)
            and len(s["layers"]) == 2
        )
        _require(ok, f"{where}: planner.stages[{i}] must be {{node: NAME, layers: [start, end]}}")
        cfg.stages.append(FixedStage(str(s["node"]), int(s["layers"][0]), int(s["layers"][1])))
    return cfg


def discover(cfg: ClusterConfig) -> list[NodeSpec]:
    """Static nodes, or the A records of a Kubernetes headless Service (waits for ``expect`` of them)."""
    if cfg.nodes:
        return cfg.nodes
    assert cfg.dns
    deadline = time.monotonic() + cfg.dns_timeout
    while True:
        try:
            infos = socket.getaddrinfo(cfg.dns, cfg.dns_port, socket.AF_INET, socket.SOCK_STREAM)
            ips = sorted({i[4][0] for i in infos})
        except socket.gaierror:
            ips = []
        if len(ips) >= cfg.dns_expect:
            return [NodeSpec(f"node-{ip}", f"{ip}:{cfg.dns_port}") for ip in ips]
        if time.monotonic() > deadline:
            raise ConfigError(
                f"DNS discovery: {cfg.dns} resolves to {len(ips)} address(es) after {cfg.dns_timeout:.0f} s, "
                f"expected at least {cfg.dns_expect}"
            )
        time.sleep(1.0)


def write_config(path: str | Path, model: str, nodes: list[NodeSpec], **extra) -> Path:
    """Write a static cluster YAML (used by `edgeinfer testbed up`)."""
    doc = {"model": model, "nodes": [{"name": n.name, "address": n.address} for n in nodes]} | extra
    p = Path(path)
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p
