"""One model, one worker thread, one bounded queue.

A batch backend (llama.cpp with ``--parallel N`` slots) generates for up to N jobs at once: between two
decode steps the thread admits waiting jobs into free slots (``engine.scheduler``, continuous batching).
Other backends run one sequence at a time per thread: ``concurrency`` threads (the cluster gateway's
``--parallel``: sequences in flight at different stages of the pipeline), else one. Jobs wait in a FIFO of
bounded depth and are refused with 429 when it is full. Events flow back to the asyncio side through the
loop's thread-safe callback. A cancelled request (client gone) leaves the queue at once if still waiting
(``withdraw``), or stops between two tokens if running, so its slot is freed at once either way.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeinfer.api.metrics import Metrics
from edgeinfer.engine.base import Backend, SamplingParams
from edgeinfer.engine.batch import BatchBackend
from edgeinfer.engine.generate import Delta, GenerationResult, stream
from edgeinfer.engine.scheduler import BatchScheduler


class QueueFull(Exception):
    pass


@dataclass
class Job:
    prompt: Sequence[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)
    # generated tokens are counted as they stream (as vLLM does), so their rate is live: the worker sets
    # ``on_tokens`` when the job starts; ``streamed`` is what was counted before the final result
    on_tokens: Callable[[int], None] = lambda n: None
    streamed: int = 0

    def emit(self, item: Any) -> None:
        if isinstance(item, Delta):
            self.streamed += item.n_tokens
            self.on_tokens(item.n_tokens)
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class ModelWorker:
    """Loads a backend in the background, then serves jobs from its queue until closed."""

    def __init__(self, name: str, load: Callable[[], Backend], metrics: Metrics, max_queue: int = 16):
        self.name = name
        self._load = load
        self.metrics = metrics
        self.backend: Backend | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"model-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def state(self) -> str:
        if self.error:
            return "failed"
        return "ready" if self.ready.is_set() else "loading"

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull
            self._waiting.append(job)
            self.metrics.waiting.labels(self.name).inc()
            self._cond.notify()

    def withdraw(self, job: Job) -> bool:
        """Take a job that has not started out of the queue; False if it already started (or ended)."""
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
            self.metrics.waiting.labels(self.name).dec()
            return True

    def _next(self, block: bool = True) -> Job | None:
        """The oldest waiting job; None when closed, or at once when ``block`` is False and none waits."""
        with self._cond:
            while block and not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed or not self._waiting:
                return None
            job = self._waiting.popleft()
            self.metrics.waiting.labels(self.name).dec()
            return job

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            abandoned = list(self._waiting)
            self._waiting.clear()
            self.metrics.waiting.labels(self.name).dec(len(abandoned))
            self._cond.notify_all()
        for job in abandoned:
            job.emit(RuntimeError("the server is shutting down"))
        self._thread.join(timeout)
        if self.backend is not None:
            self.backend.close()

    def _run(self) -> None:
        try:
            self.backend = self._load()
        except Exception as exc:  # reported by /health and on every request
            self.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            return
        self.ready.set()
        if isinstance(self.backend, BatchBackend):
            self._run_batched(self.backend)
            return
        n = max(1, int(getattr(self.backend, "concurrency", 1)))
        extra = [
            threading.Thread(target=self._run_jobs, name=f"model-{self.name}-{i}", daemon=True)
            for i in range(1, n)
        ]
        for t in extra:
            t.start()
        self._run_jobs()
        for t in extra:
            t.join()

    def _run_jobs(self) -> None:
        """One job at a time from the queue until closed (``concurrency`` such loops run side by side)."""
        while (job := self._next()) is not None:
            if job.cancel.is_set():
                continue
            self._started(job)
            try:
                self._serve(job)
            except Exception as exc:
                traceback.print_exc()
                job.emit(exc)
            finally:
                self.metrics.running.labels(self.name).dec()

    def _started(self, job: Job) -> None:
        self.metrics.queue_time.labels(self.name).observe(time.perf_counter() - job.arrived)
        self.metrics.running.labels(self.name).inc()
        job.on_tokens = self.metrics.generation_tokens.labels(self.name).inc

    def _run_batched(self, backend: BatchBackend) -> None:
        """Continuous batching: admit waiting jobs into free slots between decode steps."""
        sched = BatchScheduler(
            backend, on_finish=self._finished, on_step=self.metrics.batch_size.labels(self.name).observe
        )
        while not self._closed:
            while sched.n_free and (job := self._next(block=sched.n_running == 0)) is not None:
                if job.cancel.is_set():
                    continue
                self._started(job)
                sched.admit(job)
            sched.step()
        sched.cancel_all()

    def _finished(self, job: Job, outcome: GenerationResult | Exception) -> None:
        self.metrics.running.labels(self.name).dec()
        if isinstance(outcome, GenerationResult):
            self._observe(job, outcome)

    def _serve(self, job: Job) -> None:
        assert self.backend is not None
        for item in stream(self.backend, job.prompt, job.params, cancelled=job.cancel.is_set):
            job.emit(item)
            if isinstance(item, GenerationResult):
                self._observe(job, item)

    def _observe(self, job: Job, result: GenerationResult) -> None:
        m, name = self.metrics, self.name
        m.prompt_tokens.labels(name).inc(result.prompt_tokens)
        m.generation_tokens.labels(name).inc(max(0, result.completion_tokens - job.streamed))
        if result.ttft is not None:
            m.ttft.labels(name).observe(result.ttft)
        for dt in result.token_times:
            m.tpot.labels(name).observe(dt)
        m.request_success.labels(name, result.finish_reason).inc()
        m.e2e.labels(name).observe(time.perf_counter() - job.arrived)
