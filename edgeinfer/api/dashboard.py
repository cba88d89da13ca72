"""The live dashboard: ``GET /dashboard`` (a static page from the package, no CDN) and ``GET
/v1/dashboard/state``, the JSON the page polls every second.

The state is assembled here from what the server already keeps: the model workers (state, queue depth), the
Prometheus metrics (counters and histograms, read from the app's registry, never scraped over HTTP) and, on a
gateway (``serve --cluster``), the pipeline backend's plan, measured profile and per-stage timings. Rates and
percentiles are over a sliding window of snapshots taken when the state is read (at least ``MIN_SPACING``
apart), so they describe the last seconds, not the process's lifetime.

The page shell and its script/style are open like ``/health`` (they hold no data); the state route obeys the
API key rule of ``/v1`` and the page asks for the key when it gets a 401.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from edgeinfer.api.errors import APIError
from edgeinfer.api.metrics import Metrics
from edgeinfer.cluster.state import ClusterView, NodeStatus

if TYPE_CHECKING:
    from edgeinfer.api.worker import ModelWorker

log = logging.getLogger("edgeinfer.api")

RATE_WINDOW = 10.0  # seconds of history behind tok/s and req/s
LATENCY_WINDOW = 300.0  # seconds of history behind the percentiles (like Grafana's rate(...[5m]))
MIN_SPACING = 0.5  # seconds between two kept snapshots
QUANTILES = (0.5, 0.9, 0.99)
STEP_SAMPLES = 64  # recent decode steps per stage behind the step time
STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# the page runs only its own script and style and talks only to this server
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


# --- the state, as the page receives it ------------------------------------------------------------------
@dataclass
class ModelView:
    name: str
    state: str  # loading | ready | failed
    error: str | None
    backend: str | None  # llama.cpp | shard | cluster ...
    architecture: str | None
    n_ctx: int | None
    running: int
    waiting: int
    max_queue: int


@dataclass
class Percentiles:
    """Seconds at the 50th/90th/99th percentile (None without observations) over ``count`` observations."""

    p50: float | None
    p90: float | None
    p99: float | None
    count: int


@dataclass
class Traffic:
    requests: int  # answers of the generation routes (completions, chat) since start
    errors: int  # of which 4xx/5xx (refusals included: 401, 429, ...)
    generations: int  # finished generations
    prompt_tokens: int
    generation_tokens: int  # counted as they stream, so the rate moves during a request
    tokens_per_second: float | None  # over the last RATE_WINDOW seconds
    requests_per_second: float | None
    window_seconds: float


@dataclass
class NodeView:
    name: str
    address: str | None
    local: bool  # the gateway's own device
    layers: list[int] | None  # [first, last] layer it holds; None when the plan left it out
    head: bool  # it holds the output head
    weight_bytes: float | None  # of its stage
    memory_bytes: float | None  # what the planner could use on it
    hop_ms: float | None  # fixed latency of a call gateway -> node (RTT or measured Forward overhead)
    mbit_per_s: float | None  # link bandwidth measured at bring-up
    standby_for: list[int] | None  # [first, last] layers it holds warm as a standby
    predicted_ms: float | None  # planner's compute + hop per token for its stage
    step_ms: float | None  # median node compute of recent decode steps
    rpc_ms: float | None  # median whole call of recent decode steps (compute + hop)
    steps: int  # decode steps behind those medians
    excluded: str | None  # why the plan left it out
    up: bool | None = None  # from the gateway's heartbeat; None when it has none
    load1: float | None = None  # the node's 1-minute load average (heartbeat)
    free_bytes: float | None = None  # memory it may still use (heartbeat)
    failures: int = 0
    last_error: str | None = None


@dataclass
class Topology:
    model: str
    n_layers: int
    strategy: str
    objective: str
    predicted_tokens_per_second: float | None
    nodes: list[NodeView]
    available: bool = True  # the gateway can serve (False: not enough nodes left)
    reason: str | None = None
    failovers: int = 0
    replans: int = 0
    migrations: int = 0  # re-plans away from a slow node
    last_recovery: str | None = None


@dataclass
class DashboardState:
    time: float
    uptime_seconds: float
    gateway: bool
    models: list[ModelView]
    traffic: Traffic
    ttft: Percentiles
    tpot: Percentiles
    e2e: Percentiles
    queue_time: Percentiles
    latency_window_seconds: float
    topology: Topology | None = None


# --- reading the Prometheus metrics ---------------------------------------------------------------------
def _total(metric, suffix: str = "_total", keep=lambda labels: True) -> float:
    """Sum of a counter over its label sets (those ``keep`` accepts)."""
    out = 0.0
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(suffix) and keep(s.labels):
                out += s.value
    return out


GENERATION_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})


def _api(labels: dict[str, str]) -> bool:
    return labels.get("route") in GENERATION_ROUTES


def _api_error(labels: dict[str, str]) -> bool:
    return _api(labels) and labels.get("code", "").isdigit() and int(labels["code"]) >= 400


def _buckets(metric) -> dict[float, float]:
    """Cumulative bucket counts of a histogram, summed over its label sets: upper bound -> count."""
    out: dict[float, float] = {}
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + s.value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding the q-th
    observation; the largest finite bound when it falls in the +Inf bucket; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank and count > prev_count:
            if math.isinf(b):
                return prev_bound
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = (b if not math.isinf(b) else prev_bound), count
    return prev_bound


@dataclass
class Snapshot:
    t: float
    requests: float
    errors: float
    generations: float
    prompt_tokens: float
    generation_tokens: float
    histograms: dict[str, dict[float, float]] = field(default_factory=dict)


HISTOGRAMS = ("ttft", "tpot", "e2e", "queue_time")


def snapshot(metrics: Metrics, now: float) -> Snapshot:
    return Snapshot(
        t=now,
        requests=_total(metrics.http_requests, keep=_api),
        errors=_total(metrics.http_requests, keep=_api_error),
        generations=_total(metrics.request_success),
        prompt_tokens=_total(metrics.prompt_tokens),
        generation_tokens=_total(metrics.generation_tokens),
        histograms={h: _buckets(getattr(metrics, h)) for h in HISTOGRAMS},
    )


class Window:
    """Snapshots of the metrics over the last ``LATENCY_WINDOW`` seconds, at least ``MIN_SPACING`` apart."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._kept: deque[Snapshot] = deque()
        self._lock = threading.Lock()

    def take(self, now: float | None = None) -> tuple[Snapshot, Snapshot | None, Snapshot | None]:
        """(now, the oldest kept within RATE_WINDOW, the oldest kept within LATENCY_WINDOW)."""
        now = time.monotonic() if now is None else now
        cur = snapshot(self.metrics, now)
        with self._lock:
            while self._kept and now - self._kept[0].t > LATENCY_WINDOW:
                self._kept.popleft()
            rate_base = next((s for s in self._kept if now - s.t <= RATE_WINDOW), None)
            latency_base = self._kept[0] if self._kept else None
            if not self._kept or now - self._kept[-1].t >= MIN_SPACING:
                self._kept.append(cur)
        return cur, rate_base, latency_base


def _percentiles(cur: dict[float, float], base: dict[float, float] | None) -> Percentiles:
    window = {b: c - (base or {}).get(b, 0.0) for b, c in cur.items()}
    if not window or max(window.values()) <= 0:  # nothing in the window: the whole lifetime
        window = cur
    qs = [quantile(q, window) for q in QUANTILES]
    return Percentiles(*qs, count=int(max(window.values(), default=0)))


# --- the gateway's pipeline -----------------------------------------------------------------------------
def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isinf(seconds) else seconds * 1e3


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) or math.isnan(x) else x


def topology(backend: Any) -> Topology | None:
    """The pipeline of a gateway backend (``PipelineBackend``): plan, profile and recent step times."""
    plan, problem = getattr(backend, "plan", None), getattr(backend, "problem", None)
    if plan is None or problem is None:
        return None
    from edgeinfer.cluster.planner import GATEWAY

    live = [s for s in getattr(backend, "stages", []) if s is not None]
    stages = {s.name: s for s in live}
    placed = {s.name: s.placement for s in live} or {s.node: s for s in plan.stages}
    spares = getattr(backend, "standbys", None)
    if spares is not None:
        standby = {s.name: s.placement for s in spares if s is not None}
    else:
        standby = {s.node: s for s in getattr(plan, "standbys", []) if s is not None}
    health = backend.cluster_state() if isinstance(backend, ClusterView) else None
    beats = {n.name: n for n in health.nodes} if health else {}
    n_layers = problem.model.n_layers
    pool = getattr(backend, "nodes", None)
    nodes = []
    for j, cost in enumerate(problem.nodes):
        name = cost.name
        st, stage = placed.get(name), stages.get(name)
        weights = predicted = None
        if st is not None:  # the live placement (it changes on failover): its costs from the profile
            weights = problem.stage_memory(st.start, st.end)
            predicted = problem.compute(j, st.start, st.end) + problem.hop(j, st.start, st.end)[0]
        address = None
        if stage is not None and hasattr(stage, "client"):
            address = stage.client.address
        elif pool is not None and name in pool.names():
            address = pool[name].address
        rtt = mbit = None
        if not cost.local:
            try:
                link = problem.link(GATEWAY, name)
                rtt, mbit = _ms(link.rtt_s), _finite(link.bytes_per_s * 8 / 1e6)
            except ValueError:
                pass
        decode = []
        if stage is not None:
            try:
                recent = list(stage.timings)[-STEP_SAMPLES * 4 :]
            except RuntimeError:  # appended to while copied
                recent = []
            decode = [t for t in recent if t[0] == 1][-STEP_SAMPLES:]
        nodes.append(
            NodeView(
                name=name,
                address=address,
                local=cost.local,
                layers=[st.start, st.end - 1] if st else None,
                head=bool(st and st.end == n_layers),
                weight_bytes=weights,
                memory_bytes=_finite(cost.memory),
                hop_ms=rtt,
                mbit_per_s=mbit,
                standby_for=[standby[name].start, standby[name].end - 1] if name in standby else None,
                predicted_ms=_ms(predicted),
                step_ms=_ms(_median(t[2] for t in decode)),
                rpc_ms=_ms(_median(t[1] for t in decode)),
                steps=len(decode),
                excluded=None if name in placed else plan.excluded.get(name),
                **_beat(beats.get(name)),
            )
        )
    order = {name: i for i, name in enumerate(placed)}
    nodes.sort(key=lambda n: (order.get(n.name, len(order)), n.name))
    return Topology(
        model=backend.info.name,
        n_layers=n_layers,
        strategy=plan.strategy_used,
        objective=plan.objective,
        predicted_tokens_per_second=_finite(plan.tokens_per_second),
        nodes=nodes,
        available=health.available if health else True,
        reason=health.reason if health else None,
        failovers=health.failovers if health else 0,
        replans=health.replans if health else 0,
        migrations=health.migrations if health else 0,
        last_recovery=health.last_recovery if health else None,
    )


def _beat(node: NodeStatus | None) -> dict[str, Any]:
    if not node:
        return {}
    return {
        "up": node.up,
        "load1": _finite(node.load1),
        "free_bytes": _finite(node.free_bytes),
        "failures": node.failures,
        "last_error": node.last_error,
    }


def _model_state(w: ModelWorker) -> str:
    """loading | ready | failed, or unavailable: a gateway that lost too many nodes to serve."""
    if w.state == "ready" and isinstance(w.backend, ClusterView) and not w.backend.health()[0]:
        return "unavailable"
    return w.state


def _gauge(metrics: Metrics, name: str, model: str) -> int:
    return int(metrics.registry.get_sample_value(name, {"model_name": model}) or 0)


# --- assembling and serving -----------------------------------------------------------------------------
class Dashboard:
    def __init__(self, workers: Iterable[ModelWorker], metrics: Metrics):
        self.workers = list(workers)
        self.window = Window(metrics)
        self.started = time.monotonic()
        self._last_topology: Topology | None = None

    def _topology(self, backend: Any) -> Topology | None:
        """The gateway's topology; while a failover rewires the pipeline under it, the last one read."""
        try:
            self._last_topology = topology(backend)
        except Exception:  # noqa: BLE001 - a view must not fail the page; logged, then the last good one
            log.warning("dashboard: reading the cluster's topology failed", exc_info=True)
        return self._last_topology

    def state(self) -> DashboardState:
        now = time.monotonic()
        cur, rate_base, latency_base = self.window.take(now)
        models = []
        gateway_backend = None
        for w in self.workers:
            info = w.backend.info if w.backend is not None else None
            if info is not None and info.backend == "cluster":
                gateway_backend = w.backend
            models.append(
                ModelView(
                    name=w.name,
                    state=_model_state(w),
                    error=w.error,
                    backend=info.backend if info else None,
                    architecture=info.architecture if info else None,
                    n_ctx=info.n_ctx if info else None,
                    running=_gauge(w.metrics, "edgeinfer:num_requests_running", w.name),
                    waiting=_gauge(w.metrics, "edgeinfer:num_requests_waiting", w.name),
                    max_queue=w.max_queue,
                )
            )
        tps = rps = None
        span = now - rate_base.t if rate_base else 0.0
        if rate_base is not None and span > 0:
            tps = (cur.generation_tokens - rate_base.generation_tokens) / span
            rps = (cur.requests - rate_base.requests) / span
        traffic = Traffic(
            requests=int(cur.requests),
            errors=int(cur.errors),
            generations=int(cur.generations),
            prompt_tokens=int(cur.prompt_tokens),
            generation_tokens=int(cur.generation_tokens),
            tokens_per_second=tps,
            requests_per_second=rps,
            window_seconds=span,
        )
        base = latency_base.histograms if latency_base else {}
        pct = {h: _percentiles(cur.histograms[h], base.get(h)) for h in HISTOGRAMS}
        is_gateway = any(m.backend == "cluster" for m in models)
        return DashboardState(
            time=time.time(),
            uptime_seconds=now - self.started,
            gateway=is_gateway,
            models=models,
            traffic=traffic,
            latency_window_seconds=min(LATENCY_WINDOW, now - latency_base.t) if latency_base else 0.0,
            topology=self._topology(gateway_backend) if gateway_backend is not None else None,
            **pct,
        )


def _static(name: str) -> bytes:
    return resources.files("edgeinfer.api").joinpath("static", name).read_bytes()


def install(app: FastAPI, workers: Iterable[ModelWorker], metrics: Metrics) -> None:
    """Add the dashboard's routes to ``app``."""
    dash = Dashboard(workers, metrics)

    @app.get("/dashboard", include_in_schema=False)
    async def page() -> Response:
        return Response(
            _static("dashboard.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS
        )

    @app.get("/dashboard/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in STATIC_FILES:
            raise APIError(404, f"no dashboard file {name!r}", code="not_found")
        return Response(_static(name), media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    @app.get("/v1/dashboard/state")
    async def state() -> JSONResponse:
        # off the event loop: the gateway's view takes the pipeline's locks
        body = await asyncio.to_thread(lambda: asdict(dash.state()))
        return JSONResponse(body, headers={"Cache-Control": "no-store"})
