"""The generation loop shared by every backend: token ids in, text deltas out.

Handles what is independent of how tokens are computed: incremental UTF-8 decoding, stop strings (text
that might begin a stop string is held back until it is decided), end-of-generation tokens, max_tokens and
the context limit, cancellation between tokens, and the timings the metrics need.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from edgeinfer.engine.base import Backend, SamplingParams


class ContextLengthExceeded(ValueError):
    def __init__(self, n_prompt: int, n_ctx: int):
        super().__init__(
            f"This model's maximum context length is {n_ctx} tokens, but the prompt has {n_prompt} tokens. "
            "Shorten the prompt (or messages), or start the server with a larger --ctx-size."
        )
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


@dataclass
class Delta:
    """New text since the previous delta; ``n_tokens`` is how many tokens it came from."""

    text: str
    n_tokens: int


@dataclass
class GenerationResult:
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    text: str = ""
    ttft: float | None = None  # seconds from start to first token
    token_times: list[float] = field(default_factory=list)  # seconds between consecutive tokens
    total: float = 0.0


class _StopMatcher:
    """Finds stop strings in a growing text, holding back a tail that could still become one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped)."""
        buf = self.pending + text
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        if hits:
            cut = min(i for i, _ in hits)
            self.pending = ""
            return buf[:cut], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self.pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def check_context(n_prompt: int, n_ctx: int) -> None:
    if n_prompt >= n_ctx:
        raise ContextLengthExceeded(n_prompt, n_ctx)


def stream(
    backend: Backend,
    prompt: Sequence[int],
    params: SamplingParams,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[Delta | GenerationResult]:
    """Yield ``Delta`` items as text becomes final, then exactly one ``GenerationResult``."""
    n_ctx = backend.info.n_ctx
    check_context(len(prompt), n_ctx)
    budget = n_ctx - len(prompt)
    if params.max_tokens is not None:
        budget = min(budget, params.max_tokens)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    matcher = _StopMatcher(params.stop)
    start = last = time.perf_counter()
    result = GenerationResult(finish_reason="length", prompt_tokens=len(prompt), completion_tokens=0)
    pieces: list[str] = []
    pending_tokens = 0
    stopped_by_string = False
    gen = backend.generate_tokens(prompt, params) if budget > 0 else iter(())
    try:
        for token in gen:
            now = time.perf_counter()
            if result.ttft is None:
                result.ttft = now - start
            else:
                result.token_times.append(now - last)
            last = now
            if backend.is_eog(token):
                result.finish_reason = "stop"
                break
            result.completion_tokens += 1
            pending_tokens += 1
            text, stopped = matcher.feed(decoder.decode(backend.token_bytes([token])))
            if text:
                pieces.append(text)
                yield Delta(text, pending_tokens)
                pending_tokens = 0
            if stopped:
                result.finish_reason = "stop"
                stopped_by_string = True
                break
            if cancelled():
                result.finish_reason = "cancelled"
                break
            if result.completion_tokens >= budget:
                break
        else:
            result.finish_reason = "stop" if budget > 0 else "length"
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    if not stopped_by_string:  # release text held back as a possible stop-string prefix
        tail = matcher.flush() + decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            yield Delta(tail, pending_tokens)
    result.text = "".join(pieces)
    result.total = time.perf_counter() - start
    yield result


def complete(backend: Backend, prompt: Sequence[int], params: SamplingParams) -> GenerationResult:
    """Run ``stream`` to the end and return its result (text included)."""
    *_, result = stream(backend, prompt, params)
    assert isinstance(result, GenerationResult)
    return result
