"""Bandwidth and RTT of the device->edge link, estimated from real transfers.

Every transfer is a sample ``(bytes, seconds)`` of network time (wall time minus the edge's compute time).
Small transfers (<= ``small_bytes``) measure the round trip; larger ones the bandwidth, after subtracting the
RTT estimate (a transfer that is nearly all RTT gives a lower bound). Both estimates are medians over a
short window, and a probe that disagrees with the whole window restarts it, so a changed link shows at once.
Between probes, real uploads detect a change point as Edgent does: two bandwidth samples in a row more than
2x off the window's median (the same way) restart the window from them, and two uploads in a row too small
to be samples but more than 2x slower than the estimate predicts (``slow_upload``) restart it and ask for a
probe.
Transport-free: the caller does the sending (``probe`` takes a ``send(nbytes) -> seconds`` function).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

from edgeinfer.split.planner import LinkEstimate


class LinkMonitor:
    def __init__(
        self,
        window: int = 5,
        small_bytes: int = 2048,
        probe_seconds: float = 0.03,
        min_probe: int = 16 * 1024,
        max_probe: int = 2 * 1024 * 1024,
    ):
        self.rtts: deque[float] = deque(maxlen=window)
        self.bws: deque[float] = deque(maxlen=window)
        self.small_bytes = small_bytes
        self.probe_seconds = probe_seconds
        self.min_probe, self.max_probe = min_probe, max_probe
        self.samples = 0
        self.last_probe = 0.0
        self._fresh: deque[float] = deque(maxlen=2)  # the last bandwidth samples of real transfers
        self._slow: list[tuple[int, float]] = []  # consecutive uploads slower than predicted

    def observe(self, nbytes: int, seconds: float) -> None:
        """One real transfer of ``nbytes`` (both directions together) that took ``seconds`` on the network."""
        if seconds <= 0 or nbytes < 0:
            return
        self.samples += 1
        if nbytes <= self.small_bytes:
            self.rtts.append(seconds)
            return
        rtt = self.rtt_s or 0.0
        # a transfer that is nearly all RTT only bounds the bandwidth from below: record that bound, under
        # which moving these bytes costs at most a tenth of the time (and the next probe will be larger)
        net = max(seconds - rtt, 0.1 * seconds)
        bw = 8.0 * nbytes / net
        self._fresh.append(bw)
        self.bws.append(bw)
        if len(self._fresh) == 2 and len(self.bws) > 2:  # the fresh samples are the window's last two
            before = statistics.median(list(self.bws)[:-2])
            if all(b < before / 2 for b in self._fresh) or all(b > 2 * before for b in self._fresh):
                self.bws.clear()  # a change point: the link is no longer what the older samples measured
                self.bws.extend(self._fresh)

    def slow_upload(self, nbytes: int, seconds: float, factor: float = 2.0, slack_s: float = 0.003) -> bool:
        """An upload too small to be a bandwidth sample that took ``seconds``: two in a row slower than
        ``factor`` x the estimate's prediction (+ ``slack_s`` of jitter) mean the link slowed down. The
        bandwidth window then restarts from them (so the next probe is sized for the slow link) and True asks
        the caller to probe before its next request."""
        est = self.estimate()
        if est is None or seconds <= factor * est.transfer_s(nbytes) + slack_s:
            self._slow.clear()
            return False
        self._slow.append((nbytes, seconds))
        if len(self._slow) < 2:
            return False
        self.bws.clear()
        self._fresh.clear()
        for n, t in self._slow:
            self.observe(n, t)
        self._slow.clear()
        return True

    @property
    def rtt_s(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None

    @property
    def bandwidth_bps(self) -> float | None:
        return statistics.median(self.bws) if self.bws else None

    def estimate(self) -> LinkEstimate | None:
        if self.rtt_s is None or self.bandwidth_bps is None:
            return None
        return LinkEstimate(self.bandwidth_bps, self.rtt_s)

    def probe_size(self, bandwidth_bps: float | None = None) -> int:
        """About ``probe_seconds`` of traffic at ``bandwidth_bps`` (default: the current estimate)."""
        bw = bandwidth_bps or self.bandwidth_bps or 8.0 * self.min_probe / self.probe_seconds
        return int(min(self.max_probe, max(self.min_probe, bw * self.probe_seconds / 8)))

    def probe(self, send: Callable[[int], float], rounds: int = 2) -> LinkEstimate | None:
        """Measure with ``rounds`` small and large transfers; ``send(n)`` moves n bytes, returns seconds.

        The first large transfer is ``min_probe`` bytes (safe however much slower the link became since the
        last estimate: sizing it from a stale fast estimate could take seconds); each next one is sized
        from the previous one's result. When every sample of a probe disagrees with the estimate by more
        than 2x in the same direction, the link has changed: older samples are dropped so the estimate jumps
        at once.
        """
        rtts = [send(1) for _ in range(rounds)]
        _restart(self.rtts, rtts)
        for t in rtts:
            self.observe(1, t)
        old_bw = self.bandwidth_bps
        sizes, bws = [], []
        n = self.min_probe
        for _ in range(rounds):
            t = send(n)
            sizes.append((n, t))
            net = t - (self.rtt_s or 0.0)
            bws.append(8.0 * n / net if net > 0 else float("inf"))
            n = self.max_probe if bws[-1] == float("inf") else self.probe_size(bws[-1])
        if old_bw is not None:
            _restart(self.bws, bws, old_bw)
        self._fresh.clear()  # the probe's samples judge the window themselves
        for n, t in sizes:
            self.observe(n, t)
        self.last_probe = time.monotonic()
        return self.estimate()

    def due(self, every_s: float) -> bool:
        return time.monotonic() - self.last_probe >= every_s


def _restart(
    window: deque[float], fresh: list[float], current: float | None = None, factor: float = 2.0
) -> None:
    if not window or not fresh:
        return
    cur = current if current is not None else statistics.median(window)
    if all(v > factor * cur for v in fresh) or all(v < cur / factor for v in fresh):
        window.clear()


def changed(
    old: LinkEstimate | None, new: LinkEstimate | None, factor: float = 1.25, rtt_floor_s: float = 0.002
) -> bool:
    """Has the link changed enough to re-plan?"""
    if old is None or new is None:
        return old is not new
    ratio = new.bandwidth_bps / old.bandwidth_bps
    if ratio > factor or ratio < 1 / factor:
        return True
    return abs(new.rtt_s - old.rtt_s) > max(rtt_floor_s, (factor - 1) * old.rtt_s)
