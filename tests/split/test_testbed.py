"""On the network test-bed (namespaces + tbf): the split follows the link rate, a cut link falls back to a
local exit, and every input gets an answer. The test-bed is always torn down (also on SIGTERM), and the
teardown is checked."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Iterator

import pytest

from edgeinfer.testbed.netns import Testbed, available, list_namespaces, teardown

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _needs_netns():
    reason = available()
    if reason:
        pytest.skip(f"needs network namespaces: {reason}")


class _Terminated(Exception):
    pass


@pytest.fixture
def testbed() -> Iterator[Testbed]:
    """A one-host test-bed, removed afterwards whatever happens: SIGTERM (e.g. `timeout pytest ...`) is turned
    into an exception so the ``with`` block unwinds, and the namespaces are checked to be gone."""

    def _raise(signum, frame):
        raise _Terminated(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, _raise)
    name = f"spt{os.getpid() % 10000}"
    try:
        with Testbed(1, rate=None, name=name) as tb:
            yield tb
    finally:
        teardown(name)  # idempotent; covers a failure inside Testbed.down itself
        signal.signal(signal.SIGTERM, old)
    assert list_namespaces(name) == [], "the test-bed's namespaces were not removed"


def test_split_follows_the_link_and_survives_a_cut(tmp_path, testbed):
    from edgeinfer.models.dnn import zoo
    from edgeinfer.models.dnn.data import digits
    from edgeinfer.split.bench import start_edge
    from edgeinfer.split.device import ClientConfig, DeviceClient
    from edgeinfer.split.linkshape import shape
    from edgeinfer.split.profile import load_device, profile_model

    m = zoo.load("digitnet")
    data = digits(64)
    dev = profile_model(m, load_device("rpi4-like"), data["val"].x[:8], warmup=2, repeats=10)
    edge = profile_model(m, load_device("edge-host"), data["val"].x[:8], warmup=2, repeats=10)
    test = data["test"]
    n = len(m.path("final"))
    phases: dict[str, list] = {}
    tb = testbed
    url = start_edge(tb, 0, "digitnet", 8090, 0.0, tmp_path / "edge.log")
    probe_every_s = 0.2
    cfg = ClientConfig(deadline_ms=250, probe_every_s=probe_every_s, retry_after_s=30, exits=["final"])
    with DeviceClient(m, dev, edge, url, cfg) as client:
        i = 0

        def run(k: int, min_s: float = 0.0) -> list:
            """At least ``k`` inputs and at least ``min_s`` seconds (so that several probes happen whatever
            the speed of this machine: a device-only plan learns about the link from probes only)."""
            nonlocal i
            out = []
            t0 = time.monotonic()
            while len(out) < k or time.monotonic() - t0 < min_s:
                out.append(client.infer(test.x[i % len(test) : i % len(test) + 1]))
                i += 1
            return out

        for name, rate in (("fast", "1gbit"), ("slow", "1mbit"), ("fast again", "1gbit")):
            shape(tb, 0, rate)
            phases[name] = run(25, min_s=8 * probe_every_s)
        tb.cut(0)
        phases["cut"] = run(6, min_s=4 * probe_every_s)  # a device-only plan learns of the cut at a probe
        replans = client.replans
    results = [r for rs in phases.values() for r in rs]
    assert len(results) >= 81 and all(0 <= r.pred <= 9 for r in results)  # every input got an answer
    split = {k: statistics.median(r.split for r in rs[-10:]) for k, rs in phases.items() if k != "cut"}
    assert split["fast"] < n, "a 1 Gbit/s link should offload at least the tail"
    assert split["slow"] > split["fast"] and split["slow"] > split["fast again"], split
    assert replans >= 2
    assert not any(r.fallback for k in ("fast", "slow", "fast again") for r in phases[k])
    cut = phases["cut"]
    assert all(r.where == "device" for r in cut)  # answered on the device
    first = next(i for i, r in enumerate(cut) if r.fallback)  # StopIteration: the cut was never noticed
    assert all(r.fallback and "unreachable" in r.reason for r in cut[first:])
