"""Deadline mode that holds in the tail: plan against the deadline shrunk by how much slower than planned the
recent requests ran at their 99th percentile.

The planner (Edgent's joint exit + split choice) compares a *predicted* latency with the deadline. The
prediction is a median model: per-layer profiles scaled by the measured compute ratio, the measured link.
Requests vary around it (a loaded CPU, the sleep that emulates a slow device waking late, HTTP and Python
overhead the profiles do not hold), so a plan predicted just under the deadline misses it about half of the
time. ``DeadlineGuard`` keeps the ratio measured ÷ predicted end-to-end latency of the last requests and
gives the planner ``deadline / q99(ratio)``: an option is taken only if its predicted latency, stretched as
the slowest 1 % of recent requests were, still meets the deadline. ``DeadlineClient`` is the device client
with the guard in its planning loop; answers report ``deadline_met`` against the real deadline.

A stretch shared by every option cannot see that one option has a longer tail than the others (a split whose
upload queues behind the link's bucket, an edge tail on a busy core). ``TailTracker`` therefore also keeps
each (exit, split)'s own observed latencies: once an option has ``min_samples`` recent answers and their
99th percentile is above the deadline, the planner may not take it (``DeviceClient.excluded``); its
samples age out after ``window_s``, so it is tried again later.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace

from edgeinfer.split.device import DeviceClient, InferenceResult


class DeadlineGuard:
    """Tail ratio of measured to predicted latency over a sliding window, and the planning budget from it.

    Until ``min_samples`` ratios are in, the largest one seen (at least 1.0) stands for the quantile, so the
    first requests plan conservatively rather than optimistically."""

    def __init__(self, quantile: float = 0.99, window: int = 200, min_samples: int = 20):
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.quantile = quantile
        self.min_samples = min_samples
        self.ratios: deque[float] = deque(maxlen=window)

    def observe(self, measured_ms: float, predicted_ms: float) -> None:
        if predicted_ms > 0 and measured_ms > 0 and math.isfinite(measured_ms / predicted_ms):
            self.ratios.append(measured_ms / predicted_ms)

    @property
    def stretch(self) -> float:
        """How much slower than predicted the slow tail of recent requests ran (1.0 with no data)."""
        if not self.ratios:
            return 1.0
        s = sorted(self.ratios)
        if len(s) < self.min_samples:
            return max(1.0, s[-1])
        return quantile(s, self.quantile)

    def budget(self, deadline_ms: float) -> float:
        """The latency the planner may predict for an option that should meet ``deadline_ms``."""
        return deadline_ms / self.stretch


def quantile(xs, q: float) -> float:
    """The ``q`` quantile of ``xs`` by nearest rank (at or above it lie the slowest ``1 - q``)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class TailTracker:
    """Observed end-to-end latency per (exit, split) over the last ``window_s`` seconds; ``over(deadline)``
    names the options whose ``quantile`` of at least ``min_samples`` recent answers exceeds it."""

    def __init__(self, quantile: float = 0.99, window_s: float = 30.0, min_samples: int = 20):
        self.quantile, self.window_s, self.min_samples = quantile, window_s, min_samples
        self.seen: dict[tuple[str, int], deque[tuple[float, float]]] = {}

    def observe(self, option: tuple[str, int], latency_ms: float, now: float | None = None) -> None:
        self.seen.setdefault(option, deque(maxlen=500)).append(
            (time.monotonic() if now is None else now, latency_ms)
        )

    def tail_ms(self, option: tuple[str, int], now: float | None = None) -> float | None:
        """The option's observed quantile, None with fewer than ``min_samples`` recent answers."""
        now = time.monotonic() if now is None else now
        q = self.seen.get(option)
        if q is None:
            return None
        while q and now - q[0][0] > self.window_s:
            q.popleft()
        return quantile([ms for _, ms in q], self.quantile) if len(q) >= self.min_samples else None

    def over(self, deadline_ms: float, now: float | None = None) -> frozenset[tuple[str, int]]:
        return frozenset(
            o for o in list(self.seen) if (t := self.tail_ms(o, now)) is not None and t > deadline_ms
        )


class DeadlineClient(DeviceClient):
    """``DeviceClient`` in deadline mode with a ``DeadlineGuard``: before every plan the deadline it plans
    against is the guard's budget (re-planned when it moves by more than ``replan_at``); after every answer
    the guard learns the measured ÷ predicted ratio. ``deadline_met``, the edge's timeout and the local exit
    of a fallback use the real deadline."""

    def __init__(
        self,
        *args,
        guard: DeadlineGuard | None = None,
        tails: TailTracker | None = None,
        replan_at: float = 0.05,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if self.cfg.deadline_ms is None:
            raise ValueError("DeadlineClient needs a deadline (ClientConfig.deadline_ms)")
        self.deadline_ms = self.cfg.deadline_ms
        self.guard = guard or DeadlineGuard()
        self.tails = tails or TailTracker(self.guard.quantile)
        self.replan_at = replan_at
        self._excluded: frozenset[tuple[str, int]] = frozenset()

    def excluded(self) -> frozenset[tuple[str, int]]:
        return self._excluded

    def current_plan(self):
        budget = self.guard.budget(self.deadline_ms)
        if abs(budget / self.cfg.deadline_ms - 1) > self.replan_at:
            self.cfg = replace(self.cfg, deadline_ms=budget)
            self.plan_link = None  # plan again at once (a changed plan still counts as a re-plan)
        over = self.tails.over(self.deadline_ms)
        if over != self._excluded:
            self._excluded = over
            self.plan_link = None
        return super().current_plan()

    @contextlib.contextmanager
    def _real_deadline(self) -> Iterator[None]:
        """The real deadline, not the planning budget, while the edge's timeout and a fallback's local exit
        are chosen: the time left is what it is; only the *plan* keeps the tail margin."""
        planned = self.cfg
        self.cfg = replace(self.cfg, deadline_ms=self.deadline_ms)
        try:
            yield
        finally:
            self.cfg = planned

    def _edge_timeout(self, *args, **kwargs):
        with self._real_deadline():
            return super()._edge_timeout(*args, **kwargs)

    def _fallback(self, *args, **kwargs):
        with self._real_deadline():
            return super()._fallback(*args, **kwargs)

    def infer(self, x) -> InferenceResult:
        r = super().infer(x)
        if r.planned is not None and not r.early and not r.fallback:
            self.guard.observe(r.latency_ms, r.planned.total_ms)
            self.tails.observe((r.planned.exit, r.planned.split), r.latency_ms)
        r.deadline_met = r.latency_ms <= self.deadline_ms
        return r
