"""Membership against a real node on loopback: heartbeat, ban with doubling back-off, re-admission.

The clock is injected so that bans of many seconds pass at once; the node, its gRPC server and the Pings
are real (the node is stopped and started again on the same port)."""

from __future__ import annotations

import time

import pytest

from edgeinfer.cluster.client import NodePool
from edgeinfer.cluster.config import FailoverOptions
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.membership import Membership
from edgeinfer.cluster.node import start
from edgeinfer.process import free_port

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ban_doubles_and_a_node_that_answers_again_is_readmitted():
    port = free_port()
    host = ShardHost("m0", threads=1)
    server, _ = start(host, f"127.0.0.1:{port}")
    pool = NodePool()
    pool.connect("m0", f"127.0.0.1:{port}", timeout=5).wait_ready(10)
    clock, changes = Clock(), []
    m = Membership(
        pool,
        FailoverOptions(ban=10, max_ban=40, min_deadline=0.3),
        on_change=lambda n, up: changes.append((n, up)),
        clock=clock,
    )
    try:
        m.beat()
        assert m.alive() == {"m0"} and m.nodes["m0"].last_ping is not None
        assert m.nodes["m0"].last_ping.uptime_s > 0

        server.stop(0).wait(5)
        m.beat()
        assert m.is_up("m0")  # one missed heartbeat is not a death
        m.beat()
        s = m.nodes["m0"]
        assert not s.up and s.ban_seconds == 10 and s.banned_until == clock.now + 10
        assert changes == [("m0", False)] and "m0" in s.last_error
        clock.now += 5
        m.beat()  # still banned: not even pinged
        assert s.banned_until == clock.now + 5 and not s.up
        clock.now += 5
        m.beat()  # ban over, still silent: banned again, twice as long
        assert not s.up and s.ban_seconds == 20

        server, _ = start(host, f"127.0.0.1:{port}")
        pool["m0"].wait_ready(10)  # the channel reconnects (with its own back-off)
        clock.now += 19
        m.beat()
        assert not s.up  # answers, but its ban is not over
        clock.now += 1
        m.beat()
        assert s.up and changes[-1] == ("m0", True) and m.alive() == {"m0"}

        m.mark_dead("m0", "forward failed")
        assert s.ban_seconds == 40  # doubling continues while failures come soon
        m._admit("m0")
        m.mark_dead("m0", "forward failed")
        assert s.ban_seconds == 40  # capped at max_ban
        m._admit("m0")
        clock.now += 41  # up for longer than max_ban: the next failure starts from the first ban
        m.mark_dead("m0", "forward failed")
        assert s.ban_seconds == 10
    finally:
        m.close()
        pool.close()
        server.stop(0)
        host.close()


def test_a_hung_node_is_declared_dead_within_the_heartbeat_deadline():
    """A node whose server accepts connections but never answers (its handlers blocked) fails its Ping
    within ``min_deadline``."""
    import threading

    port = free_port()
    host = ShardHost("h0", threads=1)
    block = threading.Event()
    original = host.heartbeat
    host.heartbeat = lambda *a, **k: (block.wait(5), original(*a, **k))[1]  # type: ignore[method-assign]
    server, _ = start(host, f"127.0.0.1:{port}")
    pool = NodePool()
    pool.connect("h0", f"127.0.0.1:{port}", timeout=5).wait_ready(10)
    m = Membership(pool, FailoverOptions(min_deadline=0.3))
    try:
        t0 = time.monotonic()
        m.beat()
        m.beat()
        assert not m.is_up("h0") and time.monotonic() - t0 < 1.5  # two heartbeat deadlines
        assert "DEADLINE_EXCEEDED" in m.nodes["h0"].last_error
    finally:
        block.set()
        m.close()
        pool.close()
        server.stop(0)
        host.close()
