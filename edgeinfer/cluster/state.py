"""The live state of a cluster gateway as typed values: every node's membership state, the stages and
standbys of the pipeline, what recovery did (docs/resilience.md). Built by ``Membership`` and
``PipelineBackend``; turned into JSON once, at the API edge (``ClusterState.to_json``), for
``GET /v1/cluster``, ``/metrics`` and the dashboard.

``ClusterView`` is the narrow protocol a served backend implements when a cluster serves it: the API checks
it with ``isinstance`` instead of probing attributes. Plain Python: no transport, no torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

KEPT = 1024  # recent recovery durations kept until the metrics read them


@dataclass(frozen=True)
class NodeStatus:
    """One node as the heartbeat sees it."""

    name: str
    address: str
    up: bool
    banned_for_s: float  # seconds of ban left (0 when up or due for a Ping)
    failures: int  # times declared dead
    last_error: str | None
    rtt_ms: float | None  # last heartbeat round trip
    load1: float | None
    free_bytes: int | None  # what the node may still use (its ceiling minus weights and KV caches)
    active_sequences: int | None


@dataclass(frozen=True)
class StageStatus:
    """A loaded shard of the pipeline: which node holds which layers ``[start, end)``."""

    node: str
    start: int
    end: int


@dataclass
class ResilienceStats:
    """What recovery did (counters read by ``ClusterState`` and the server's metrics)."""

    failovers: int = 0  # recoveries of a failed stage (standby or re-plan)
    replans: int = 0
    migrations: int = 0  # re-plans away from a slow node
    replayed_tokens: int = 0
    recoveries: deque[float] = field(default_factory=lambda: deque(maxlen=KEPT))  # seconds each
    last_recovery: str = ""
    joined: int = 0  # nodes added by discovery after start
    left: int = 0  # nodes gone from discovery


@dataclass(frozen=True)
class ClusterState:
    """One consistent read of a gateway: availability, the live plan, its stages, standbys and nodes."""

    available: bool
    reason: str | None
    plan: str | None
    stages: tuple[StageStatus, ...]
    standbys: tuple[StageStatus | None, ...]
    nodes: tuple[NodeStatus, ...]
    failovers: int = 0
    replans: int = 0
    migrations: int = 0
    replayed_tokens: int = 0
    last_recovery: str | None = None

    def node(self, name: str) -> NodeStatus | None:
        return next((n for n in self.nodes if n.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The JSON of ``GET /v1/cluster`` (one model's entry)."""
        out = asdict(self)
        out["stages"] = [asdict(s) for s in self.stages]
        out["standbys"] = [None if s is None else asdict(s) for s in self.standbys]
        out["nodes"] = [asdict(n) for n in self.nodes]
        return out


@runtime_checkable
class ClusterView(Protocol):
    """A backend served by a cluster: its live state, whether it can serve now, and the recovery times
    measured since the last call (drained by the metrics)."""

    def cluster_state(self) -> ClusterState: ...

    def health(self) -> tuple[bool, str | None]: ...

    def take_recoveries(self) -> list[float]: ...
