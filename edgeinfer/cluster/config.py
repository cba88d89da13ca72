"""The cluster YAML (documented in docs/cluster.md): which model, which nodes, how to plan.

A pydantic model with ``extra="forbid"`` at every level, so a typo names the key and where it is; read once
per command (``load_config``) and passed around as a ``ClusterConfig``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeinfer.cluster.planner import Objective, Strategy
from edgeinfer.cluster.wire import WireDtype
from edgeinfer.units import parse_bytes

LOCAL = "local"  # the name of the gateway's own device in plans and fixed stages


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSpec(_Strict):
    name: str = ""  # default: the address
    address: str  # host:port
    memory_limit: int | None = None  # caps what the planner may put on the node (bytes; YAML: 300MB, 1.5GiB)

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _size(cls, v: str | int | None) -> int | None:
        return parse_bytes(v)  # a ValueError becomes an error that names the field

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if ":" not in v:
            raise ValueError(f"{v!r} must be host:port")
        return v

    @model_validator(mode="after")
    def _default_name(self) -> NodeSpec:
        if not self.name:
            object.__setattr__(self, "name", self.address)
        return self


class Discovery(_Strict):
    """Nodes found as the A records of a DNS name (a Kubernetes headless Service)."""

    dns: str
    port: int = 50051
    expect: int = Field(1, ge=1)  # wait until at least this many addresses resolve
    timeout: float = Field(60.0, ge=0)
    interval: float = Field(10.0, ge=0)  # seconds between two re-resolutions while serving (0: never)


class FixedStage(_Strict):
    node: str  # a node name, or "local"
    layers: tuple[int, int]  # [start, end)

    @property
    def start(self) -> int:
        return self.layers[0]

    @property
    def end(self) -> int:
        return self.layers[1]


class PlannerOptions(_Strict):
    objective: Objective = "latency"
    strategy: Strategy = "auto"
    local: bool = False  # the gateway itself may hold the first layers (device<->edge)
    local_memory_limit: int | None = None
    local_threads: int | None = Field(None, ge=1)
    stages: tuple[FixedStage, ...] = ()  # a fixed plan instead of the planner's (still checked for memory)
    replicas: int = Field(0, ge=0)  # warm standbys per stage: 0 or 1 (docs/resilience.md)

    @field_validator("local_memory_limit", mode="before")
    @classmethod
    def _size(cls, v: str | int | None) -> int | None:
        return parse_bytes(v)

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: int) -> int:
        if v > 1:
            raise ValueError(
                f"{v} warm standbys per stage are not supported: 0 or 1 (one standby per stage; "
                "a second failure of the same stage is recovered by a re-plan, docs/resilience.md)"
            )
        return v


class FailoverOptions(_Strict):
    """Failure detection and recovery of the gateway (docs/resilience.md)."""

    heartbeat: float = Field(0.5, gt=0)  # seconds between two Pings of every node
    min_deadline: float = Field(0.5, gt=0)  # the shortest deadline of a Forward or a heartbeat Ping
    deadline_factor: float = Field(5.0, ge=1)  # a Forward's deadline: factor x its predicted time
    ban: float = Field(15.0, gt=0)  # first ban of a failed node (seconds); doubles on every new failure
    max_ban: float = Field(300.0, gt=0)
    recover: bool = True  # False: a failed stage ends the request (no re-plan, no replay)
    mirror: bool = True  # hot standbys: feed each standby its primary's inputs too (cluster/mirror.py)
    adapt: bool = True  # re-plan away from a node persistently slower than its profile
    slow_factor: float = Field(3.0, gt=1)  # "slow": observed compute > this x predicted (median, 32 steps)
    adapt_gain: float = Field(0.25, ge=0, lt=1)  # re-plan only if it predicts this much lower latency
    adapt_cooldown: float = Field(30.0, ge=0)  # seconds between two adaptations (no flapping)


class TlsOptions(_Strict):
    """Mutual TLS towards the nodes (files from `edgeinfer cluster certs`, see docs/security.md)."""

    ca: str  # the cluster CA certificate (PEM)
    cert: str  # the gateway's certificate
    key: str  # its private key
    server_name: str = "edgeinfer-node"  # the name every node certificate carries


class SecurityOptions(_Strict):
    token_file: str | None = None  # the cluster token; default: $EDGEINFER_CLUSTER_TOKEN (none: no token)
    tls: TlsOptions | None = None


class SpeculativeSection(_Strict):
    """Speculative decoding through the pipeline (docs/cluster.md): drafted tokens verified in one pass."""

    mode: Literal["off", "ngram"] = "off"  # ngram: prompt lookup (exit:K needs a model on one device)
    draft_max: int = Field(8, ge=1, le=64)  # tokens drafted per pass at most (the drafter backs off below)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: object) -> object:
        """``speculative: ngram`` is short for ``speculative: {mode: ngram}``."""
        return {"mode": v} if isinstance(v, str | bool) else v

    @field_validator("mode", mode="before")
    @classmethod
    def _off(cls, v: object) -> object:
        if isinstance(v, str) and v.startswith("exit:"):
            raise ValueError(
                "exit:K drafts with the model's own first K layers, which a pipeline spreads over its nodes: "
                "use ngram here (exit:K is an option of `edgeinfer serve` on one device)"
            )
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false

    def options(self):
        """The engine's ``SpeculativeOptions`` for these settings."""
        from edgeinfer.engine.speculative import SpeculativeOptions

        return SpeculativeOptions(self.mode, None, self.draft_max)


class ClusterConfig(_Strict):
    model: str = Field(min_length=1)  # bundled model name or GGUF path (resolved on every node)
    name: str | None = None  # served model name; default: the model's
    nodes: tuple[NodeSpec, ...] = ()
    discovery: Discovery | None = None
    planner: PlannerOptions = PlannerOptions()
    ctx_size: int = Field(4096, gt=0)
    wire_dtype: WireDtype = "f16"
    rpc_timeout: float = Field(60.0, gt=0)
    threads: int = Field(0, ge=0)  # per shard on the nodes; 0 = the node's default
    security: SecurityOptions = SecurityOptions()  # how the gateway authenticates to the nodes
    failover: FailoverOptions = FailoverOptions()
    speculative: SpeculativeSection = SpeculativeSection()

    @model_validator(mode="after")
    def _nodes(self) -> ClusterConfig:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        if LOCAL in names:
            raise ValueError(f"{LOCAL!r} is reserved for the gateway's own device")
        if bool(self.nodes) == bool(self.discovery):
            raise ValueError("give either 'nodes' or 'discovery: {dns: ...}'")
        return self

    @property
    def wants_local(self) -> bool:
        """The gateway's own device takes part (planned device<->edge or named in fixed stages)."""
        return self.planner.local or any(s.node == LOCAL for s in self.planner.stages)


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _explain(exc: pydantic.ValidationError, where: str) -> ConfigError:
    problems = []
    for e in exc.errors():
        at, kind = _location(e["loc"]), e["type"]
        if kind == "extra_forbidden":
            problems.append(f"unknown key {at!r}")
        elif kind == "missing":
            problems.append(f"{at!r} is required")
        else:
            message = e["msg"].removeprefix("Value error, ")
            problems.append(f"{at}: {message}" if at else message)
    return ConfigError(f"{where}: {'; '.join(problems)}")


def parse_config(raw: object, where: str = "cluster config") -> ClusterConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    try:
        return ClusterConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise _explain(exc, where) from None


def with_speculative(cfg: ClusterConfig, mode: str, draft_max: int) -> ClusterConfig:
    """``serve --cluster ... --speculative MODE --draft-max N``: the command line wins over the YAML."""
    raw = cfg.model_dump() | {"speculative": {"mode": mode, "draft_max": draft_max}}
    return parse_config(raw, "--speculative")


def load_config(path: str | Path) -> ClusterConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cluster file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path))


def discover(cfg: ClusterConfig) -> list[NodeSpec]:
    """Static nodes, or the A records of a Kubernetes headless Service (waits for ``expect`` of them)."""
    if cfg.nodes:
        return list(cfg.nodes)
    d = cfg.discovery
    assert d is not None
    deadline = time.monotonic() + d.timeout
    while True:
        found = resolve_dns(d)
        if len(found) >= d.expect:
            return found
        if time.monotonic() > deadline:
            raise ConfigError(
                f"DNS discovery: {d.dns} resolves to {len(found)} address(es) after {d.timeout:.0f} s, "
                f"expected at least {d.expect}"
            )
        time.sleep(1.0)


def resolve_dns(d: Discovery) -> list[NodeSpec]:
    """The nodes behind the discovery name now: one ``node-<ip>`` per A record (none if it does not
    resolve). The gateway calls it again every ``interval`` seconds (``Membership.rediscover``)."""
    try:
        infos = socket.getaddrinfo(d.dns, d.port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    ips = sorted({i[4][0] for i in infos})
    return [NodeSpec(name=f"node-{ip}", address=f"{ip}:{d.port}") for ip in ips]


def write_config(path: str | Path, model: str, nodes: list[NodeSpec], **extra) -> Path:
    """Write a static cluster YAML (used by `edgeinfer testbed up`)."""
    doc = {"model": model, "nodes": [{"name": n.name, "address": n.address} for n in nodes]} | extra
    p = Path(path)
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p
