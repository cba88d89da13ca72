"""The edge server: runs the tail of a model's path from any cut point (FastAPI + uvicorn).

    POST /v1/split/tail?model=M&exit=E&cut=S[&criterion=C&thresholds=JSON]
         body: the state at the cut (``compress.encode_state``: one tensor, or every live tensor of a DAG
         cut inside a residual block when the models are served with their DAG chains)
         -> {"pred", "logits", "exit", "early", "edge_ms", "received_bytes"}
    POST /v1/split/probe    body: any bytes -> {"received_bytes"}   (link measurements)
    GET  /v1/split/models   exits and path lengths of the served models
    GET  /health

``delay_ms`` emulates the link's round-trip time in user space (netem is not available here): every request
is answered that much later. The tail runs one request at a time with ``threads`` torch threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import torch
from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from edgeinfer.models.dnn.zoo import BranchyModel
from edgeinfer.split.compress import WireError, decode_state
from edgeinfer.split.exits import Thresholds
from edgeinfer.split.runner import run_segment


def create_edge_app(models: dict[str, BranchyModel], threads: int = 2, delay_ms: float = 0.0) -> FastAPI:
    if not models:
        raise ValueError("the edge server needs at least one model")
    app = FastAPI(title="edgeinfer split edge")
    lock = threading.Lock()
    torch.set_num_threads(threads)
    with torch.no_grad():  # warm up: the first pass is slow (lazy init) and would blow a tight deadline
        for m in models.values():
            x = torch.zeros(1, *m.backbone.in_shape)
            for e in m.exits:
                m.path(e.name).run(x)

    def tail(model: BranchyModel, exit_name: str, cut: int, x, th: Thresholds | None) -> dict:
        with lock:
            t0 = time.perf_counter()
            n = len(model.path(exit_name))
            seg = run_segment(model, exit_name, x, cut, n, thresholds=th)
            logits = seg.out
            ms = 1000 * (time.perf_counter() - t0)
        return {
            "pred": int(logits.argmax(-1)[0]),
            "logits": [round(float(v), 5) for v in logits[0]],
            "exit": seg.early_exit or exit_name,
            "early": seg.early_exit is not None,
            "edge_ms": ms,
        }

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True, "models": list(models)}

    @app.get("/v1/split/models")
    async def list_models() -> dict:
        return {
            name: {
                e.name: {"at": e.at, "layers": len(m.path(e.name)), "accuracy": e.accuracy} for e in m.exits
            }
            for name, m in models.items()
        }

    @app.post("/v1/split/probe")
    async def probe(request: Request) -> dict:
        body = await request.body()
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return {"received_bytes": len(body)}

    @app.post("/v1/split/tail")
    async def run_tail(
        request: Request,
        model: str,
        exit: str,
        cut: int,
        criterion: str | None = None,
        thresholds: str | None = None,
    ) -> dict:
        body = await request.body()
        m = models.get(model)
        if m is None:
            raise HTTPException(404, f"model {model!r} is not served here; served: {', '.join(models)}")
        try:
            n = len(m.path(exit))
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from exc
        if not 0 <= cut <= n:
            raise HTTPException(422, f"cut {cut} outside 0..{n} for exit {exit}")
        try:
            x = decode_state(body)
            th = (
                Thresholds.from_dict({"criterion": criterion, "values": json.loads(thresholds)})
                if thresholds
                else None
            )
        except (WireError, ValueError) as exc:
            raise HTTPException(422, f"bad request: {exc}") from exc
        expect = m.path(exit).cut_shapes(cut)
        got = (x,) if isinstance(x, torch.Tensor) else x
        if len(got) != len(expect):
            raise HTTPException(
                422, f"cut {cut} of exit {exit} carries {len(expect)} tensor(s), the request {len(got)}"
            )
        for t, shape in zip(got, expect, strict=True):
            if tuple(t.shape[1:]) != tuple(shape) or t.shape[0] != got[0].shape[0]:
                shapes = ", ".join(f"N x {tuple(e)}" for e in expect)
                raise HTTPException(
                    422,
                    f"tensor shapes {[tuple(g.shape) for g in got]} do not fit cut {cut} (expects {shapes})",
                )
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        out = await run_in_threadpool(tail, m, exit, cut, x, th)
        out["received_bytes"] = len(body)
        return out

    return app


def serve(models: dict[str, BranchyModel], host: str, port: int, threads: int = 2, delay_ms: float = 0.0,
          log_level: str = "warning", cpu_quota: float = 0.0) -> None:  # fmt: skip
    """Run the server until stopped. ``cpu_quota`` > 0 pins its speed: the whole process runs in a cgroup CPU
    group with that fraction of one core at the highest weight (``testbed.cpuquota``), so other work on
    shared cores slows it no more than the quota does."""
    import uvicorn

    app = create_edge_app(models, threads, delay_ms)
    with contextlib.ExitStack() as stack:
        if cpu_quota > 0:
            from edgeinfer.testbed import cpuquota

            stack.enter_context(cpuquota.shared(cpu_quota).process())
        uvicorn.run(app, host=host, port=port, log_level=log_level)
