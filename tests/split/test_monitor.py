"""Link estimation from transfer samples (pure logic: the real-network behaviour is in test_testbed)."""

from __future__ import annotations

import pytest

from edgeinfer.split.monitor import LinkMonitor, changed
from edgeinfer.split.planner import LinkEstimate


def _send_over(link: LinkEstimate):
    return lambda n: link.transfer_s(n)


def test_probe_recovers_rtt_and_bandwidth():
    mon = LinkMonitor()
    est = mon.probe(_send_over(LinkEstimate(20e6, 0.004)), rounds=3)
    assert est.rtt_s == pytest.approx(0.004, rel=0.01)
    assert est.bandwidth_bps == pytest.approx(20e6, rel=0.02)


def test_estimate_follows_a_changed_link_within_a_window():
    mon = LinkMonitor(window=5)
    mon.probe(_send_over(LinkEstimate(100e6, 0.001)))
    before = mon.estimate()
    slow = LinkEstimate(2e6, 0.001)
    for _ in range(3):
        mon.probe(_send_over(slow), rounds=1)
    after = mon.estimate()
    assert after.bandwidth_bps == pytest.approx(2e6, rel=0.05)
    assert changed(before, after) and not changed(after, LinkEstimate(2.1e6, 0.001))
    assert mon.probe_size() < 16 * 1024 * 2  # probes shrink on a slow link


def test_rtt_dominated_samples_only_bound_the_bandwidth():
    mon = LinkMonitor()
    mon.observe(1, 0.010)
    assert mon.estimate() is None  # no bandwidth sample yet
    mon.observe(4096, 0.0101)  # 4 KB in 0.1 ms over a 10 ms RTT: only a lower bound
    est = mon.estimate()
    assert est.transfer_s(4096) - est.rtt_s <= 0.1 * 0.0101 + 1e-9
    size = mon.probe_size()
    assert size > 4096  # so the next probe is big enough to measure


def test_a_probe_that_disagrees_with_the_window_restarts_it():
    mon = LinkMonitor(window=9)
    for _ in range(4):
        mon.probe(_send_over(LinkEstimate(1e6, 0.002)))
    mon.probe(_send_over(LinkEstimate(1e9, 0.002)), rounds=2)  # one probe on a 1000x faster link
    assert mon.bandwidth_bps > 1e8


def test_probe_starts_small_on_a_link_that_became_slow():
    mon = LinkMonitor()
    mon.probe(_send_over(LinkEstimate(1e9, 0.001)))
    assert mon.probe_size() == mon.max_probe  # a fast link: big probes
    sent = []

    def slow(n: int) -> float:
        sent.append(n)
        return LinkEstimate(1e6, 0.001).transfer_s(n)

    mon.probe(slow)
    assert max(sent) <= mon.min_probe  # not 2 MB at 1 Mbit/s (16 s)
    assert mon.bandwidth_bps == pytest.approx(1e6, rel=0.05)


def test_compute_scale_needs_more_than_one_sample():
    from edgeinfer.split.device import ScaleTracker

    sc = ScaleTracker()
    sc.observe(10.0, 1.0)
    assert sc.value == 1.0  # one slow moment on the shared CPUs does not move the plan
    sc.observe(10.0, 1.0)
    assert sc.value == 10.0
    sc.observe(1.0, 0.1)  # below min_ms: not a sample
    assert len(sc.ratios) == 2


def test_two_real_transfers_far_off_the_window_restart_it_one_does_not():
    """Edgent-style change point between probes: one slow sample is noise, two in a row are a new link."""
    mon = LinkMonitor(window=5)
    mon.probe(_send_over(LinkEstimate(20e6, 0.002)), rounds=2)
    for _ in range(3):
        mon.observe(64_000, LinkEstimate(20e6, 0.002).transfer_s(64_000))
    slow = LinkEstimate(5e6, 0.002)
    mon.observe(64_000, slow.transfer_s(64_000))
    assert mon.bandwidth_bps == pytest.approx(20e6, rel=0.05)  # one sample: the median holds
    mon.observe(64_000, slow.transfer_s(64_000))
    assert mon.bandwidth_bps == pytest.approx(5e6, rel=0.05)  # two in a row: restarted from them
    assert len(mon.bws) == 2


def test_slow_small_uploads_ask_for_a_probe_after_two_in_a_row():
    mon = LinkMonitor()
    fast = LinkEstimate(20e6, 0.003)
    mon.probe(_send_over(fast), rounds=2)
    n = 4_000  # below an RTT of traffic at 20 Mbit/s: not a bandwidth sample
    ok = fast.transfer_s(n)
    assert not mon.slow_upload(n, ok) and not mon.slow_upload(n, 1.5 * ok)
    slow_t = 3 * ok + 0.004
    assert not mon.slow_upload(n, slow_t)  # one: jitter
    assert not mon.slow_upload(n, ok)  # the run is broken
    assert not mon.slow_upload(n, slow_t)
    assert mon.slow_upload(n, slow_t)  # two in a row: the link slowed down
    assert mon.bandwidth_bps < fast.bandwidth_bps / 2  # restarted from the slow uploads
