"""OpenAI response bodies: whole responses, SSE chunks, and the loops that turn worker events into them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from edgeinfer.api.errors import APIError, error_body
from edgeinfer.api.worker import Job
from edgeinfer.engine.generate import Delta, Result


def _usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


class Shape:
    """Builds response objects in the chat or the completion flavour."""

    def __init__(self, rid: str, created: int, model: str, chat: bool):
        self.rid, self.created, self.model, self.chat = rid, created, model, chat

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def chunk(self, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._envelope("text_completion", [choice])

    def final(self, result: Result) -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": result.text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}
            out = self._envelope("chat.completion", [choice])
        else:
            choice = {
                "index": 0,
                "text": result.text,
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
            out = self._envelope("text_completion", [choice])
        out["usage"] = _usage(result)
        return out


async def stream_events(job: Job, shape: Shape, include_usage: bool) -> AsyncIterator[str]:
    try:
        if shape.chat:
            yield _sse(shape.chunk("", None, role=True))
        while True:
            item = await job.events.get()
            if isinstance(item, Delta):
                yield _sse(shape.chunk(item.text, None))
            elif isinstance(item, Result):
                last = shape.chunk(None if shape.chat else "", item.finish_reason)
                last["usage"] = _usage(item)
                yield _sse(last)
                if include_usage:
                    usage_chunk = shape.chunk(None, None)
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = _usage(item)
                    yield _sse(usage_chunk)
                break
            else:  # an exception from the worker: the stream has started, so report it in-band
                yield _sse(error_body(500, f"generation failed: {item}", code="internal_error"))
                break
        yield _sse("[DONE]")
    finally:
        job.cancel.set()  # client gone or stream over: stop generating and free the slot


async def collect_events(request: Request, job: Job, shape: Shape) -> JSONResponse:
    try:
        while True:
            try:
                item = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancel.set()
                    return JSONResponse(error_body(499, "client closed the request"), status_code=499)
                continue
            if isinstance(item, Result):
                return JSONResponse(shape.final(item))
            if isinstance(item, Exception):
                raise APIError(500, f"generation failed: {item}", code="internal_error")
    finally:
        job.cancel.set()
