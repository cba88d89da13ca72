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
from typing import Protocol

from edgeinfer.engine.base import Backend, SamplingParams
from edgeinfer.engine.logprobs import TokenLogprobs, TopLogprob


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
    """New text since the previous delta; ``n_tokens`` is how many tokens it came from, ``logprobs`` (when
    asked for) those tokens' log probabilities with their bytes, in order."""

    text: str
    n_tokens: int
    logprobs: list[TokenLogprobs] | None = None


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


class _Detokenizer(Protocol):
    def token_bytes(self, ids: list[int]) -> bytes: ...

    def is_eog(self, token_id: int) -> bool: ...


class SequencePolicy:
    """One request's policy over its sampled tokens, fed one token at a time.

    ``feed`` returns the text that became final (if any) and sets ``done`` on an end-of-generation token, a
    stop string, max_tokens or the context limit; ``finish`` releases held-back text and the
    ``GenerationResult``."""

    def __init__(self, vocab: _Detokenizer, n_prompt: int, n_ctx: int, params: SamplingParams):
        check_context(n_prompt, n_ctx)
        budget = n_ctx - n_prompt
        if params.max_tokens is not None:
            budget = min(budget, params.max_tokens)
        self.vocab = vocab
        self.budget = budget
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.matcher = _StopMatcher(params.stop)
        self.start = self.last = time.perf_counter()
        self.result = GenerationResult(finish_reason="length", prompt_tokens=n_prompt, completion_tokens=0)
        self.pieces: list[str] = []
        self.pending_tokens = 0
        self.pending_logprobs: list[TokenLogprobs] | None = [] if params.logprobs is not None else None
        self.stopped_by_string = False
        self.done = budget <= 0

    def feed(self, token: int | TokenLogprobs) -> Delta | None:
        assert not self.done, "feed after the sequence finished"
        lp = None
        if isinstance(token, TokenLogprobs):
            lp, token = token, token.token_id
        r = self.result
        now = time.perf_counter()
        if r.ttft is None:
            r.ttft = now - self.start
        else:
            r.token_times.append(now - self.last)
        self.last = now
        if self.vocab.is_eog(token):
            r.finish_reason = "stop"
            self.done = True
            return None
        r.completion_tokens += 1
        self.pending_tokens += 1
        raw = self.vocab.token_bytes([token])
        if self.pending_logprobs is not None and lp is not None:
            self.pending_logprobs.append(self._with_bytes(lp, raw))
        text, stopped = self.matcher.feed(self.decoder.decode(raw))
        delta = None
        if text:
            self.pieces.append(text)
            delta = self._delta(text)
        if stopped:
            r.finish_reason = "stop"
            self.stopped_by_string = True
            self.done = True
        elif r.completion_tokens >= self.budget:
            r.finish_reason = "length"
            self.done = True
        return delta

    def _delta(self, text: str) -> Delta:
        delta = Delta(text, self.pending_tokens, self.pending_logprobs)
        self.pending_tokens = 0
        if self.pending_logprobs is not None:
            self.pending_logprobs = []
        return delta

    def _with_bytes(self, lp: TokenLogprobs, raw: bytes) -> TokenLogprobs:
        """The token's and its alternatives' bytes, so that the API never re-tokenizes."""
        tb = self.vocab.token_bytes
        top = tuple(TopLogprob(t.token_id, t.logprob, tb([t.token_id])) for t in lp.top)
        return TokenLogprobs(lp.token_id, lp.logprob, top, raw)

    def cancel(self) -> None:
        self.result.finish_reason = "cancelled"
        self.done = True

    def exhausted(self) -> None:
        """The token source ended by itself."""
        self.result.finish_reason = "stop" if self.budget > 0 else "length"
        self.done = True

    def finish(self) -> list[Delta | GenerationResult]:
        out: list[Delta | GenerationResult] = []
        if not self.stopped_by_string:  # release text held back as a possible stop-string prefix
            tail = self.matcher.flush() + self.decoder.decode(b"", final=True)
            if tail:
                self.pieces.append(tail)
                out.append(self._delta(tail))
        self.result.text = "".join(self.pieces)
        self.result.total = time.perf_counter() - self.start
        out.append(self.result)
        return out


def stream(
    backend: Backend,
    prompt: Sequence[int],
    params: SamplingParams,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[Delta | GenerationResult]:
    """Yield ``Delta`` items as text becomes final, then exactly one ``GenerationResult``."""
    seq = SequencePolicy(backend, len(prompt), backend.info.n_ctx, params)
    gen = backend.generate_tokens(prompt, params) if not seq.done else iter(())
    try:
        for token in gen:
            delta = seq.feed(token)
            if delta is not None:
                yield delta
            if seq.done:
                break
            if cancelled():
                seq.cancel()
                break
        else:
            seq.exhausted()
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    yield from seq.finish()


def complete(backend: Backend, prompt: Sequence[int], params: SamplingParams) -> GenerationResult:
    """Run ``stream`` to the end and return its result (text included)."""
    *_, result = stream(backend, prompt, params)
    assert isinstance(result, GenerationResult)
    return result
