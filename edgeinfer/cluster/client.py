"""gRPC client of a node: every call has a timeout and fails with a ``NodeError`` that names the node. The
client side of the proto conversion: callers get the dataclasses of ``host.py``, never proto messages."""

from __future__ import annotations

import statistics
import time

import grpc

from edgeinfer.cluster import wire
from edgeinfer.cluster.auth import ClusterSecurity, call_metadata, open_channel
from edgeinfer.cluster.host import (
    Capabilities,
    ForwardResult,
    LayerProfile,
    LoadResult,
    PingResult,
    ShardStatus,
)
from edgeinfer.cluster.node import GRPC_OPTIONS
from edgeinfer.cluster.proto import node_pb2, node_pb2_grpc


class NodeError(RuntimeError):
    def __init__(self, name: str, address: str, what: str, code: str, details: str):
        super().__init__(f"node {name} ({address}) failed during {what}: {code}: {details}")
        self.name, self.address, self.code = name, address, code


class NodeClient:
    def __init__(
        self,
        address: str,
        name: str | None = None,
        timeout: float = 30.0,
        load_timeout: float = 300.0,
        security: ClusterSecurity | None = None,
    ):
        """``security``: the cluster token and/or mutual TLS the node requires (None: an open node)."""
        self.address = address
        self.name = name or address
        self.timeout = timeout
        self.load_timeout = load_timeout
        self.security = security
        self.channel = open_channel(address, security, GRPC_OPTIONS)
        self._metadata = call_metadata(security) if security else ()
        self.stub = node_pb2_grpc.NodeStub(self.channel)

    def _call(self, what: str, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            raise NodeError(self.name, self.address, what, code, exc.details() or str(exc)) from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise NodeError(
                self.name, self.address, "connect", "UNAVAILABLE", f"not reachable within {timeout:.0f} s"
            ) from None

    def load(self, model: str, start: int, end: int, threads: int = 0, max_seq_len: int = 0) -> LoadResult:
        req = node_pb2.LoadRequest(
            model=model, start_layer=start, end_layer=end, threads=threads, max_seq_len=max_seq_len
        )
        r = self._call("load", self.stub.Load, req, timeout=self.load_timeout)
        return LoadResult(r.shard_id, r.weight_bytes, r.load_seconds, r.n_layers, r.hidden_size, r.vocab_size)

    def unload(self, shard_id: str) -> None:
        self._call("unload", self.stub.Unload, node_pb2.ShardRef(shard_id=shard_id))

    def forward(
        self,
        shard_id: str,
        seq_id: str,
        x,
        start_pos: int,
        output: str = "logits",
        wire_dtype: str = "f16",
        timeout: float | None = None,
        all_positions: bool = False,
    ) -> ForwardResult:
        """x: token ids (sent as i32) or hidden states (sent as ``wire_dtype``); ``timeout``: this call's
        deadline in seconds (default: the client's), the gateway derives it from the profiled step time;
        ``all_positions``: the last shard returns the output of every position (speculative verification)."""
        import torch

        dtype = wire_dtype if torch.is_floating_point(x) else "i32"
        req = node_pb2.ForwardRequest(
            shard_id=shard_id,
            seq_id=seq_id,
            input=wire.encode(x, dtype),
            start_pos=start_pos,
            output=output,
            wire_dtype=wire_dtype,
            all_positions=all_positions,
        )
        reply = self._call("forward", self.stub.Forward, req, timeout=timeout)
        return ForwardResult(wire.decode(reply.output), reply.compute_seconds, reply.seq_len)

    def drop(self, seq_id: str, shard_id: str = "") -> None:
        self._call("drop", self.stub.Drop, node_pb2.DropRequest(shard_id=shard_id, seq_id=seq_id))

    def capabilities(
        self, model: str = "", measure: bool = False, timeout: float | None = None
    ) -> Capabilities:
        """The node's state; with ``model`` and ``measure`` also its measured ``LayerProfile`` of it."""
        req = node_pb2.CapabilitiesRequest(model=model, measure=measure)
        m = self._call(
            "capabilities",
            self.stub.GetCapabilities,
            req,
            timeout=timeout or (self.load_timeout if measure else self.timeout),
        )
        profile = None
        if m.n_layers:  # measured
            profile = LayerProfile(
                layer_seconds=m.layer_seconds,
                stage_seconds=m.stage_seconds,
                head_seconds=m.head_seconds,
                layer_bytes=m.layer_bytes,
                layer_sizes=tuple(m.layer_sizes),
                head_bytes=m.head_bytes,
                embed_bytes=m.embed_bytes,
                n_layers=m.n_layers,
                hidden_size=m.hidden_size,
                vocab_size=m.vocab_size,
            )
        shards = tuple(
            ShardStatus(s.shard_id, s.model, s.start_layer, s.end_layer, s.weight_bytes, s.sequences)
            for s in m.shards
        )
        return Capabilities(
            node_id=m.node_id,
            free_ram=m.free_ram,
            total_ram=m.total_ram,
            cores=m.cores,
            load1=m.load1,
            active_requests=m.active_requests,
            memory_limit=m.memory_limit,
            shards=shards,
            version=m.version,
            profile=profile,
        )

    def ping(self, payload_bytes: int = 0, reply_bytes: int = 0, timeout: float | None = None) -> PingResult:
        """One Ping round trip carrying ``payload_bytes`` out and ``reply_bytes`` (<= 1 MiB) back: its time
        in seconds and the node's load (the failover heartbeat)."""
        req = node_pb2.PingRequest(payload=b"\0" * payload_bytes, reply_bytes=reply_bytes)
        t0 = time.perf_counter()
        r = self._call("ping", self.stub.Ping, req, timeout=timeout)
        return PingResult(
            seconds=time.perf_counter() - t0,
            load1=r.load1,
            free_bytes=r.free_bytes,
            active_sequences=r.active_sequences,
            uptime_s=r.uptime_s,
        )

    def probe_link(self, n_rtt: int = 15, max_probe_seconds: float = 1.0) -> tuple[float, float]:
        """(median RTT in s, bandwidth in bytes/s): small pings, then payloads growing from 64 KiB up to 4 MiB
        until one takes >= 50 ms (or the next would exceed ``max_probe_seconds``)."""
        self.ping()  # warm the channel
        rtt = statistics.median(self.ping().seconds for _ in range(n_rtt))
        size, samples = 64 * 1024, []
        while True:
            t = min(self.ping(size).seconds for _ in range(2))
            samples.append(size / max(t - rtt, 1e-6))
            if t >= 0.05 or size >= 4 << 20 or t * 4 > max_probe_seconds:
                break
            size *= 4
        return rtt, samples[-1]

    def close(self) -> None:
        self.channel.close()


class NodePool:
    """The gateway's connections to its nodes, by node name; the one owner that closes them."""

    def __init__(self, security: ClusterSecurity | None = None) -> None:
        self.security = security  # the token / certificates every connection uses
        self._clients: dict[str, NodeClient] = {}

    def connect(self, name: str, address: str, timeout: float) -> NodeClient:
        client = NodeClient(address, name, timeout=timeout, security=self.security)
        self._clients[name] = client
        return client

    def __getitem__(self, name: str) -> NodeClient:
        return self._clients[name]

    def names(self) -> list[str]:
        return list(self._clients)

    def keep(self, names: set[str]) -> None:
        """Close the connections to every node not in ``names`` (the nodes a plan left out)."""
        for name in [n for n in self._clients if n not in names]:
            self._clients.pop(name).close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
