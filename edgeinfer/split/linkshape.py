"""Rate-limit a test-bed host's link with a *small* token bucket.

``Testbed.set_rate`` keeps tbf buckets of at least 128 KB. On a slow link that lets every transfer smaller
than the bucket pass at line rate after a pause (at 1 Mbit/s the bucket refills in one second), so a
request/response workload of a few KB never sees the configured rate. Split computing is exactly such a
workload, so its tests and benchmarks re-apply tbf on both ends of the host's link with a bucket of ~1 ms of
traffic (at least 1600 bytes, one full-size frame: a larger minimum lets small tensors through at line rate;
4 KB halved the time of a 5.6 KB upload at 1 Mbit/s. tbf segments larger GSO packets itself) and a deep
queue (no drops from bursts).
"""

from __future__ import annotations

import subprocess

from edgeinfer.units import parse_rate_bps


def shape(testbed, i: int, rate: str, queue_s: float = 1.0) -> None:
    """Limit both directions of ``testbed`` host ``i``'s link to ``rate`` with a small bucket."""
    bits = parse_rate_bps(rate)
    burst = max(1600, int(bits / 8 / 1000))
    host = testbed.hosts[i]
    args = ["tbf", "rate", f"{int(bits)}bit", "burst", str(burst), "latency", f"{int(queue_s * 1000)}ms"]
    for pre, dev in (([], host.veth), (["ip", "netns", "exec", host.ns], "eth0")):
        proc = subprocess.run(
            [*pre, "tc", "qdisc", "replace", "dev", dev, "root", *args], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"tc on {dev}: {proc.stderr.strip()}")
    host.rate = rate
