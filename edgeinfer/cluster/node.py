"""gRPC transport of a node: a thin servicer over ``ShardHost`` (see proto/node.proto). The server side of the
proto conversion lives here (the client side in ``client.py``); ``host.py`` speaks dataclasses."""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import asdict

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgeinfer.cluster import wire
from edgeinfer.cluster.auth import ClusterSecurity, TokenInterceptor, server_credentials
from edgeinfer.cluster.host import Capabilities, HostError, ShardHost
from edgeinfer.cluster.proto import node_pb2, node_pb2_grpc

log = logging.getLogger("edgeinfer.node")
DEFAULT_MAX_CONTEXT = 4096  # positions of the longest prefill one Forward carries (sizes the message limit)
MAX_HIDDEN = 8192  # the widest hidden state the node's message limit leaves room for (without a model hint)
MAX_MESSAGE = 64 * 1024 * 1024  # what a gateway accepts from a node (logits of one position, hidden states)
GRPC_OPTIONS = [  # the gateway's channels
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def message_limit(max_context: int = DEFAULT_MAX_CONTEXT, hidden: int = MAX_HIDDEN) -> int:
    """The largest request a node accepts: one prefill of ``max_context`` positions of ``hidden`` f32
    values (+ 1 MiB for the envelope and Ping payloads)."""
    return max_context * hidden * 4 + (1 << 20)


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
        x = wire.decode(request.input)  # the payload's length is checked against its shape
        r = self.host.forward(
            request.shard_id,
            request.seq_id,
            x,
            request.start_pos,
            request.output or "logits",
            request.all_positions,
        )
        if request.output == "top1" and r.output.shape[-1] == 2:
            dtype = "f32"  # (id, logit) rows must stay exact
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


def widest_hidden(host: ShardHost) -> int:
    """The largest hidden size among the models this node may load (bundled ones, GGUF files directly in
    its models directory); ``MAX_HIDDEN`` when that cannot be known (any path allowed, bundled models not
    assembled yet)."""
    from edgeinfer.models.gguf_file import GGUFFile
    from edgeinfer.models.registry import BUNDLED, cache_dir

    if host.any_path:
        return MAX_HIDDEN
    paths = [cache_dir() / m.filename for m in BUNDLED.values()]  # if assembled already (else: unknown)
    if not all(p.is_file() for p in paths):
        return MAX_HIDDEN
    if host.models_dir is not None:
        paths += sorted(host.models_dir.glob("*.gguf"))[:64]
    widest = 0
    for path in paths:
        try:
            f = GGUFFile(path)
        except Exception:  # noqa: BLE001 - not a model: it cannot be loaded either
            continue
        try:
            widest = max(widest, int(f.arch_get("embedding_length")))
        except Exception:  # noqa: BLE001
            pass
        finally:
            f.close()
    return widest or MAX_HIDDEN


def bound_allocator(mmap_threshold: int = 1 << 20) -> bool:
    """Serve every allocation above ``mmap_threshold`` with its own mapping, returned to the OS when freed
    (glibc's default raises the threshold as big blocks are freed and then keeps them, per worker thread's
    arena: a prefill's attention scratch would stay resident once per gRPC thread that ran one). Keeps the
    resident set near what the byte ceiling counts. False where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold, m_arena_max = -3, -8
        return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(libc.mallopt(m_arena_max, 2))
    except (OSError, AttributeError):
        return False


NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["Node"].full_name  # "edgeinfer.node.Node"
HEALTH_STALL = 30.0  # seconds without a free gRPC worker after which the node reports NOT_SERVING


class NodeHealth:
    """The standard gRPC health service (``grpc.health.v1.Health``) of a node, for kubelet ``grpc:`` probes
    and ``grpc_health_probe``. It reports, for ``""`` (the whole server) and ``edgeinfer.node.Node``:

    - SERVING while a gRPC worker of the node picks up new work within ``stall`` seconds;
    - NOT_SERVING when none has for ``stall`` seconds (every worker stuck, e.g. in a forward that never
      returns: calls would queue, then be refused), when the worker pool is gone, and from shutdown on.

    A watchdog thread submits a no-op to the node's worker pool every ``period`` seconds (while the previous
    one ran) and sets the status from how long the last one has been waiting. ``serve(listen)`` also answers
    the health service alone, in plaintext, on a second port: the kubelet's gRPC probes can present neither
    the cluster token nor a client certificate, and that port reveals nothing but the status."""

    def __init__(self, stall: float = HEALTH_STALL, period: float = 1.0):
        self.stall = stall
        self.period = period
        self.servicer = health.HealthServicer(experimental_non_blocking=True)
        self._pool: futures.Executor | None = None
        self._stop = threading.Event()
        self._closing = False
        self._serving: bool | None = None
        self._servers: list[grpc.Server] = []
        self._set(False)

    def attach(self, pool: futures.Executor) -> None:
        """Watch ``pool`` (the node server's workers) from now on."""
        self._pool = pool
        self._set(True)
        threading.Thread(target=self._watch, name="edgeinfer-health", daemon=True).start()

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    def _set(self, serving: bool) -> None:
        if serving == self._serving:
            return
        if self._serving is not None:
            log.log(
                logging.INFO if serving else logging.WARNING,
                "health: %s",
                "SERVING" if serving else "NOT_SERVING",
            )
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", NODE_SERVICE):
            self.servicer.set(service, status)

    def _watch(self) -> None:
        pending: futures.Future | None = None
        since = time.monotonic()
        while not self._stop.wait(self.period):
            try:
                if pending is None or pending.done():
                    pending, since = self._pool.submit(lambda: None), time.monotonic()
            except RuntimeError:  # the pool was shut down: the server stopped
                self._set(False)
                return
            stalled = not pending.done() and time.monotonic() - since >= self.stall
            self._set(not (stalled or self._closing))

    def serve(self, listen: str) -> int:
        """Answer the health service alone, without TLS or token, on ``listen``; returns the bound port."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), maximum_concurrent_rpcs=8)
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        port = server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        server.start()
        self._servers.append(server)
        return port

    def shutdown(self) -> None:
        """NOT_SERVING from now on (the node is stopping); the health port keeps answering until close()."""
        self._closing = True
        self._set(False)
        self.servicer.enter_graceful_shutdown()

    def close(self) -> None:
        self.shutdown()
        self._stop.set()
        for server in self._servers:
            server.stop(0)


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start(
    host: ShardHost,
    listen: str,
    max_workers: int = 8,
    security: ClusterSecurity | None = None,
    max_message: int | None = None,
    health: NodeHealth | None = None,
) -> tuple[grpc.Server, int]:
    """Start serving on ``listen`` ('HOST:PORT', port 0 = any); returns (server, bound port).

    ``security``: the token every call must carry and/or mutual TLS. At most ``max_workers`` calls run and
    as many more wait; the rest get RESOURCE_EXHAUSTED at once. Requests above ``max_message`` bytes are
    refused by gRPC before they are buffered whole. ``health``: the gRPC health service, also served on
    this port (behind the same token/TLS), watching this server's workers."""
    limit = max_message or message_limit()
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    interceptors = [TokenInterceptor(security.token)] if security and security.token else []
    pool = futures.ThreadPoolExecutor(max_workers=max_workers)
    server = grpc.server(
        pool,
        options=options,
        interceptors=interceptors,
        maximum_concurrent_rpcs=2 * max_workers,
    )
    node_pb2_grpc.add_NodeServicer_to_server(NodeServicer(host), server)
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    if security and security.tls:
        port = server.add_secure_port(listen, server_credentials(security))
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    if health is not None:
        health.attach(pool)
    return server, port


def _reaper(host: ShardHost, stop: threading.Event) -> None:
    """Drop sequences idle for the host's TTL (gateways that vanished without dropping them)."""
    while not stop.wait(max(0.2, min(host.idle_ttl / 4, 10.0))):
        for seq_id in host.evict_idle():
            log.info("dropped idle sequence %s", seq_id)


def serve_forever(
    host: ShardHost,
    listen: str,
    ready: Callable[[int], None] | None = None,
    security: ClusterSecurity | None = None,
    max_message: int | None = None,
    health_listen: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; ``ready(port)`` is called once listening. ``health_listen``: also answer
    the gRPC health service alone, in plaintext, there (the kubelet's gRPC probes)."""
    bound_allocator()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node_health = NodeHealth()
    server, port = start(host, listen, security=security, max_message=max_message, health=node_health)
    if health_listen:
        try:
            health_port = node_health.serve(health_listen)
        except OSError:
            server.stop(0)
            raise
        log.info("gRPC health service (plaintext, health only) on %s (port %d)", health_listen, health_port)
    mode = security.describe() if security else "none"
    log.info(
        "node %s listening on %s (port %d); authentication: %s; memory limit %.0f MiB",
        host.node_id,
        listen,
        port,
        mode,
        host.memory_limit / 2**20,
    )
    if (security is None or security.open) and not is_loopback(listen):
        log.warning(
            "node %s listens on %s WITHOUT a cluster token or TLS: anyone who reaches this port can load "
            "models, run forwards and unload the gateway's shards. Use --token-file or "
            "$EDGEINFER_CLUSTER_TOKEN, or --tls-cert/--tls-key/--tls-ca (docs/security.md), or listen on "
            "127.0.0.1.",
            host.node_id,
            listen,
        )
    threading.Thread(target=_reaper, args=(host, stop), name="edgeinfer-reaper", daemon=True).start()
    if ready:
        ready(port)
    try:
        stop.wait()
    finally:
        node_health.shutdown()  # NOT_SERVING while the calls in flight finish
        server.stop(grace=2).wait(5)
        node_health.close()
        host.close()
