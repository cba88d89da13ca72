"""Which nodes the gateway may use: a heartbeat (the node's Ping, which also reports its load), failure
reports from the data path, bans with back-off and re-admission (docs/resilience.md).

A node is *up* until two heartbeats in a row fail, or a Forward does (confirmed by a Ping); it is then
banned for ``ban`` seconds (Petals: 15 s), doubled on each new failure up to ``max_ban``, and reset once
the node stayed up for ``max_ban``. After its ban a node is pinged again and re-admitted when it answers;
``on_change(name, up)`` tells the gateway.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edgeinfer.cluster.client import NodeError, NodePool
from edgeinfer.cluster.config import FailoverOptions, NodeSpec
from edgeinfer.cluster.host import PingResult
from edgeinfer.cluster.state import NodeStatus

log = logging.getLogger("edgeinfer.cluster")
MISSES = 2  # heartbeats missed in a row before the heartbeat declares a node dead


@dataclass
class NodeState:
    name: str
    address: str
    up: bool = True
    since: float = 0.0  # monotonic time of the last change
    banned_until: float = 0.0
    ban_seconds: float = 0.0  # the last ban's length (0: never banned, or reset)
    failures: int = 0
    misses: int = 0  # heartbeats missed in a row while up
    last_error: str = ""
    last_ping: PingResult | None = None

    def status(self, now: float) -> NodeStatus:
        p = self.last_ping
        return NodeStatus(
            name=self.name,
            address=self.address,
            up=self.up,
            banned_for_s=round(max(0.0, self.banned_until - now), 2),
            failures=self.failures,
            last_error=self.last_error or None,
            rtt_ms=round(p.seconds * 1e3, 2) if p else None,
            load1=p.load1 if p else None,
            free_bytes=p.free_bytes if p else None,
            active_sequences=p.active_sequences if p else None,
        )


class Membership:
    def __init__(
        self,
        pool: NodePool,
        options: FailoverOptions,
        on_change: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        discover: Callable[[], list[NodeSpec]] | None = None,
        discover_every: float = 0.0,
        rpc_timeout: float = 60.0,
    ):
        """``discover``: the nodes a DNS name resolves to now (``config.resolve_dns``), asked again every
        ``discover_every`` seconds: new addresses join (pinged, then admitted like a node whose ban is
        over), vanished ones leave. Without it the membership is the pool's nodes, fixed."""
        self.pool, self.options, self.on_change, self.clock = pool, options, on_change, clock
        self.discover, self.discover_every, self.rpc_timeout = discover, discover_every, rpc_timeout
        now = clock()
        self.nodes = {n: NodeState(n, pool[n].address, since=now) for n in pool.names()}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_discovery = now + discover_every
        self._held: set[str] = set()  # nodes being profiled: busy by design, not judged by the heartbeat
        workers = max(4, 2 * len(self.nodes))  # room for nodes that join later (threads start on demand)
        self._pings = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="heartbeat")

    # --- state -------------------------------------------------------------------------------------------
    def alive(self) -> set[str]:
        with self._lock:
            return {n for n, s in self.nodes.items() if s.up}

    def names(self) -> set[str]:
        """Every member, up or down (a node gone from discovery is no member)."""
        with self._lock:
            return set(self.nodes)

    def is_up(self, name: str) -> bool:
        with self._lock:
            s = self.nodes.get(name)
            return s is not None and s.up

    def snapshot(self) -> list[NodeStatus]:
        now = self.clock()
        with self._lock:
            return [s.status(now) for s in self.nodes.values()]

    def mark_dead(self, name: str, why: str) -> None:
        """A failure seen by the heartbeat or the data path: ban the node (back-off), tell the gateway."""
        now = self.clock()
        with self._lock:
            s = self.nodes.get(name)
            if s is None or not s.up:
                return
            if s.ban_seconds and now - s.since > self.options.max_ban:
                s.ban_seconds = 0.0  # it stayed up long enough: start again from the first ban
            s.ban_seconds = min(self.options.max_ban, s.ban_seconds * 2 or self.options.ban)
            s.up, s.since, s.banned_until = False, now, now + s.ban_seconds
            s.failures += 1
            s.last_error = why
        log.warning("node %s is down (banned for %.0f s): %s", name, s.ban_seconds, why)
        if self.on_change:
            self.on_change(name, False)

    def _admit(self, name: str) -> None:
        with self._lock:
            s = self.nodes.get(name)
            if s is None or s.up:  # gone from discovery meanwhile, or up already
                return
            s.up, s.since, s.misses = True, self.clock(), 0
        log.warning("node %s answers again: re-admitted", name)
        if self.on_change:
            self.on_change(name, True)

    # --- probing -----------------------------------------------------------------------------------------
    def probe(self, name: str, timeout: float | None = None) -> PingResult | None:
        """One Ping within the heartbeat deadline; None when it fails."""
        try:
            r = self.pool[name].ping(timeout=timeout or self.options.min_deadline)
        except NodeError as exc:
            with self._lock:
                if name in self.nodes:
                    self.nodes[name].last_error = str(exc)
            return None
        with self._lock:
            if name in self.nodes:
                self.nodes[name].last_ping = r
        return r

    def beat(self) -> None:
        """One heartbeat round: ping every node that is up or whose ban is over, in parallel."""
        now = self.clock()
        with self._lock:
            due = [
                n for n, s in self.nodes.items() if (s.up or now >= s.banned_until) and n not in self._held
            ]
        results = list(self._pings.map(self.probe, due))
        for name, r in zip(due, results, strict=True):
            if r is not None:
                with self._lock:
                    if name in self.nodes:
                        self.nodes[name].misses = 0
                self._admit(name)
                continue
            with self._lock:
                s = self.nodes.get(name)
                if s is None:  # left (discovery) during the round
                    continue
                was_up = s.up
                s.misses += 1
                if not was_up:  # still down after its ban: ban again, longer
                    s.ban_seconds = min(self.options.max_ban, s.ban_seconds * 2)
                    s.banned_until = self.clock() + s.ban_seconds
            # two misses in a row: one late Ping on a busy machine is not a death (the data path
            # confirms its own deadline misses with a Ping and declares a node dead at once)
            if was_up and s.misses >= MISSES:
                self.mark_dead(name, s.last_error or "heartbeat failed")

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[None]:
        """While the gateway profiles ``name`` (its CPU busy measuring, loading a probe layer), the heartbeat
        leaves it alone: a late Ping then is the profiling's doing, not a failure."""
        with self._lock:
            self._held.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(name)
                if name in self.nodes:
                    self.nodes[name].misses = 0

    # --- discovery -------------------------------------------------------------------------------------
    def rediscover(self) -> tuple[list[str], list[str]]:
        """Resolve the discovery name again: addresses that appeared join (down, due for a Ping: the next
        heartbeat admits them, which tells the gateway), vanished ones leave (the gateway recovers their
        stages). A name that resolves to nothing changes nothing (a DNS hiccup must not empty the cluster;
        nodes really gone fail their heartbeats). Returns (joined, left)."""
        if self.discover is None:
            return [], []
        found = {spec.name: spec for spec in self.discover()}
        if not found:
            log.warning("discovery: the name resolves to no address; membership unchanged")
            return [], []
        with self._lock:
            known = set(self.nodes)
        joined = sorted(set(found) - known)
        left = sorted(known - set(found))
        for name in joined:
            spec = found[name]
            if name not in self.pool.names() or self.pool[name].address != spec.address:
                self.pool.connect(name, spec.address, timeout=self.rpc_timeout)
            with self._lock:
                self.nodes[name] = NodeState(name, spec.address, up=False, since=self.clock())
            log.warning("discovery: node %s (%s) appeared", name, spec.address)
        for name in left:
            with self._lock:
                self.nodes.pop(name, None)
            log.warning("discovery: node %s is gone from the name's addresses: it leaves", name)
            if self.on_change:
                self.on_change(name, False)
        return joined, left

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.options.heartbeat):
            try:
                if self.discover is not None and self.discover_every and self.clock() >= self._next_discovery:
                    self._next_discovery = self.clock() + self.discover_every
                    self.rediscover()
                self.beat()
            except Exception:  # noqa: BLE001 - the heartbeat must outlive any one failure
                log.exception("heartbeat round failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pings.shutdown(wait=False, cancel_futures=True)
