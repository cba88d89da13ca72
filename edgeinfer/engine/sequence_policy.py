"""Draft home of the per-sequence policy; moves into engine.generate once that module is free to edit."""

from __future__ import annotations

import codecs
import time
from typing import Protocol

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import Delta, GenerationResult, _StopMatcher, check_context


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
        self.stopped_by_string = False
        self.done = budget <= 0

    def feed(self, token: int) -> Delta | None:
        assert not self.done, "feed after the sequence finished"
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
        text, stopped = self.matcher.feed(self.decoder.decode(self.vocab.token_bytes([token])))
        delta = None
        if text:
            self.pieces.append(text)
            delta = Delta(text, self.pending_tokens)
            self.pending_tokens = 0
        if stopped:
            r.finish_reason = "stop"
            self.stopped_by_string = True
            self.done = True
        elif r.completion_tokens >= self.budget:
            r.finish_reason = "length"
            self.done = True
        return delta

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
                out.append(Delta(tail, self.pending_tokens))
        self.result.text = "".join(self.pieces)
        self.result.total = time.perf_counter() - self.start
        out.append(self.result)
        return out
