"""gRPC transport of a node: a thin servicer over ``ShardHost`` (see proto/node.proto)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures

import grpc

from edgeinfer import __version__
from edgeinfer.cluster import wire
from edgeinfer.cluster.host import HostError, ShardHost
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
            "loaded %s [%d, %d) as %s", request.model, request.start_layer, request.end_layer, r["shard_id"]
        )
        return node_pb2.LoadReply(**r)

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
        out, seconds, seq_len = self.host.forward(
            request.shard_id, request.seq_id, x, request.start_pos, request.output or "logits"
        )
        if out.numel() == 2 and request.output == "top1":
            dtype = "f32"  # (id, logit) must stay exact
        return node_pb2.ForwardReply(output=wire.encode(out, dtype), compute_seconds=seconds, seq_len=seq_len)

    @_guard
    def Drop(self, request, context):
        self.host.drop(request.shard_id or None, request.seq_id)
        return node_pb2.Empty()

    @_guard
    def GetCapabilities(self, request, context):
        caps = self.host.capabilities(request.model or None, request.measure)
        shards = [node_pb2.ShardStatus(**s) for s in caps.pop("shards")]
        fields = set(node_pb2.Capabilities.DESCRIPTOR.fields_by_name)
        return node_pb2.Capabilities(
            shards=shards, version=__version__, **{k: v for k, v in caps.items() if k in fields}
        )

    def Ping(self, request, context):
        return node_pb2.PingReply(payload=b"\0" * max(0, request.reply_bytes))


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
