"""Measure a cluster for the planner: per-node layer time and memory (the node's capabilities call), per-link
RTT and bandwidth (ping probes) and the latency a real ``Forward`` call adds to the node's compute, then
build the planner's ``Problem``."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeinfer.cluster.auth import cluster_security
from edgeinfer.cluster.client import NodeClient, NodeError, NodePool
from edgeinfer.cluster.config import LOCAL, ClusterConfig, discover
from edgeinfer.cluster.host import LayerProfile, ShardHost
from edgeinfer.cluster.planner import GATEWAY, Link, ModelCost, NodeCost, Problem

log = logging.getLogger("edgeinfer.cluster")


@dataclass
class NodeProfile:
    name: str
    address: str
    layers: LayerProfile  # measured layer / head times and weight sizes of the model on this node
    rtt_s: float = 0.0
    bytes_per_s: float = float("inf")  # link bandwidth
    memory: float = float("inf")  # bytes the planner may use: free RAM capped by limits
    local: bool = False
    call_s: float = 0.0  # seconds a Forward RPC adds to the node's compute (gRPC, codec, link); 0 = unknown


@dataclass
class ClusterProfile:
    nodes: list[NodeProfile]
    clients: NodePool = field(default_factory=NodePool)
    local_host: ShardHost | None = None

    def close(self) -> None:
        self.clients.close()


def probe_forward(
    client: NodeClient,
    model: str,
    layers: LayerProfile,
    threads: int = 0,
    wire_dtype: str = "f16",
    steps: int = 8,
) -> float:
    """Median seconds one decode-step ``Forward`` RPC takes beyond the node's own compute time: gRPC on both
    sides, the wire codec, the node's bookkeeping and the link's latency — what a pipeline hop really costs,
    which an empty ``Ping`` underestimates. Loads one middle layer for the probe and unloads it; 0.0 when the
    model is too shallow for a middle layer or the node cannot load one (the planner then uses the ping RTT).
    """
    import torch

    n, hidden = layers.n_layers, layers.hidden_size
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
            r = client.forward(shard, "probe", x, i, "logits", wire_dtype)
            if i:  # the first call warms up
                extra.append(time.perf_counter() - t0 - r.compute_seconds)
    finally:
        client.unload(shard)
    return max(0.0, statistics.median(extra))


def profile_node(
    cfg: ClusterConfig, client: NodeClient, memory_limit: int | None = None, say=None, reclaim: bool = False
) -> NodeProfile:
    """Measure one node (layer times, link, the cost of a Forward call) and the memory the planner may use
    on it: what it has free, capped by ``memory_limit`` (the YAML's). ``reclaim``: also count the weights of
    the shards it holds (a node profiled again while serving: its leftovers are unloaded, the rest are the
    gateway's own stages)."""
    say = say or (lambda m: log.info(m))
    say(f"profiling {client.name} ({client.address}): layer time ...")
    caps = client.capabilities(cfg.model, measure=True)
    if caps.profile is None:
        raise ValueError(f"node {client.name} ({client.address}) did not measure {cfg.model}")
    say(f"profiling {client.name}: link ...")
    rtt, bw = client.probe_link()
    call = probe_forward(client, cfg.model, caps.profile, cfg.threads, cfg.wire_dtype)
    memory = float(caps.free_ram + (sum(sh.weight_bytes for sh in caps.shards) if reclaim else 0))
    if memory_limit is not None:
        memory = min(memory, memory_limit)
    return NodeProfile(client.name, client.address, caps.profile, rtt, bw, memory, call_s=call)


def profile_cluster(cfg: ClusterConfig, progress=None) -> ClusterProfile:
    """Connect to every node, measure it and its link. ``progress(message)`` is called between steps."""
    say = progress or (lambda m: log.info(m))
    specs = discover(cfg)
    out = ClusterProfile([], clients=NodePool(cluster_security(cfg)))
    try:
        for spec in specs:
            client = out.clients.connect(spec.name, spec.address, timeout=cfg.rpc_timeout)
            client.wait_ready(timeout=min(30.0, cfg.rpc_timeout))
            out.nodes.append(profile_node(cfg, client, spec.memory_limit, say))
        if cfg.wants_local:
            say("profiling the local device ...")
            host = ShardHost(
                LOCAL, threads=cfg.planner.local_threads, memory_limit=cfg.planner.local_memory_limit
            )
            caps = host.capabilities(cfg.model, measure=True)
            assert caps.profile is not None
            out.local_host = host
            out.nodes.append(
                NodeProfile(LOCAL, "in-process", caps.profile, memory=float(caps.free_ram), local=True)
            )
    except BaseException:
        out.close()
        raise
    return out


def build_problem(
    profile: ClusterProfile, wire_bytes: int = 2, output_bytes: float = 8.0, kv_bytes: float = 0.0
) -> Problem:
    """The planner's view: measured costs, the model's per-layer bytes, bytes per token on the wire.
    ``kv_bytes``: one layer's KV cache for a full context (``kv_reservation``), reserved per stage."""
    if not profile.nodes:
        raise ValueError("the cluster has no nodes")
    ref = profile.nodes[0].layers
    n_layers = ref.n_layers
    for p in profile.nodes:
        if p.layers.n_layers != n_layers:
            raise ValueError(
                f"node {p.name} reports {p.layers.n_layers} layers, {profile.nodes[0].name} {n_layers}"
            )
    sizes = [p.layers.layer_sizes for p in profile.nodes]
    layer_bytes: float | list[float] = max(p.layers.layer_bytes for p in profile.nodes)
    if all(len(s) == n_layers for s in sizes):  # every layer's own size (they differ with mixed types)
        layer_bytes = [float(max(col)) for col in zip(*sizes, strict=True)]
    model = ModelCost(
        n_layers=n_layers,
        layer_bytes=layer_bytes,
        embed_bytes=max(p.layers.embed_bytes for p in profile.nodes),
        head_bytes=max(p.layers.head_bytes for p in profile.nodes),
        activation_bytes=ref.hidden_size * wire_bytes,
        input_bytes=4,
        output_bytes=output_bytes,
        kv_bytes=kv_bytes,
    )
    nodes = [node_cost(p) for p in profile.nodes]
    links = {(GATEWAY, p.name): node_link(p) for p in profile.nodes if not p.local}
    return Problem(nodes, model, links)


def node_cost(p: NodeProfile) -> NodeCost:
    """The planner's costs of one measured node."""
    layers = p.layers
    return NodeCost(
        p.name,
        layers.layer_seconds,
        memory=p.memory,
        head_time=layers.head_seconds,
        stage_time=layers.stage_seconds,
        local=p.local,
    )


def node_link(p: NodeProfile) -> Link:
    """The gateway->node hop: its fixed latency is what a real Forward call adds to the compute (which
    includes the RTT), else the RTT."""
    return Link(max(p.rtt_s, p.call_s), p.bytes_per_s)


def kv_reservation(model_path: str | Path, ctx_size: int) -> float:
    """Bytes of one layer's KV cache for one sequence of the full context the gateway serves: ``ctx_size``
    capped by the model's training context, times a token's keys and values (f16, as the nodes keep them)."""
    from edgeinfer.engine.batch import KV_BYTES_PER_VALUE, kv_shape
    from edgeinfer.models.gguf_file import GGUFFile

    shape = kv_shape(str(model_path))
    f = GGUFFile(model_path)
    try:
        train = int(f.arch_get("context_length", ctx_size))
    finally:
        f.close()
    return float(min(ctx_size, train) * (shape.n_embd_k + shape.n_embd_v) * KV_BYTES_PER_VALUE)
