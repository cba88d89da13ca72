"""Prometheus metrics, named like vLLM's (``vllm:`` becomes ``edgeinfer:``), one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from edgeinfer.cluster.state import ClusterState

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only add noise to scrapes
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "edgeinfer:http_requests", "HTTP requests by route and status code", ["route", "code"], registry=r
        )
        self.request_errors = Counter(
            "edgeinfer:request_errors",
            "Requests answered with an error, by status code",
            ["code"],
            registry=r,
        )
        self.request_success = Counter(
            "edgeinfer:request_success",
            "Finished generations by finish reason",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "edgeinfer:prompt_tokens", "Prompt tokens processed", ["model_name"], registry=r
        )
        self.generation_tokens = Counter(
            "edgeinfer:generation_tokens", "Tokens generated", ["model_name"], registry=r
        )
        self.running = Gauge(
            "edgeinfer:num_requests_running", "Requests being generated", ["model_name"], registry=r
        )
        self.waiting = Gauge(
            "edgeinfer:num_requests_waiting", "Requests waiting in the queue", ["model_name"], registry=r
        )
        self.batch_size = Histogram(
            "edgeinfer:batch_size",
            "Sequences advanced together by one decode step (continuous batching)",
            ["model_name"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "edgeinfer:time_to_first_token_seconds",
            "Time from start of generation to the first token",
            ["model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "edgeinfer:time_per_output_token_seconds",
            "Time between consecutive output tokens",
            ["model_name"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "edgeinfer:request_queue_time_seconds",
            "Time a request waited for the model",
            ["model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "edgeinfer:e2e_request_latency_seconds",
            "Time from arrival to the last token",
            ["model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        # cluster gateway (docs/resilience.md): synced from the backend's state at every scrape
        self.node_up = Gauge(
            "edgeinfer:node_up",
            "1 while a cluster node answers its heartbeat",
            ["model_name", "node"],
            registry=r,
        )
        self.failovers = Counter(
            "edgeinfer:failovers", "Failed pipeline stages recovered", ["model_name"], registry=r
        )
        self.replans = Counter("edgeinfer:replans", "Pipeline re-plans", ["model_name"], registry=r)
        self.replayed_tokens = Counter(
            "edgeinfer:replayed_tokens", "Tokens replayed to rebuild KV caches", ["model_name"], registry=r
        )
        self.recovery = Histogram(
            "edgeinfer:recovery_seconds",
            "Time from a failed step to the step that replayed the sequence",
            ["model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._cluster_seen: dict[tuple[str, str], int] = {}

        # speculative decoding (docs/speculative.md): synced from the backend's SpecStats at every scrape
        self.spec_acceptance = Gauge(
            "edgeinfer:spec_decode_draft_acceptance_rate",
            "Drafted tokens accepted / drafted tokens, since the model loaded",
            ["model_name"],
            registry=r,
        )
        self.spec_tokens_per_pass = Gauge(
            "edgeinfer:spec_decode_tokens_per_pass",
            "Tokens generated per forward pass of the model (1 = plain decoding), since the model loaded",
            ["model_name"],
            registry=r,
        )
        self.spec_counters = {
            what: Counter(f"edgeinfer:spec_decode_num_{what}", text, ["model_name"], registry=r)
            for what, text in (
                ("draft_tokens", "Tokens proposed by the drafter"),
                ("accepted_tokens", "Drafted tokens the model accepted"),
                ("emitted_tokens", "Tokens generated by speculative decoding"),
                ("passes", "Forward passes of the model in speculative decoding (after the prompt)"),
            )
        }
        self._spec_seen: dict[tuple[str, str], int] = {}

    def observe_cluster(self, model: str, state: ClusterState, recoveries: list[float]) -> None:
        """Sync from a cluster backend: its ``ClusterState`` and the recovery durations it measured since."""
        for node in state.nodes:
            self.node_up.labels(model, node.name).set(1 if node.up else 0)
        for what, counter, total in (
            ("failovers", self.failovers, state.failovers),
            ("replans", self.replans, state.replans),
            ("replayed_tokens", self.replayed_tokens, state.replayed_tokens),
        ):
            seen = self._cluster_seen.get((model, what), 0)
            if total > seen:
                counter.labels(model).inc(total - seen)
            self._cluster_seen[(model, what)] = total
        for seconds in recoveries:
            self.recovery.labels(model).observe(seconds)

    def observe_speculative(self, model: str, stats) -> None:  # type: ignore[no-untyped-def]
        """Sync from a speculative backend: ``stats`` its ``engine.speculative.SpecStats``."""
        snap = stats.snapshot()
        self.spec_acceptance.labels(model).set(snap.acceptance_rate)
        self.spec_tokens_per_pass.labels(model).set(snap.tokens_per_pass)
        totals = {
            "draft_tokens": snap.drafted,
            "accepted_tokens": snap.accepted,
            "emitted_tokens": snap.emitted,
            "passes": snap.passes,
        }
        for what, total in totals.items():
            seen = self._spec_seen.get((model, what), 0)
            if total > seen:
                self.spec_counters[what].labels(model).inc(total - seen)
            self._spec_seen[(model, what)] = total


class CountRequests:
    """ASGI middleware: every answer counted by route and status, refusals and crashes included."""

    def __init__(self, app, metrics: Metrics, routes: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_status(message) -> None:  # type: ignore[no-untyped-def]
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:  # refused before routing: name the path only if it is a known route
                route = scope["path"] if scope["path"] in self.routes else "unmatched"
            self.metrics.http_requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.request_errors.labels(str(status)).inc()
