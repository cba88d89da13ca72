"""gRPC transport of a node: a thin servicer over ``ShardHost`` (see proto/node.proto). The server side of the
proto conversion lives here (the client side in ``client.py``); ``host.py`` speaks dataclasses."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import asdict

import grpc

from edgeinfer.cluster import wire
from edgeinfer.cluster.host import Capabilities, HostError, ShardHost
from edgeinfer.cluster.proto import node_pb2, node_pb2_grpc

log = logging.getLogger("edgeinfer.node")
MAX_MESSAGE = 512 * 1024 * 1024  # a long prefill's hidden states fit easily
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]
_CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "memory": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "internal": grpc.StatusCode.INTERNAL,
}


def _guard(method):
    """Turn exceptions into gRPC errors with a clear message (never a hang, never a bare traceback)."""

    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except HostError as exc:
            context.abort(_CODES.get(exc.kind, grpc.StatusCode.INTERNAL), str(exc))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node {self.host.node_id}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported to the caller, logged here
            log.exception("node error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"node {self.host.node_id}: {type(exc).__name__}: {exc}")

    wrapper.__name__ = method.__name__
    return wrapper


class NodeServicer(node_pb2_grpc.NodeServicer):
    def __init__(self, host: ShardHost):
        self.host = host

    @_guard
    def Load(self, request, context):
        r = self.host.load(
            request.model, request.start_layer, request.end_layer, request.threads, request.max_seq_len
        )
        log.info(
            "loaded %s [%d, %d) as %s", request.model, request.start_layer, request.end_layer, r.shard_id
        )
        return node_pb2.LoadReply(**asdict(r))

    @_guard
    def Unload(self, request, context):
        self.host.unload(request.shard_id)
        return node_pb2.Empty()

    @_guard
    def Forward(self, request, context):
        dtype = request.wire_dtype or "f16"
        if dtype not in wire.WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {wire.WIRE_DTYPES}, got {dtype!r}")
        x = wire.decode(request.input)
        r = self.host.forward(
            request.shard_id, request.seq_id, x, request.start_pos, request.output or "logits"
        )
        if r.output.numel() == 2 and request.output == "top1":
            dtype = "f32"  # (id, logit) must stay exact
        return node_pb2.ForwardReply(
            output=wire.encode(r.output, dtype), compute_seconds=r.compute_seconds, seq_len=r.seq_len
        )

    @_guard
    def Drop(self, request, context):
        self.host.drop(request.shard_id or None, request.seq_id)
        return node_pb2.Empty()

    @_guard
    def GetCapabilities(self, request, context):
        return capabilities_to_proto(self.host.capabilities(request.model or None, request.measure))

    @_guard
    def Ping(self, request, context):
        beat = self.host.heartbeat(request.reply_bytes)
        fields = asdict(beat)
        del fields["seconds"]
        return node_pb2.PingReply(payload=b"\0" * request.reply_bytes, **fields)


def capabilities_to_proto(caps: Capabilities) -> node_pb2.Capabilities:
    """The measured profile's fields are flat in the message (zero when not measured)."""
    fields = asdict(caps)
    shards = [node_pb2.ShardStatus(**s) for s in fields.pop("shards")]
    profile = fields.pop("profile") or {}
    return node_pb2.Capabilities(shards=shards, **fields, **profile)


def start(host: ShardHost, listen: str, max_workers: int = 8) -> tuple[grpc.Server, int]:
    """Start serving on ``listen`` ('HOST:PORT', port 0 = any); returns (server, bound port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=GRPC_OPTIONS)
    node_pb2_grpc.add_NodeServicer_to_server(NodeServicer(host), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return server, port


def serve_forever(host: ShardHost, listen: str, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; ``ready(port)`` is called once listening."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server, port = start(host, listen)
    log.info("node %s listening on %s (port %d)", host.node_id, listen, port)
    if ready:
        ready(port)
    try:
        stop.wait()
    finally:
        server.stop(grace=2).wait(5)
        host.close()
