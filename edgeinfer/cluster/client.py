"""gRPC client of a node: every call has a timeout and fails with a ``NodeError`` that names the node."""

from __future__ import annotations

import statistics
import time

import grpc

from edgeinfer.cluster import wire
from edgeinfer.cluster.node import GRPC_OPTIONS
from edgeinfer.cluster.proto import node_pb2, node_pb2_grpc


class NodeError(RuntimeError):
    def __init__(self, name: str, address: str, what: str, code: str, details: str):
        super().__init__(f"node {name} ({address}) failed during {what}: {code}: {details}")
        self.name, self.address, self.code = name, address, code


class NodeClient:
    def __init__(
        self, address: str, name: str | None = None, timeout: float = 30.0, load_timeout: float = 300.0
    ):
        self.address = address
        self.name = name or address
        self.timeout = timeout
        self.load_timeout = load_timeout
        self.channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        self.stub = node_pb2_grpc.NodeStub(self.channel)

    def _call(self, what: str, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout)
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

    def load(self, model: str, start: int, end: int, threads: int = 0, max_seq_len: int = 0):
        req = node_pb2.LoadRequest(
            model=model, start_layer=start, end_layer=end, threads=threads, max_seq_len=max_seq_len
        )
        return self._call("load", self.stub.Load, req, timeout=self.load_timeout)

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
        input_dtype: str | None = None,
    ):
        """x: token ids (sent as i32) or hidden states (sent as ``wire_dtype``). Returns (tensor, reply)."""
        import torch

        dtype = input_dtype or ("i32" if not torch.is_floating_point(x) else wire_dtype)
        req = node_pb2.ForwardRequest(
            shard_id=shard_id,
            seq_id=seq_id,
            input=wire.encode(x, dtype),
            start_pos=start_pos,
            output=output,
            wire_dtype=wire_dtype,
        )
        reply = self._call("forward", self.stub.Forward, req)
        return wire.decode(reply.output), reply

    def drop(self, seq_id: str, shard_id: str = "") -> None:
        self._call("drop", self.stub.Drop, node_pb2.DropRequest(shard_id=shard_id, seq_id=seq_id))

    def capabilities(self, model: str = "", measure: bool = False, timeout: float | None = None):
        req = node_pb2.CapabilitiesRequest(model=model, measure=measure)
        return self._call(
            "capabilities",
            self.stub.GetCapabilities,
            req,
            timeout=timeout or (self.load_timeout if measure else self.timeout),
        )

    def ping(self, payload_bytes: int = 0, reply_bytes: int = 0) -> float:
        """Seconds for one Ping round trip carrying ``payload_bytes`` out and ``reply_bytes`` back."""
        req = node_pb2.PingRequest(payload=b"\0" * payload_bytes, reply_bytes=reply_bytes)
        t0 = time.perf_counter()
        self._call("ping", self.stub.Ping, req)
        return time.perf_counter() - t0

    def probe_link(self, n_rtt: int = 15, max_probe_seconds: float = 1.0) -> tuple[float, float]:
        """(median RTT in s, bandwidth in bytes/s): small pings, then payloads growing from 64 KiB up to 4 MiB
        until one takes >= 50 ms (or the next would exceed ``max_probe_seconds``)."""
        self.ping()  # warm the channel
        rtt = statistics.median(self.ping() for _ in range(n_rtt))
        size, samples = 64 * 1024, []
        while True:
            t = min(self.ping(size) for _ in range(2))
            samples.append(size / max(t - rtt, 1e-6))
            if t >= 0.05 or size >= 4 << 20 or t * 4 > max_probe_seconds:
                break
            size *= 4
        return rtt, samples[-1]

    def close(self) -> None:
        self.channel.close()
