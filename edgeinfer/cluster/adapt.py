"""Adaptation to slow nodes (docs/resilience.md): the step times observed while serving are compared with
the plan's prediction; a node persistently slower than ``slow_factor`` x its profile gets its costs scaled
by what was observed, and the gateway re-plans when that gains at least ``adapt_gain`` (hysteresis)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

from edgeinfer.cluster.planner import NodeCost, Plan, Problem

SAMPLES = 32  # decode steps a stage must have run since the last (re-)plan before it is judged


def slowdowns(stages: Sequence, plan: Plan, factor: float, samples: int = SAMPLES) -> dict[str, float]:
    """Node -> how much slower its compute must be to explain the observed decode steps of its stage, for
    the stages whose whole call (compute + hop) takes more than ``factor`` x the predicted time. The call
    time is what counts: a throttled node also answers late (queued requests, a frozen process). A call
    that started while other sequences' calls were on the same stage (several sequences in flight) may
    have waited for them on the node: it counts as the node's reported compute plus the predicted hop."""
    predicted = {(r.node, r.start): (r.compute, r.hop) for r in plan.breakdown}
    out = {}
    for st in stages:
        compute, hop = predicted.get((st.name, st.placement.start), (0.0, 0.0))
        calls = [t[1] if len(t) < 4 or t[3] <= 1 else t[2] + hop for t in st.timings if t[0] == 1][-samples:]
        if len(calls) < samples or compute <= 0:
            continue
        seen = statistics.median(calls)
        if seen > factor * (compute + hop):
            out[st.name] = max(1.0, (seen - hop) / compute)
    return out


def _scale(value, k: float):
    return value * k if isinstance(value, int | float) else [v * k for v in value]


def rescaled(problem: Problem, ratios: dict[str, float]) -> Problem:
    """The problem with every named node's compute costs multiplied by its ratio."""
    nodes: list[NodeCost] = []
    for n in problem.nodes:
        k = ratios.get(n.name)
        if k is None:
            nodes.append(n)
            continue
        nodes.append(
            replace(
                n,
                layer_time=_scale(n.layer_time, k),
                embed_time=n.embed_time * k,
                head_time=n.head_time * k,
                stage_time=n.stage_time * k,
            )
        )
    return Problem(nodes, problem.model, problem.links)
