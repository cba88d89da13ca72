"""Where to split a DNN between device and edge, and which early exit to take (Neurosurgeon / Edgent).

For one exit's path of ``n`` layers, split ``s`` (0..n) runs layers ``[0, s)`` on the device and ``[s, n)`` on
the edge::

    latency(s) = sum(device_ms[:s]) + transfer(s) + sum(edge_ms[s:])
    transfer(s) = 0 if s == n  else  rtt + (cut_bytes[s] + reply_bytes) * 8 / bandwidth
    energy(s)  = compute_w * device_s + tx_w * transfer_s + idle_w * edge_s          (the device's joules)

``plan_split`` is the joint choice (Edgent): the most accurate exit whose best split meets the deadline, that
split chosen by the objective (latency or device energy); O(total layers) with prefix sums. ``exhaustive``
tries every (exit, split) explicitly and is the test oracle. Both break ties the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import accumulate

from edgeinfer.split.profile import PowerModel, Profile

OBJECTIVES = ("latency", "energy")


@dataclass(frozen=True)
class LinkEstimate:
    """A device-edge link as the planner sees it: bandwidth in bits/s (tc's unit) and round-trip time."""

    bandwidth_bps: float  # bits per second
    rtt_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0 or self.rtt_s < 0:
            raise ValueError(f"link needs bandwidth > 0 and rtt >= 0, got {self.bandwidth_bps}, {self.rtt_s}")

    def transfer_s(self, nbytes: int) -> float:
        return self.rtt_s + 8.0 * nbytes / self.bandwidth_bps

    def __str__(self) -> str:
        return f"{self.bandwidth_bps / 1e6:.3g} Mbit/s, RTT {1000 * self.rtt_s:.3g} ms"


@dataclass(frozen=True)
class PathCosts:
    """One exit's path: per-layer device and edge latency, and the wire bytes at every cut."""

    exit: str
    device_ms: tuple[float, ...]  # n
    edge_ms: tuple[float, ...]  # n
    cut_bytes: tuple[int, ...]  # n + 1: index 0 = the input, n = the logits
    accuracy: float = 0.0
    reply_bytes: int = 64  # the edge's answer (logits + framing)

    def __post_init__(self) -> None:
        n = len(self.device_ms)
        if len(self.edge_ms) != n or len(self.cut_bytes) != n + 1:
            raise ValueError(f"path {self.exit}: need n device_ms, n edge_ms and n+1 cut_bytes (n={n})")

    @property
    def n(self) -> int:
        return len(self.device_ms)


@dataclass(frozen=True)
class SplitOption:
    exit: str
    split: int
    n: int
    device_ms: float
    transfer_ms: float
    edge_ms: float
    energy_j: float
    accuracy: float
    wire_bytes: int
    feasible: bool = True

    @property
    def total_ms(self) -> float:
        return self.device_ms + self.transfer_ms + self.edge_ms

    @property
    def where(self) -> str:
        return "device-only" if self.split == self.n else "edge-only" if self.split == 0 else "split"

    def describe(self) -> str:
        return (
            f"exit {self.exit}, split {self.split}/{self.n} ({self.where}): {self.total_ms:.2f} ms = device "
            f"{self.device_ms:.2f} + transfer {self.transfer_ms:.2f} + edge {self.edge_ms:.2f}"
        )


def _energy(power: PowerModel, device_ms: float, transfer_ms: float, edge_ms: float) -> float:
    return (power.compute_w * device_ms + power.tx_w * transfer_ms + power.idle_w * edge_ms) / 1000.0


def evaluate(
    path: PathCosts, split: int, link: LinkEstimate, power: PowerModel = PowerModel()
) -> SplitOption:
    """The cost of one (exit, split), summed explicitly."""
    if not 0 <= split <= path.n:
        raise ValueError(f"split {split} outside 0..{path.n}")
    dev, edge = sum(path.device_ms[:split]), sum(path.edge_ms[split:])
    sent = 0 if split == path.n else path.cut_bytes[split] + path.reply_bytes
    xfer = 0.0 if split == path.n else 1000.0 * link.transfer_s(sent)
    return SplitOption(
        path.exit, split, path.n, dev, xfer, edge, _energy(power, dev, xfer, edge), path.accuracy, sent
    )


def _key(o: SplitOption, objective: str) -> tuple:
    value = o.total_ms if objective == "latency" else o.energy_j
    return (round(value, 9), round(o.total_ms, 9), -o.split)  # ties: faster, then more on the device


def _check(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def best_split(
    path: PathCosts,
    link: LinkEstimate,
    objective: str = "latency",
    power: PowerModel = PowerModel(),
    deadline_ms: float | None = None,
    excluded: frozenset[tuple[str, int]] = frozenset(),
) -> SplitOption | None:
    """The best split of one path (None if no split meets the deadline). O(n) with prefix sums. Splits
    ``(exit, split)`` in ``excluded`` are not candidates (deadline mode: their observed tail misses)."""
    _check(objective)
    pre = [0.0, *accumulate(path.device_ms)]
    suf = [*accumulate(reversed(path.edge_ms), initial=0.0)][::-1]
    best: SplitOption | None = None
    for s in range(path.n + 1):
        if (path.exit, s) in excluded:
            continue
        sent = 0 if s == path.n else path.cut_bytes[s] + path.reply_bytes
        xfer = 0.0 if s == path.n else 1000.0 * link.transfer_s(sent)
        o = SplitOption(
            path.exit,
            s,
            path.n,
            pre[s],
            xfer,
            suf[s],
            _energy(power, pre[s], xfer, suf[s]),
            path.accuracy,
            sent,
        )
        if deadline_ms is not None and o.total_ms > deadline_ms + 1e-9:
            continue
        if best is None or _key(o, objective) < _key(best, objective):
            best = o
    return best


def plan_split(
    paths: list[PathCosts],
    link: LinkEstimate,
    deadline_ms: float | None = None,
    objective: str = "latency",
    power: PowerModel = PowerModel(),
    excluded: frozenset[tuple[str, int]] = frozenset(),
) -> SplitOption:
    """Joint exit + split: the most accurate exit that meets the deadline, split by ``objective``; options in
    ``excluded`` are not candidates.

    Without a deadline every option is feasible, so the most accurate exit is taken. If nothing (not
    excluded) meets the deadline the fastest option overall, excluded or not, is returned with
    ``feasible=False``.
    """
    _check(objective)
    if not paths:
        raise ValueError("no paths to plan")
    best: SplitOption | None = None
    for p in paths:
        o = best_split(p, link, objective, power, deadline_ms, excluded)
        if o is not None and (
            best is None or (-o.accuracy, *_key(o, objective)) < (-best.accuracy, *_key(best, objective))
        ):
            best = o
    if best is not None:
        return best
    fastest = min((best_split(p, link, "latency", power) for p in paths), key=lambda o: _key(o, "latency"))
    return replace(fastest, feasible=False)


def exhaustive(
    paths: list[PathCosts],
    link: LinkEstimate,
    deadline_ms: float | None = None,
    objective: str = "latency",
    power: PowerModel = PowerModel(),
    excluded: frozenset[tuple[str, int]] = frozenset(),
) -> SplitOption:
    """Every (exit, split) evaluated explicitly; the same answer as ``plan_split`` (the test oracle)."""
    _check(objective)
    every = [evaluate(p, s, link, power) for p in paths for s in range(p.n + 1)]
    ok = [
        o
        for o in every
        if (o.exit, o.split) not in excluded and (deadline_ms is None or o.total_ms <= deadline_ms + 1e-9)
    ]
    if not ok:
        return replace(min(every, key=lambda o: _key(o, "latency")), feasible=False)
    return min(ok, key=lambda o: (-o.accuracy, *_key(o, objective)))


def path_costs(device: Profile, edge: Profile, exit_name: str, wire: str = "f32+none") -> PathCosts:
    """One exit's path: device latency from ``device``, edge latency from ``edge``, bytes by ``wire``."""
    if device.model != edge.model:
        raise ValueError(f"device profile is for {device.model!r}, edge profile for {edge.model!r}")
    if exit_name not in device.exits:
        raise ValueError(f"no exit {exit_name!r}; exits: {', '.join(device.exits)}")
    cuts = device.cut_bytes(exit_name, wire)
    acc = device.exits[exit_name].get("accuracy")
    return PathCosts(
        exit_name,
        tuple(device.path_ms(exit_name)),
        tuple(edge.path_ms(exit_name)),
        tuple(cuts),
        acc if acc is not None and not math.isnan(acc) else 0.0,
        reply_bytes=cuts[-1] + 200,  # logits plus HTTP framing of the reply
    )


def all_paths(
    device: Profile, edge: Profile, wire: str = "f32+none", exits: list[str] | None = None
) -> list[PathCosts]:
    return [path_costs(device, edge, e, wire) for e in (exits or list(device.exits))]
