"""Bandwidth and RTT of the device->edge link, estimated from real transfers.

Every transfer is a sample ``(bytes, seconds)`` of network time (wall time minus the edge's compute time).
Small transfers (<= ``small_bytes``) measure the round trip; larger ones the bandwidth, after subtracting the
RTT estimate. Both estimates are medians over a short window, so a changed link shows within a few samples.
Transport-free: the caller does the sending (``probe`` takes a ``send(nbytes) -> seconds`` function).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

from edgeinfer.planner.split import Link


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

    def observe(self, nbytes: int, seconds: float) -> None:
        """One real transfer of ``nbytes`` (both directions together) that took ``seconds`` on the network."""
        if seconds <= 0 or nbytes < 0:
            return
        self.samples += 1
        if nbytes <= self.small_bytes:
            self.rtts.append(seconds)
            return
        rtt = self.rtt_s or 0.0
        net = seconds - rtt
        if net > 0.1 * seconds:  # otherwise the transfer is all RTT and says little about bandwidth
            self.bws.append(8.0 * nbytes / net)

    @property
    def rtt_s(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None

    @property
    def bandwidth_bps(self) -> float | None:
        return statistics.median(self.bws) if self.bws else None

    def estimate(self) -> Link | None:
        if self.rtt_s is None or self.bandwidth_bps is None:
            return None
        return Link(self.bandwidth_bps, self.rtt_s)

    def probe_size(self) -> int:
        """About ``probe_seconds`` of traffic at the current bandwidth estimate."""
        bw = self.bandwidth_bps or 8.0 * self.min_probe / self.probe_seconds
        return int(min(self.max_probe, max(self.min_probe, bw * self.probe_seconds / 8)))

    def probe(self, send: Callable[[int], float], rounds: int = 2) -> Link | None:
        """Measure with ``rounds`` small and large transfers; ``send(n)`` moves n bytes, returns seconds."""
        for _ in range(rounds):
            self.observe(1, send(1))
        for _ in range(rounds):
            n = self.probe_size()
            self.observe(n, send(n))
        self.last_probe = time.monotonic()
        return self.estimate()

    def due(self, every_s: float) -> bool:
        return time.monotonic() - self.last_probe >= every_s


def changed(old: Link | None, new: Link | None, factor: float = 1.25, rtt_floor_s: float = 0.002) -> bool:
    """Has the link changed enough to re-plan?"""
    if old is None or new is None:
        return old is not new
    ratio = new.bandwidth_bps / old.bandwidth_bps
    if ratio > factor or ratio < 1 / factor:
        return True
    return abs(new.rtt_s - old.rtt_s) > max(rtt_floor_s, (factor - 1) * old.rtt_s)
