"""The OpenAI-compatible HTTP API over one or more model workers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgeinfer.api import dashboard
from edgeinfer.api.errors import APIError, install_handlers, parse_body
from edgeinfer.api.guard import Guard, HostCheck, HTTPPolicy
from edgeinfer.api.metrics import CountRequests, Metrics
from edgeinfer.api.responses import ResponseBuilder, collect_events, stream_events
from edgeinfer.api.schemas import UNSUPPORTED, ChatCompletionRequest, CompletionRequest, SamplingFields
from edgeinfer.api.worker import Job, ModelWorker, QueueFull
from edgeinfer.cluster.state import ClusterView
from edgeinfer.engine.chat import ChatFormatError, ChatFormatter, build_chat_prompt
from edgeinfer.engine.generate import ContextLengthExceeded, check_context
from edgeinfer.engine.speculative import ReportsSpeculation
from edgeinfer.models.registry import lookup


class ModelSet:
    """The served models by name; the first one answers requests that name no model."""

    def __init__(self, workers: list[ModelWorker]):
        if not workers:
            raise ValueError("at least one model must be served")
        self.workers = {w.name: w for w in workers}
        self.default = workers[0].name
        self._formatters: dict[str, ChatFormatter] = {}

    def find(self, name: str | None) -> ModelWorker | None:
        """The worker serving ``name``: a served name or a bundled model's alias (``qwen``)."""
        if name is None:
            return self.workers[self.default]
        if name in self.workers:
            return self.workers[name]
        bundled = lookup(name)
        return self.workers.get(bundled.name) if bundled else None

    def get(self, name: str | None) -> ModelWorker:
        worker = self.find(name)
        if worker is None:
            served = ", ".join(self.workers)
            raise APIError(
                404,
                f"The model '{name}' does not exist. Served models: {served}.",
                "model",
                "model_not_found",
            )
        if worker.state == "failed":
            raise APIError(
                503, f"model '{worker.name}' failed to load: {worker.error}", code="model_load_failed"
            )
        if worker.state == "loading":
            raise APIError(
                503, f"model '{worker.name}' is still loading; retry shortly", code="model_loading"
            )
        if reason := unavailable(worker):
            raise APIError(503, f"model '{worker.name}' is unavailable: {reason}", code="cluster_unavailable")
        return worker

    def formatter(self, worker: ModelWorker) -> ChatFormatter:
        if worker.name not in self._formatters:
            info = worker.backend.info
            self._formatters[worker.name] = ChatFormatter(info.chat_template, info.bos_token, info.eos_token)
        return self._formatters[worker.name]


def unavailable(worker: ModelWorker) -> str | None:
    """Why a loaded backend cannot serve now (a cluster that lost too many nodes), else None."""
    if not isinstance(worker.backend, ClusterView):
        return None
    ok, reason = worker.backend.health()
    return None if ok else reason or "unavailable"


def _reject_unsupported(req: SamplingFields) -> None:
    for key, value in (req.model_extra or {}).items():
        if key in UNSUPPORTED and value not in (None, False, [], {}, 0):
            raise APIError(400, f"{UNSUPPORTED[key]} by this server; remove '{key}'", key, "unsupported")
    if req.n != 1:
        raise APIError(400, "only n=1 is supported; send several requests instead", "n", "unsupported")


def create_app(
    workers: list[ModelWorker],
    metrics: Metrics | None = None,
    policy: HTTPPolicy | None = None,
    allow_special_tokens: bool = False,
) -> FastAPI:
    models = ModelSet(workers)
    metrics = metrics or workers[0].metrics
    policy = policy or HTTPPolicy()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for w in models.workers.values():
            w.start()
        yield
        for w in models.workers.values():
            await asyncio.to_thread(w.close)

    app = FastAPI(title="edgeinfer", version="0.1.0", lifespan=lifespan)
    app.state.models = models
    app.state.metrics = metrics
    install_handlers(app)

    # outermost last: count every answer, then the Host check, CORS, and keys / body limits
    app.add_middleware(Guard, policy=policy)
    if policy.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(policy.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(HostCheck, policy=policy)

    @app.get("/health")
    async def health() -> JSONResponse:
        states = {name: w.state for name, w in models.workers.items()}
        down = {n: r for n, w in models.workers.items() if w.state == "ready" and (r := unavailable(w))}
        states |= dict.fromkeys(down, "unavailable")
        ok = all(s == "ready" for s in states.values())
        status = "ok" if ok else ("error" if "failed" in states.values() else "loading")
        status = "unavailable" if down and status != "error" else status
        body: dict[str, Any] = {"status": status, "models": states}
        errors = {n: w.error for n, w in models.workers.items() if w.error} | down
        if errors:
            body["errors"] = errors
        return JSONResponse(body, status_code=200 if ok else 503)

    def clusters() -> dict[str, ClusterView]:
        return {n: w.backend for n, w in models.workers.items() if isinstance(w.backend, ClusterView)}

    @app.get("/v1/cluster")
    async def cluster() -> dict[str, Any]:
        """The live plan, node states and standbys of every cluster-served model (docs/resilience.md)."""
        found = clusters()
        if not found:
            raise APIError(404, "no model is served by a cluster", code="not_a_cluster")
        return {"object": "cluster", "models": {n: b.cluster_state().to_json() for n, b in found.items()}}

    @app.get("/metrics")
    async def prometheus() -> Response:
        for n, b in clusters().items():
            metrics.observe_cluster(n, b.cluster_state(), b.take_recoveries())
        for n, w in models.workers.items():
            if isinstance(w.backend, ReportsSpeculation):
                metrics.observe_speculative(n, w.backend.spec_stats)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_entry(w: ModelWorker) -> dict[str, Any]:
        # no filesystem path: a client learns what it can ask for, not where the server keeps its files
        entry: dict[str, Any] = {"id": w.name, "object": "model", "created": 0, "owned_by": "edgeinfer"}
        if w.backend is not None:
            info = w.backend.info
            entry["meta"] = {
                "architecture": info.architecture,
                "n_ctx": info.n_ctx,
                "chat_template": bool(info.chat_template),
            }
        entry["status"] = w.state
        return entry

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_entry(w) for w in models.workers.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        worker = models.find(model_id)
        if worker is None:
            raise APIError(404, f"The model '{model_id}' does not exist", "model", "model_not_found")
        return model_entry(worker)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await parse_body(request, ChatCompletionRequest)
        _reject_unsupported(body)
        worker = models.get(body.model)

        def prepare() -> tuple[list[int], Any]:
            messages = [m.model_dump() for m in body.messages]
            formatter = models.formatter(worker)
            try:
                prompt = build_chat_prompt(worker.backend, messages, formatter, allow_special_tokens)
            except ChatFormatError as exc:
                raise APIError(400, str(exc), "messages", "invalid_messages") from exc
            return prompt.tokens, body.sampling(prompt.stops)

        tokens, params = await asyncio.to_thread(prepare)  # O(prompt) work stays off the event loop
        return await _run(request, worker, tokens, params, body, chat=True, param="messages")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await parse_body(request, CompletionRequest)
        _reject_unsupported(body)
        if body.echo:
            raise APIError(400, "echo is not supported by this server", "echo", "unsupported")
        worker = models.get(body.model)
        tokens = await asyncio.to_thread(_completion_tokens, worker, body.prompt)
        return await _run(request, worker, tokens, body.sampling(), body, chat=False, param="prompt")

    def _completion_tokens(worker: ModelWorker, prompt: str | list[str] | list[int]) -> list[int]:
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            vocab = worker.backend.info.vocab_size
            if vocab and any(not 0 <= t < vocab for t in prompt):
                raise APIError(400, f"token ids must be in [0, {vocab})", "prompt", "invalid_value")
            return list(prompt)
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(
                    400,
                    "send one prompt per request (batched prompts are not supported)",
                    "prompt",
                    "unsupported",
                )
            prompt = prompt[0]
        if not prompt:
            raise APIError(400, "prompt must not be empty", "prompt", "invalid_value")
        return worker.backend.tokenize(prompt, add_bos=True)

    async def _run(
        request: Request,
        worker: ModelWorker,
        tokens: list[int],
        params,
        body: SamplingFields,
        chat: bool,
        param: str,
    ) -> Response:
        try:
            check_context(len(tokens), worker.backend.info.n_ctx)
        except ContextLengthExceeded as exc:
            raise APIError(400, str(exc), param, "context_length_exceeded") from exc
        job = Job(prompt=tokens, params=params, loop=asyncio.get_running_loop())
        try:
            worker.submit(job)
        except QueueFull:
            raise APIError(
                429, f"server busy: the queue for '{worker.name}' is full; retry later", code="queue_full"
            ) from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        logprobs = params.logprobs is not None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            builder = ResponseBuilder(rid, created, worker.name, chat, include_usage, logprobs)
            return StreamingResponse(
                stream_events(request.receive, job, worker, builder),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        builder = ResponseBuilder(rid, created, worker.name, chat, logprobs=logprobs)
        return await collect_events(request.receive, job, worker, builder)

    dashboard.install(app, models.workers.values(), metrics)
    app.add_middleware(CountRequests, metrics=metrics, routes=frozenset(r.path for r in app.routes))
    return app
