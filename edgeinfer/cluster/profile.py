"""Measure a cluster for the planner: per-node layer time and memory (the node's capabilities call), per-link
RTT and bandwidth (ping probes) and the latency a real ``Forward`` call adds to the node's compute, then
build the planner's ``Problem``."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

from edgeinfer.cluster.client import NodeClient, NodeError
from edgeinfer.cluster.config import ClusterConfig, discover
from edgeinfer.cluster.host import ShardHost
from edgeinfer.planner.pipeline import GATEWAY, Link, ModelCost, NodeCost, Problem

log = logging.getLogger("edgeinfer.cluster")
LOCAL = "local"


@dataclass
class NodeProfile:
    name: str
    address: str
    caps: dict  # capabilities incl. layer_seconds, head_seconds, layer_bytes, ...
    rtt: float = 0.0
    bandwidth: float = float("inf")
    memory: float = float("inf")  # what the planner may use: free RAM capped by limits
    local: bool = False
    call: float = 0.0  # seconds a Forward RPC adds to the node's compute (gRPC, codec, link); 0 = unknown


@dataclass
class ClusterProfile:
    nodes: list[NodeProfile]
    clients: dict[str, NodeClient] = field(default_factory=dict)
    local_host: ShardHost | None = None

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def _caps_dict(msg) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def probe_forward(
    client: NodeClient, model: str, caps: dict, threads: int = 0, wire_dtype: str = "f16", steps: int = 8
) -> float:
    """Median seconds one decode-step ``Forward`` RPC takes beyond the node's own compute time: gRPC on both
    sides, the wire codec, the node's bookkeeping and the link's latency — what a pipeline hop really costs,
    which an empty ``Ping`` underestimates. Loads one middle layer for the probe and unloads it; 0.0 when the
    model is too shallow for a middle layer or the node cannot load one (the planner then uses the ping RTT).
    """
    import torch

    n, hidden = int(caps["n_layers"]), int(caps["hidden_size"])
    if n < 3:
        return 0.0
    layer = n // 2
    try:
        shard = client.load(model, layer, layer + 1, threads, steps + 2).shard_id
    except NodeError as exc:
        log.info("forward probe on %s skipped: %s", client.name, exc)
        return 0.0
    try:
        extra = []
        x = torch.zeros(1, hidden)
        for i in range(steps + 1):
            t0 = time.perf_counter()
            _, reply = client.forward(shard, "probe", x, i, "logits", wire_dtype)
            if i:  # the first call warms up
                extra.append(time.perf_counter() - t0 - reply.compute_seconds)
    finally:
        client.unload(shard)
    return max(0.0, statistics.median(extra))


def profile_cluster(cfg: ClusterConfig, progress=None) -> ClusterProfile:
    """Connect to every node, measure it and its link. ``progress(message)`` is called between steps."""
    say = progress or (lambda m: log.info(m))
    specs = discover(cfg)
    out = ClusterProfile([])
    try:
        for spec in specs:
            client = NodeClient(spec.address, spec.name, timeout=cfg.rpc_timeout)
            out.clients[spec.name] = client
            client.wait_ready(timeout=min(30.0, cfg.rpc_timeout))
            say(f"profiling {spec.name} ({spec.address}): layer time ...")
            caps = _caps_dict(client.capabilities(cfg.model, measure=True))
            for k in ("free_ram", "total_ram", "layer_bytes", "head_bytes", "embed_bytes", "memory_limit"):
                caps[k] = int(caps.get(k, 0))
            caps["layer_sizes"] = [int(v) for v in caps.get("layer_sizes", [])]
            say(f"profiling {spec.name}: link ...")
            rtt, bw = client.probe_link()
            call = probe_forward(client, cfg.model, caps, cfg.threads, cfg.wire_dtype)
            memory = float(caps["free_ram"])
            if spec.memory_limit is not None:
                memory = min(memory, spec.memory_limit)
            out.nodes.append(NodeProfile(spec.name, spec.address, caps, rtt, bw, memory, call=call))
        if cfg.local or any(s.node == LOCAL for s in cfg.stages):
            say("profiling the local device ...")
            host = ShardHost(LOCAL, threads=cfg.local_threads, memory_limit=cfg.local_memory_limit)
            caps = host.capabilities(cfg.model, measure=True)
            out.local_host = host
            out.nodes.append(
                NodeProfile(LOCAL, "in-process", caps, 0.0, float("inf"), float(caps["free_ram"]), local=True)
            )
    except BaseException:
        out.close()
        raise
    return out


def build_problem(profile: ClusterProfile, wire_bytes: int = 2, output_bytes: float = 8.0) -> Problem:
    """The planner's view: measured costs, the model's per-layer bytes, bytes per token on the wire."""
    if not profile.nodes:
        raise ValueError("the cluster has no nodes")
    ref = profile.nodes[0].caps
    n_layers = int(ref["n_layers"])
    for p in profile.nodes:
        if int(p.caps["n_layers"]) != n_layers:
            raise ValueError(
                f"node {p.name} reports {p.caps['n_layers']} layers, {profile.nodes[0].name} {n_layers}"
            )
    sizes = [p.caps.get("layer_sizes") or [] for p in profile.nodes]
    layer_bytes: float | list[float] = max(p.caps["layer_bytes"] for p in profile.nodes)
    if all(len(s) == n_layers for s in sizes):  # every layer's own size (they differ with mixed types)
        layer_bytes = [float(max(col)) for col in zip(*sizes, strict=True)]
    model = ModelCost(
        n_layers=n_layers,
        layer_bytes=layer_bytes,
        embed_bytes=max(p.caps["embed_bytes"] for p in profile.nodes),
        head_bytes=max(p.caps["head_bytes"] for p in profile.nodes),
        activation_bytes=int(ref["hidden_size"]) * wire_bytes,
        input_bytes=4,
        output_bytes=output_bytes,
    )
    nodes = [
        NodeCost(
            p.name,
            float(p.caps["layer_seconds"]),
            memory=p.memory,
            head_time=float(p.caps["head_seconds"]),
            stage_time=float(p.caps.get("stage_seconds", 0.0)),
            local=p.local,
        )
        for p in profile.nodes
    ]
    # a hop's fixed latency: what a real Forward call adds to the compute (it includes the RTT), else the RTT
    links = {(GATEWAY, p.name): Link(max(p.rtt, p.call), p.bandwidth) for p in profile.nodes if not p.local}
    return Problem(nodes, model, links, topology="star")
