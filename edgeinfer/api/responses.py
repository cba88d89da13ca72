"""OpenAI response bodies: whole responses, SSE chunks, and the loops that turn worker events into them.

Both loops watch the connection while they wait: a client that goes away, streaming or not, queued or
running, has its job withdrawn from the queue or stopped between two tokens at once.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from edgeinfer.api.errors import APIError, error_body
from edgeinfer.api.worker import Job, ModelWorker
from edgeinfer.engine.generate import Delta, GenerationResult
from edgeinfer.engine.logprobs import TokenLogprobs

MIN_LOGPROB = -9999.0  # what OpenAI and vLLM report for a token of probability 0 (JSON has no -inf)


def _usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


def _logprob(x: float) -> float:
    return max(x, MIN_LOGPROB)


def token_text(raw: bytes) -> str:
    """A token's text as OpenAI spells it: the text, or ``bytes:\\xe4\\xbd`` when the token holds only part
    of a UTF-8 character."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class ResponseBuilder:
    """Builds response objects in the chat or the completion flavour."""

    def __init__(
        self,
        rid: str,
        created: int,
        model: str,
        chat: bool,
        include_usage: bool = False,
        logprobs: bool = False,
    ):
        self.rid, self.created, self.model, self.chat = rid, created, model, chat
        self.include_usage = include_usage  # streams only: every chunk carries usage (null until the last)
        self.logprobs = logprobs  # the request asked for logprobs
        # completions' text_offset: characters of completion text before each token, across chunks
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def logprobs_body(self, tokens: list[TokenLogprobs] | None) -> dict[str, Any] | None:
        """The ``logprobs`` of a choice (or chunk) for these tokens: chat's ``content`` list or the legacy
        completions' parallel lists; None when the request did not ask for logprobs."""
        if not self.logprobs:
            return None
        tokens = tokens or []
        if self.chat:
            content = [
                {
                    "token": token_text(t.bytes),
                    "logprob": _logprob(t.logprob),
                    "bytes": list(t.bytes),
                    "top_logprobs": [
                        {"token": token_text(a.bytes), "logprob": _logprob(a.logprob), "bytes": list(a.bytes)}
                        for a in t.top
                    ],
                }
                for t in tokens
            ]
            return {"content": content, "refusal": None}
        offsets = []
        for t in tokens:
            offsets.append(self._offset)
            self._offset += len(self._decoder.decode(t.bytes))
        top: list[dict[str, float]] = []
        for t in tokens:
            alternatives: dict[str, float] = {}
            for a in t.top:  # best first: a text two tokens share keeps the better logprob
                alternatives.setdefault(token_text(a.bytes), _logprob(a.logprob))
            alternatives.setdefault(token_text(t.bytes), _logprob(t.logprob))  # the sampled token, always
            top.append(alternatives)
        return {
            "tokens": [token_text(t.bytes) for t in tokens],
            "token_logprobs": [_logprob(t.logprob) for t in tokens],
            "top_logprobs": top,
            "text_offset": offsets,
        }

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def chunk(
        self,
        text: str | None,
        finish: str | None,
        role: bool = False,
        logprobs: list[TokenLogprobs] | None = None,
    ) -> dict[str, Any]:
        """A stream chunk; ``logprobs`` are those of the tokens ``text`` came from (content chunks only)."""
        lp = self.logprobs_body(logprobs) if text else None
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
            out = self._envelope("chat.completion.chunk", [choice])
        else:
            choice = {"index": 0, "text": text or "", "logprobs": lp, "finish_reason": finish}
            out = self._envelope("text_completion", [choice])
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, result: GenerationResult) -> dict[str, Any]:
        """The extra last chunk of ``stream_options.include_usage``: no choices, the request's usage."""
        out = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        out["usage"] = _usage(result)
        return out

    def final(self, result: GenerationResult, logprobs: list[TokenLogprobs] | None = None) -> dict[str, Any]:
        """The whole response; ``logprobs`` are those of every token of ``result.text``."""
        lp = self.logprobs_body(logprobs)
        if self.chat:
            message = {"role": "assistant", "content": result.text}
            choice = {"index": 0, "message": message, "logprobs": lp, "finish_reason": result.finish_reason}
            out = self._envelope("chat.completion", [choice])
        else:
            choice = {
                "index": 0,
                "text": result.text,
                "logprobs": lp,
                "finish_reason": result.finish_reason,
            }
            out = self._envelope("text_completion", [choice])
        out["usage"] = _usage(result)
        return out


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class _Gone:
    """Put in a job's event queue when its client disconnects."""


GONE = _Gone()


async def _watch(receive: Receive, job: Job, worker: ModelWorker) -> None:
    """Wait for the client to go away, then stop its job: out of the queue at once, or between two tokens."""
    while (await receive())["type"] != "http.disconnect":
        pass
    job.cancel.set()
    worker.withdraw(job)
    job.events.put_nowait(GONE)


async def stream_events(
    receive: Receive, job: Job, worker: ModelWorker, builder: ResponseBuilder
) -> AsyncIterator[str]:
    watcher = asyncio.create_task(_watch(receive, job, worker))
    try:
        if builder.chat:
            yield _sse(builder.chunk("", None, role=True))
        while True:
            item = await job.events.get()
            if item is GONE:
                return
            if isinstance(item, Delta):
                yield _sse(builder.chunk(item.text, None, logprobs=item.logprobs))
            elif isinstance(item, GenerationResult):
                yield _sse(builder.chunk(None if builder.chat else "", item.finish_reason))
                if builder.include_usage:  # usage once, in its own chunk, as OpenAI sends it
                    yield _sse(builder.usage_chunk(item))
                break
            else:  # an exception from the worker: the stream has started, so report it in-band
                yield _sse(error_body(500, f"generation failed: {item}", code="internal_error"))
                break
        yield _sse("[DONE]")
    finally:
        watcher.cancel()
        job.cancel.set()  # client gone or stream over: stop generating and free the slot
        worker.withdraw(job)


async def collect_events(
    receive: Receive, job: Job, worker: ModelWorker, builder: ResponseBuilder
) -> JSONResponse:
    watcher = asyncio.create_task(_watch(receive, job, worker))
    logprobs: list[TokenLogprobs] = []
    try:
        while True:
            item = await job.events.get()
            if item is GONE:  # nobody will read this answer
                return JSONResponse(error_body(499, "client closed the request"), status_code=499)
            if isinstance(item, Delta) and item.logprobs:
                logprobs.extend(item.logprobs)
            if isinstance(item, GenerationResult):
                return JSONResponse(builder.final(item, logprobs))
            if isinstance(item, Exception):
                raise APIError(500, f"generation failed: {item}", code="internal_error")
    finally:
        watcher.cancel()
        job.cancel.set()
        worker.withdraw(job)
