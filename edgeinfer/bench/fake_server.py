"""A deliberately slow OpenAI-style streaming server: the test fixture for `bench serve`.

Every request streams ``max_tokens`` words ("w0 ", "w1 ", ...) with ``ttft_delay`` before the first and
``token_delay`` between tokens, so the percentiles a client measures are known in advance. ``slots`` limits
how many requests generate at once (the rest wait, like a single-model server's queue); 0 = unlimited.

    python -m edgeinfer.bench.fake_server --port 8099 --token-delay 0.02 --ttft-delay 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

MODEL = "slow-test-model"


@dataclass(frozen=True)
class Delays:
    ttft: float = 0.1
    token: float = 0.02
    slots: int = 0
    default_tokens: int = 16


def _prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body["messages"])
    else:
        p = body.get("prompt", "")
        text = p if isinstance(p, str) else " ".join(map(str, p))
    return max(1, len(text.split()))


def create_fake_server_app(delays: Delays) -> Starlette:
    gate = asyncio.Semaphore(delays.slots) if delays.slots > 0 else None

    async def tokens(n: int) -> AsyncIterator[str]:
        async with AsyncExitStack() as stack:
            if gate is not None:
                await stack.enter_async_context(gate)
            await asyncio.sleep(delays.ttft)
            for i in range(n):
                if i:
                    await asyncio.sleep(delays.token)
                yield f"w{i} "

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def models(_: Request) -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]}
        )

    async def generate(request: Request) -> Any:
        chat = request.url.path.endswith("/chat/completions")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return JSONResponse({"error": {"message": "invalid JSON"}}, status_code=400)
        n = int(body.get("max_tokens") or delays.default_tokens)
        usage = {"prompt_tokens": _prompt_tokens(body), "completion_tokens": n}
        usage["total_tokens"] = usage["prompt_tokens"] + n
        rid, created = f"fake-{uuid.uuid4().hex[:12]}", int(time.time())
        obj = "chat.completion" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                choice = {
                    "index": 0,
                    "delta": {} if text is None else {"content": text},
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish}
            return {"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                    "model": MODEL, "choices": [choice]}  # fmt: skip

        if not body.get("stream"):
            text = "".join([t async for t in tokens(n)])
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": MODEL,
                                 "choices": [choice], "usage": usage})  # fmt: skip
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            async for t in tokens(n):
                yield f"data: {json.dumps(chunk(t, None))}\n\n"
            yield f"data: {json.dumps(chunk(None, 'length'))}\n\n"
            if include_usage:
                last = chunk(None, None)
                last["choices"], last["usage"] = [], usage
                yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", generate, methods=["POST"]),
            Route("/v1/completions", generate, methods=["POST"]),
        ],
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--ttft-delay", type=float, default=0.1, help="seconds before the first token")
    ap.add_argument("--token-delay", type=float, default=0.02, help="seconds between tokens")
    ap.add_argument("--slots", type=int, default=0, help="requests generating at once (0 = unlimited)")
    args = ap.parse_args(argv)
    app = create_fake_server_app(Delays(args.ttft_delay, args.token_delay, args.slots))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
