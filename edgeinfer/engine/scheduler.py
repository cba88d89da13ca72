"""Continuous batching: requests join a batch backend's running batch between decode steps.

The scheduler is driven by one thread per model (the API's model worker): it admits requests into free slots
first come, first served, runs one ``step`` of the backend over every active slot, feeds each sampled token to
that request's ``SequencePolicy`` (stop strings, max_tokens, context limit, UTF-8, timing) and hands text
deltas and the final result to the request. A cancelled request leaves its slot before the next step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.batch import BatchBackend
from edgeinfer.engine.generate import Delta, GenerationResult, SequencePolicy


class Request(Protocol):
    """What the scheduler needs from a queued request."""

    prompt: Sequence[int]
    params: SamplingParams
    cancel: threading.Event

    def emit(self, item: Delta | GenerationResult | Exception) -> None: ...


@dataclass
class _Running:
    request: Request
    policy: SequencePolicy
    slot: int


class BatchScheduler:
    """Admission, stepping and per-sequence policy over one ``BatchBackend``; not thread-safe (one driver)."""

    def __init__(
        self,
        backend: BatchBackend,
        on_finish: Callable[[Request, GenerationResult | Exception], None] = lambda r, x: None,
        on_step: Callable[[int], None] = lambda n: None,
    ):
        self.backend = backend
        self._on_finish = on_finish
        self._on_step = on_step
        self._running: dict[int, _Running] = {}

    @property
    def n_free(self) -> int:
        return self.backend.n_slots - len(self._running)

    @property
    def n_running(self) -> int:
        return len(self._running)

    def admit(self, request: Request) -> None:
        """Start a request in a free slot (the caller checks ``n_free``); the steps prefill its prompt."""
        try:
            policy = SequencePolicy(
                self.backend, len(request.prompt), self.backend.info.n_ctx, request.params
            )
            if policy.done:  # nothing may be generated (no room in the context)
                self._finish(request, policy)
                return
            slot = self.backend.add(request.prompt, request.params)
        except Exception as exc:
            request.emit(exc)
            self._on_finish(request, exc)
            return
        self._running[slot] = _Running(request, policy, slot)

    def step(self) -> None:
        """Drop cancelled requests, then run one decode step over every active slot."""
        for run in list(self._running.values()):
            if run.request.cancel.is_set():
                run.policy.cancel()
                self._end(run)
        if not self._running:
            return
        n = len(self._running)
        try:
            sampled = self.backend.step()
        except Exception as exc:
            for run in list(self._running.values()):
                self.backend.remove(run.slot)
                del self._running[run.slot]
                run.request.emit(exc)
                self._on_finish(run.request, exc)
            return
        self._on_step(n)
        for slot, token in sampled.items():
            run = self._running[slot]
            delta = run.policy.feed(token)
            if delta is not None:
                run.request.emit(delta)
            if run.policy.done:
                self._end(run)

    def cancel_all(self) -> None:
        for run in list(self._running.values()):
            run.policy.cancel()
            self._end(run)

    def _end(self, run: _Running) -> None:
        self.backend.remove(run.slot)
        del self._running[run.slot]
        self._finish(run.request, run.policy)

    def _finish(self, request: Request, policy: SequencePolicy) -> None:
        result = None
        for item in policy.finish():
            request.emit(item)
            if isinstance(item, GenerationResult):
                result = item
        assert result is not None
        self._on_finish(request, result)
