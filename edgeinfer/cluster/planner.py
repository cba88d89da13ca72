"""Pipeline planner: which nodes run which contiguous layer ranges of an LLM, placed from measurements.

Plain Python, no transport. Inputs are measured costs:

* per node: decode time of each layer (seconds per token), extra time of the embedding / output head when
  the node holds the first / last layer, and the memory it can give to weights and KV caches;
* per link: round-trip time and bandwidth between the gateway and every node;
* per model: bytes of every layer, of the embedding and of the head, of every layer's KV cache for one full
  context (reserved beside the weights: the nodes count KV caches in their ceiling); bytes crossing the
  wire per token.

Cost model of one decoded token (seconds), for stages ``s_0 .. s_k`` (node, layer range):

  compute(s) = stage_time[node] + sum(layer_time[node][l] for l in range)
               (+ embed_time if first) (+ head_time if last)
  hop(s)   = rtt(gw, node) + (bytes in + bytes out) / bandwidth(gw, node)
             (star topology: the gateway calls every stage in turn, as the gRPC gateway does)
  latency  = sum(compute(s) + hop(s))
  throughput (micro-batched, stages overlap) = 1 / max(compute(s) + transfer(s))

A node flagged ``local`` is the requesting device itself (the gateway process): its hop costs nothing and it
may only hold the *first* layers (device<->edge split: raw tokens never leave the device).

``plan`` is exact: dynamic programming over (layers assigned, set of used nodes, last node), which is
O(L^2 * 2^N * N^2) — fine for the <= ~10 nodes of an edge cluster. ``brute_force`` enumerates every ordered
subset and every composition (the test oracle); ``equal_split`` and ``memory_weighted`` are the exo-style
baselines it is compared with.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

GATEWAY = "gateway"
Objective = Literal["latency", "throughput"]
Strategy = Literal["auto", "single", "pipeline", "device-edge"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class InfeasiblePlan(ValueError):
    """No assignment fits the memory of the allowed nodes."""


@dataclass(frozen=True)
class Link:
    """A measured gateway<->node link, bandwidth in bytes/s (``split.planner.LinkEstimate`` is in bits/s)."""

    rtt_s: float  # seconds
    bytes_per_s: float  # bandwidth

    def cost(self, nbytes: float) -> float:
        return self.rtt_s + nbytes / self.bytes_per_s


FREE = Link(0.0, math.inf)


@dataclass(frozen=True)
class NodeCost:
    name: str
    layer_time: float | Sequence[float]  # seconds per token for each layer (or one value for all)
    memory: float = math.inf  # bytes available for weights and KV caches
    embed_time: float = 0.0
    head_time: float = 0.0
    stage_time: float = 0.0  # fixed cost of every stage on this node (per-forward overhead)
    local: bool = False  # the gateway's own device


@dataclass(frozen=True)
class ModelCost:
    n_layers: int
    layer_bytes: float | Sequence[float]
    embed_bytes: float = 0.0  # held by the first stage
    head_bytes: float = 0.0  # held by the last stage
    activation_bytes: float = 0.0  # hidden state of one token on the wire
    input_bytes: float = 4.0  # one token id
    output_bytes: float = 8.0  # what the last stage returns per token (token id + logit, or logits)
    kv_bytes: float | Sequence[float] = 0.0  # each layer's KV cache for one full context


@dataclass(frozen=True)
class Stage:
    node: str
    start: int
    end: int  # exclusive

    @property
    def n_layers(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class StageCost:
    """The predicted cost of one stage of a plan (``Problem.evaluate``)."""

    node: str
    start: int
    end: int  # exclusive
    compute: float  # seconds per token
    hop: float  # seconds per token of the hop into the stage (and back)
    memory: float  # weight bytes
    fits: bool  # weights and the KV reservation, in the node's memory
    local: bool  # on the gateway's own device
    kv: float = 0.0  # KV cache bytes reserved for the stage's layers (one full context)


@dataclass
class Plan:
    stages: list[Stage]
    latency: float  # predicted seconds per decoded token
    bottleneck: float  # predicted max stage time (1 / throughput)
    objective: str = "latency"
    strategy: str = "auto"
    excluded: dict[str, str] = field(default_factory=dict)  # node -> why it is not used
    breakdown: list[StageCost] = field(default_factory=list)
    standbys: list[Stage | None] = field(default_factory=list)  # per stage: its warm standby, if any

    @property
    def tokens_per_second(self) -> float:
        return 1.0 / self.latency if self.latency > 0 else math.inf

    @property
    def throughput(self) -> float:
        return 1.0 / self.bottleneck if self.bottleneck > 0 else math.inf

    @property
    def strategy_used(self) -> str:
        if len(self.stages) == 1:
            return "single"
        return "device-edge" if self.breakdown and self.breakdown[0].local else "pipeline"

    def describe(self) -> str:
        parts = [f"{s.node}[{s.start}:{s.end}]" for s in self.stages]
        spare = [f"{s.node}[{s.start}:{s.end}]" for s in self.standbys if s is not None]
        return " -> ".join(parts) + (f" (standby {', '.join(spare)})" if spare else "")


def _per_layer(value: float | Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{what}: {len(values)} values for {n} layers")
    return values


def _prefix(values: list[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


class Problem:
    """Everything the planner needs. ``links`` maps (a, b) -> Link for node names and ``GATEWAY``; a missing
    (a, b) falls back to (b, a); local nodes need no links."""

    def __init__(
        self,
        nodes: Sequence[NodeCost],
        model: ModelCost,
        links: dict[tuple[str, str], Link],
    ):
        names = [n.name for n in nodes]
        if len(set(names)) != len(names) or GATEWAY in names:
            raise ValueError(f"node names must be unique and not {GATEWAY!r}: {names}")
        if model.n_layers < 1:
            raise ValueError("the model needs at least one layer")
        self.nodes = list(nodes)
        self.model = model
        self.links = dict(links)
        L = model.n_layers
        self._time = [_prefix(_per_layer(n.layer_time, L, f"layer_time of {n.name}")) for n in nodes]
        self._mem = _prefix(_per_layer(model.layer_bytes, L, "layer_bytes"))
        self._kv = _prefix(_per_layer(model.kv_bytes, L, "kv_bytes"))

    def with_node(self, node: NodeCost, link: Link | None) -> Problem:
        """This problem with ``node`` added, or its costs replaced (a node (re)joined and was profiled);
        ``link``: its gateway link (None for the local device)."""
        nodes = [n for n in self.nodes if n.name != node.name] + [node]
        links = dict(self.links)
        if link is not None:
            links = {k: v for k, v in links.items() if node.name not in k} | {(GATEWAY, node.name): link}
        return Problem(nodes, self.model, links)

    def without(self, name: str) -> Problem:
        """This problem without node ``name`` (it left the cluster)."""
        nodes = [n for n in self.nodes if n.name != name]
        return Problem(nodes, self.model, {k: v for k, v in self.links.items() if name not in k})

    def link(self, a: str, b: str) -> Link:
        if a == b:
            return FREE
        local = {n.name for n in self.nodes if n.local}
        if (a == GATEWAY and b in local) or (b == GATEWAY and a in local):
            return FREE
        if (a, b) in self.links:
            return self.links[(a, b)]
        if (b, a) in self.links:
            return self.links[(b, a)]
        raise ValueError(f"no link cost measured between {a!r} and {b!r}")

    # --- costs of one stage ------------------------------------------------------------------------------
    def stage_memory(self, start: int, end: int) -> float:
        m = self.model
        mem = self._mem[end] - self._mem[start]
        return mem + (m.embed_bytes if start == 0 else 0.0) + (m.head_bytes if end == m.n_layers else 0.0)

    def stage_kv(self, start: int, end: int) -> float:
        """KV cache bytes the stage's layers need for one sequence of the full context: the nodes count their
        KV caches in their memory ceiling, so the planner reserves them beside the weights."""
        return self._kv[end] - self._kv[start]

    def stage_need(self, start: int, end: int) -> float:
        """Weights plus the KV reservation: what a node must have for the stage."""
        return self.stage_memory(start, end) + self.stage_kv(start, end)

    def fits(self, j: int, start: int, end: int) -> bool:
        return self.stage_need(start, end) <= self.nodes[j].memory

    def compute(self, j: int, start: int, end: int) -> float:
        n = self.nodes[j]
        t = n.stage_time + self._time[j][end] - self._time[j][start]
        return (
            t + (n.embed_time if start == 0 else 0.0) + (n.head_time if end == self.model.n_layers else 0.0)
        )

    def hop(self, j: int, start: int, end: int) -> tuple[float, float]:
        """(latency of the hop into stage j and back, its pure transfer time) — see the module docstring."""
        m = self.model
        bytes_in = m.input_bytes if start == 0 else m.activation_bytes
        link = self.link(GATEWAY, self.nodes[j].name)
        bytes_out = m.output_bytes if end == m.n_layers else m.activation_bytes
        nbytes = bytes_in + bytes_out
        return link.cost(nbytes), nbytes / link.bytes_per_s

    def evaluate(self, stages: Sequence[Stage]) -> tuple[float, float, list[StageCost]]:
        """(latency, bottleneck stage time, breakdown) of an explicit plan; checks it is a valid partition."""
        index = {n.name: i for i, n in enumerate(self.nodes)}
        pos, latency, bottleneck, rows = 0, 0.0, 0.0, []
        for k, s in enumerate(stages):
            if s.node not in index:
                raise ValueError(f"unknown node {s.node!r}")
            j = index[s.node]
            if s.start != pos or s.end <= s.start:
                raise ValueError(f"stages must cover layers contiguously from 0: {stages}")
            if self.nodes[j].local and k != 0:
                raise ValueError(f"local node {s.node!r} may only hold the first layers")
            c = self.compute(j, s.start, s.end)
            h, transfer = self.hop(j, s.start, s.end)
            mem, kv = self.stage_memory(s.start, s.end), self.stage_kv(s.start, s.end)
            fits = mem + kv <= self.nodes[j].memory
            rows.append(StageCost(s.node, s.start, s.end, c, h, mem, fits, self.nodes[j].local, kv))
            latency += c + h
            bottleneck = max(bottleneck, c + transfer)
            pos = s.end
        if pos != self.model.n_layers:
            raise ValueError(f"stages cover layers 0..{pos}, the model has {self.model.n_layers}")
        if len({s.node for s in stages}) != len(stages):
            raise ValueError("a node appears in two stages")
        return latency, bottleneck, rows


def _allowed(problem: Problem, strategy: str) -> tuple[list[int], int, bool, int]:
    """(usable node indices, most stages, must the first stage be local, fewest stages)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    everyone = list(range(len(problem.nodes)))
    remote = [j for j in everyone if not problem.nodes[j].local]
    if strategy == "single":
        return everyone, 1, False, 1
    if strategy == "pipeline":  # edge<->edge: the layers split over at least two edge nodes
        if len(remote) < 2:
            raise ValueError(
                f"strategy pipeline needs at least two edge nodes, the cluster has {len(remote)}"
            )
        return remote, len(remote), False, 2
    if strategy == "device-edge":
        if len(remote) == len(everyone):
            raise ValueError("strategy device-edge needs a local node (the requesting device)")
        return everyone, len(everyone), True, 2
    return everyone, len(everyone), False, 1


def plan(problem: Problem, objective: str = "latency", strategy: str = "auto") -> Plan:
    """The exact optimum over ordered node subsets and contiguous layer ranges (see module docstring)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    allowed, max_stages, local_first, min_stages = _allowed(problem, strategy)
    L = problem.model.n_layers
    combine = (lambda a, b: a + b) if objective == "latency" else max
    # best[(k, mask, last)] = (cost, parent key, stage)
    best: dict[tuple[int, int, int], tuple[float, tuple | None, Stage | None]] = {}
    frontier = {(0, 0, -1): (0.0, None, None)}
    best.update(frontier)
    for _ in range(max_stages):
        nxt: dict[tuple[int, int, int], tuple[float, tuple | None, Stage | None]] = {}
        for key, (cost, _p, _s) in frontier.items():
            k, mask, _last = key
            if k == L:
                continue
            for j in allowed:
                if mask >> j & 1:
                    continue
                node = problem.nodes[j]
                if node.local and k != 0:
                    continue
                if local_first and k == 0 and not node.local:
                    continue
                for e in range(k + 1, L + 1):
                    if not problem.fits(j, k, e):
                        break  # memory only grows with more layers
                    if local_first and k == 0 and e == L:
                        continue  # device-edge needs at least one edge stage
                    c = problem.compute(j, k, e)
                    h, transfer = problem.hop(j, k, e)
                    step = c + h if objective == "latency" else c + transfer
                    total = combine(cost, step)
                    nkey = (e, mask | 1 << j, j)
                    if nkey not in nxt or total < nxt[nkey][0]:
                        nxt[nkey] = (total, key, Stage(node.name, k, e))
        for nkey, val in nxt.items():
            if nkey not in best or val[0] < best[nkey][0]:
                best[nkey] = val
        frontier = nxt
    finals = {key: val for key, val in best.items() if key[0] == L and bin(key[1]).count("1") >= min_stages}
    if not finals:
        raise InfeasiblePlan(_infeasible_reason(problem, allowed, strategy))
    key = min(finals, key=lambda kk: (finals[kk][0], bin(kk[1]).count("1")))
    stages: list[Stage] = []
    cur: tuple | None = key
    while cur is not None and best[cur][2] is not None:
        stages.append(best[cur][2])
        cur = best[cur][1]
    stages.reverse()
    latency, bottleneck, rows = problem.evaluate(stages)
    result = Plan(stages, latency, bottleneck, objective, strategy, breakdown=rows)
    result.excluded = _why_excluded(problem, finals, stages, allowed, objective)
    return result


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def _infeasible_reason(problem: Problem, allowed: list[int], strategy: str) -> str:
    m = problem.model
    total = problem.stage_memory(0, m.n_layers)
    kv = problem.stage_kv(0, m.n_layers)
    mem = sum(problem.nodes[j].memory for j in allowed)
    detail = ", ".join(f"{problem.nodes[j].name}: {_size(problem.nodes[j].memory)}" for j in allowed)
    what = (f"{_size(kv)} for a full context's KV cache and " if kv else "") + f"{_size(total)} for weights"
    return (
        f"the model needs {what} but the {len(allowed)} usable node(s) "
        f"(strategy {strategy}) offer {_size(mem)} in total ({detail}), or no contiguous split fits; "
        "add nodes or memory, or use a smaller model"
    )


def _why_excluded(problem: Problem, finals: dict, stages: list[Stage], allowed: list[int], objective: str):
    used = {s.node for s in stages}
    best_cost = min(v[0] for v in finals.values())
    reasons = {}
    one_layer = min(
        problem.stage_need(k, k + 1) - (problem.model.embed_bytes if k == 0 else 0)
        for k in range(problem.model.n_layers)
    )
    for j, node in enumerate(problem.nodes):
        if node.name in used:
            continue
        if j not in allowed:
            reasons[node.name] = "not allowed by the chosen strategy"
            continue
        if node.memory < one_layer:
            reasons[node.name] = f"memory ({node.memory / 2**20:.0f} MiB) cannot hold a single layer"
            continue
        with_j = [v[0] for key, v in finals.items() if key[1] >> j & 1]
        if not with_j:
            reasons[node.name] = "no feasible plan uses it (memory or strategy constraints)"
            continue
        delta = min(with_j) - best_cost
        what = "per-token latency" if objective == "latency" else "bottleneck stage time"
        try:
            rtt = f"; hop latency {problem.link(GATEWAY, node.name).rtt_s * 1e3:.2f} ms"
        except ValueError:
            rtt = ""
        reasons[node.name] = f"using it would add {delta * 1e3:.2f} ms to the {what}{rtt}"
    return reasons


# --- warm standbys ---------------------------------------------------------------------------------
def standby_cost(problem: Problem, j: int, st: Stage) -> float:
    """Predicted seconds per token of stage ``st`` if node ``j`` served it (its compute and its hop)."""
    return problem.compute(j, st.start, st.end) + problem.hop(j, st.start, st.end)[0]


def place_standbys(
    problem: Problem, stages: Sequence[Stage], replicas: int = 1, exclude: Sequence[str] = ()
) -> list[Stage | None]:
    """Per primary stage, a warm standby: the same layer range also loaded on another remote node, within the
    memory that node has left after its primary stage and the standbys already placed on it.

    Exact: the most stages covered, then the least predicted cost of the standbys (sum of their stage times);
    a depth-first search memoised on (stage, memory left per node) — small edge clusters only, like ``plan``.
    ``exclude``: node names not to use (failed ones). ``replicas`` is 0 or 1."""
    if replicas <= 0 or not stages:
        return [None] * len(stages)
    index = {n.name: i for i, n in enumerate(problem.nodes)}
    left = [n.memory for n in problem.nodes]
    for st in stages:
        left[index[st.node]] -= problem.stage_need(st.start, st.end)
    usable = [j for j, n in enumerate(problem.nodes) if not n.local and n.name not in exclude]
    memo: dict[tuple, tuple[int, float, tuple[int, ...]]] = {}

    def best(i: int, mem: tuple[float, ...]) -> tuple[int, float, tuple[int, ...]]:
        """(stages covered, cost, chosen node per stage or -1) for stages i.. with ``mem`` left."""
        if i == len(stages):
            return 0, 0.0, ()
        key = (i, mem)
        if key in memo:
            return memo[key]
        n, c, rest = best(i + 1, mem)
        out = (n, c, (-1, *rest))
        st, need = stages[i], problem.stage_need(stages[i].start, stages[i].end)
        for j in usable:
            if problem.nodes[j].name == st.node or mem[j] < need:
                continue
            m = list(mem)
            m[j] -= need
            n, c, rest = best(i + 1, tuple(m))
            cand = (n + 1, c + standby_cost(problem, j, st), (j, *rest))
            if (cand[0], -cand[1]) > (out[0], -out[1]):
                out = cand
        memo[key] = out
        return out

    chosen = best(0, tuple(left))[2]
    return [
        None if j < 0 else Stage(problem.nodes[j].name, st.start, st.end)
        for j, st in zip(chosen, stages, strict=True)
    ]


# --- baselines and oracle ---------------------------------------------------------------------------
def _finish(problem: Problem, stages: list[Stage], objective: str, strategy: str) -> Plan:
    latency, bottleneck, rows = problem.evaluate(stages)
    if not all(r.fits for r in rows):
        over = ", ".join(f"{r.node} needs {(r.memory + r.kv) / 2**20:.0f} MiB" for r in rows if not r.fits)
        raise InfeasiblePlan(f"{strategy}: split does not fit in memory ({over})")
    return Plan(stages, latency, bottleneck, objective, strategy, breakdown=rows)


def _split(problem: Problem, order: list[int], weights: list[float]) -> list[Stage]:
    """Largest-remainder split of the layers in proportion to ``weights`` (each used node >= 1 layer)."""
    L = problem.model.n_layers
    order, weights = order[:L], weights[:L]
    total = sum(weights)
    raw = [L * w / total for w in weights]
    counts = [max(1, int(r)) for r in raw]
    while sum(counts) > L:
        i = max(range(len(counts)), key=lambda i: counts[i] - raw[i])
        counts[i] -= 1
    rema = sorted(range(len(counts)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    i = 0
    while sum(counts) < L:
        counts[rema[i % len(rema)]] += 1
        i += 1
    stages, pos = [], 0
    for j, c in zip(order, counts, strict=True):
        if c > 0:
            stages.append(Stage(problem.nodes[j].name, pos, pos + c))
            pos += c
    return stages


def equal_split(problem: Problem, objective: str = "latency") -> Plan:
    """Every remote node, in the listed order, gets the same number of layers."""
    order = [j for j, n in enumerate(problem.nodes) if not n.local]
    return _finish(problem, _split(problem, order, [1.0] * len(order)), objective, "equal")


def memory_weighted(problem: Problem, objective: str = "latency") -> Plan:
    """exo-style: every remote node, largest memory first, layers in proportion to its memory."""
    order = sorted(
        (j for j, n in enumerate(problem.nodes) if not n.local), key=lambda j: -problem.nodes[j].memory
    )
    finite = [problem.nodes[j].memory for j in order if math.isfinite(problem.nodes[j].memory)]
    fallback = max(finite) if finite else 1.0
    weights = [problem.nodes[j].memory if math.isfinite(problem.nodes[j].memory) else fallback for j in order]
    return _finish(problem, _split(problem, order, weights), objective, "memory-weighted")


def _compositions(n: int, k: int):
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        yield [(bounds[i], bounds[i + 1]) for i in range(k)]


def brute_force(problem: Problem, objective: str = "latency", strategy: str = "auto") -> Plan:
    """Enumerate every ordered node subset and every contiguous split (test oracle; tiny instances only)."""
    allowed, max_stages, local_first, min_stages = _allowed(problem, strategy)
    L = problem.model.n_layers
    best: tuple[float, list[Stage]] | None = None
    for k in range(min_stages, min(max_stages, L) + 1):
        for order in itertools.permutations(allowed, k):
            if local_first and (not problem.nodes[order[0]].local or k < 2):
                continue
            if any(problem.nodes[j].local for j in order[1:]):
                continue
            for ranges in _compositions(L, k):
                stages = [Stage(problem.nodes[j].name, a, b) for j, (a, b) in zip(order, ranges, strict=True)]
                latency, bottleneck, rows = problem.evaluate(stages)
                if not all(r.fits for r in rows):
                    continue
                cost = latency if objective == "latency" else bottleneck
                if best is None or cost < best[0] - 1e-15:
                    best = (cost, stages)
    if best is None:
        raise InfeasiblePlan(_infeasible_reason(problem, allowed, strategy))
    latency, bottleneck, rows = problem.evaluate(best[1])
    return Plan(best[1], latency, bottleneck, objective, strategy, breakdown=rows)
