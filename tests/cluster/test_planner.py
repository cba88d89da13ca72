"""The pipeline planner against brute force on random small instances, plus its explanations."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from edgeinfer.cluster.planner import (
    GATEWAY,
    InfeasiblePlan,
    Link,
    ModelCost,
    NodeCost,
    Problem,
    Stage,
    brute_force,
    equal_split,
    memory_weighted,
    place_standbys,
    plan,
    standby_cost,
)

MB = 1 << 20


def random_problem(rng: random.Random, local: bool) -> Problem:
    n_nodes = rng.randint(1, 4)
    L = rng.randint(1, 7)
    per_layer = [rng.uniform(1, 10) * MB for _ in range(L)]
    model = ModelCost(
        n_layers=L,
        layer_bytes=per_layer,
        embed_bytes=rng.uniform(0, 20) * MB,
        head_bytes=rng.uniform(0, 20) * MB,
        activation_bytes=rng.choice([2048, 65536, 1 << 20]),
        output_bytes=rng.choice([8, 300_000]),
        kv_bytes=rng.choice([0.0, [rng.uniform(0, 3) * MB for _ in range(L)]]),  # a full context's KV
    )
    total = sum(per_layer) + model.embed_bytes + model.head_bytes
    nodes = []
    for i in range(n_nodes):
        speed = rng.uniform(0.5, 3.0)
        nodes.append(
            NodeCost(
                name=f"n{i}",
                layer_time=[speed * rng.uniform(0.8, 1.2) * 1e-3 for _ in range(L)],
                memory=rng.choice([math.inf, total * rng.uniform(0.2, 1.2)]),
                embed_time=rng.uniform(0, 1e-3),
                head_time=rng.uniform(0, 5e-3),
                stage_time=rng.uniform(0, 2e-3),
                local=local and i == 0,
            )
        )
    names = [GATEWAY] + [n.name for n in nodes]
    links = {}
    for a in names:
        for b in names:
            if a < b:
                links[(a, b)] = Link(rng.uniform(1e-4, 5e-3), rng.choice([1.25e6, 12.5e6, 125e6]))
    return Problem(nodes, model, links)


@pytest.mark.parametrize("objective", ["latency", "throughput"])
@pytest.mark.parametrize("strategy", ["auto", "single", "pipeline", "device-edge"])
def test_dp_equals_brute_force(objective, strategy):
    rng = random.Random(f"star-{objective}-{strategy}")
    checked = 0
    for _ in range(60):
        local = strategy == "device-edge" or rng.random() < 0.3
        problem = random_problem(rng, local)
        try:
            oracle = brute_force(problem, objective, strategy)
        except InfeasiblePlan:
            with pytest.raises(InfeasiblePlan):
                plan(problem, objective, strategy)
            continue
        except ValueError:  # e.g. device-edge without a local node: both must refuse
            with pytest.raises(ValueError):
                plan(problem, objective, strategy)
            continue
        got = plan(problem, objective, strategy)
        key = "latency" if objective == "latency" else "bottleneck"
        assert getattr(got, key) == pytest.approx(getattr(oracle, key), rel=1e-9), (got.stages, oracle.stages)
        lat, bottleneck, rows = problem.evaluate(got.stages)  # a valid partition that fits
        assert all(r.fits for r in rows) and rows == got.breakdown
        if strategy == "single":
            assert len(got.stages) == 1
        if strategy == "device-edge":
            assert problem.nodes[0].local and got.stages[0].node == "n0" and len(got.stages) >= 2
        if strategy == "pipeline":  # edge<->edge: at least two edge nodes
            assert not any(r.local for r in rows) and len(got.stages) >= 2
        checked += 1
    assert checked >= 20


def _cluster(fast_link: bool) -> Problem:
    model = ModelCost(
        n_layers=24, layer_bytes=10 * MB, embed_bytes=100 * MB, head_bytes=100 * MB, activation_bytes=1792
    )
    nodes = [
        NodeCost("a", 2e-3, memory=300 * MB, head_time=5e-3),
        NodeCost("b", 2e-3, memory=300 * MB),
        NodeCost("slow", 20e-3, memory=10_000 * MB),
    ]
    link = Link(2e-4, 125e6) if fast_link else Link(50e-3, 1.25e6)
    links = {(GATEWAY, "a"): link, (GATEWAY, "b"): link, (GATEWAY, "slow"): link}
    return Problem(nodes, model, links)


def test_memory_forces_a_pipeline_and_explains_exclusions():
    p = plan(_cluster(fast_link=True))
    assert {s.node for s in p.stages} == {"a", "b"}  # neither a nor b holds 440 MB alone; slow is slow
    assert "slow" in p.excluded and "would add" in p.excluded["slow"]
    assert p.tokens_per_second == pytest.approx(1 / p.latency)
    # baselines are valid plans no better than the optimum
    for baseline in (equal_split, memory_weighted):
        try:
            b = baseline(_cluster(fast_link=True))
        except InfeasiblePlan:
            continue
        assert b.latency >= p.latency - 1e-12


def test_memory_weighted_matches_exo_rule():
    b = memory_weighted(_cluster(fast_link=True))
    # exo: largest memory first, layers proportional to memory
    assert b.stages[0].node == "slow" and b.stages[0].n_layers >= 20


def test_infeasible_cluster_is_refused_with_a_clear_message():
    model = ModelCost(n_layers=4, layer_bytes=100 * MB)
    nodes = [NodeCost("a", 1e-3, memory=150 * MB), NodeCost("b", 1e-3, memory=150 * MB)]
    problem = Problem(nodes, model, {(GATEWAY, "a"): Link(1e-3, 1e8), (GATEWAY, "b"): Link(1e-3, 1e8)})
    with pytest.raises(InfeasiblePlan, match=r"needs 0\.39 GiB.*offer 0\.29 GiB"):
        plan(problem)


def test_single_vs_pipeline_tradeoff_follows_the_link():
    # one node can hold everything: with a slow link a second hop is not worth it
    model = ModelCost(n_layers=8, layer_bytes=MB, activation_bytes=4096)
    nodes = [NodeCost("a", 1e-3), NodeCost("b", 0.5e-3)]
    slow = Problem(nodes, model, {(GATEWAY, "a"): Link(1e-3, 1e8), (GATEWAY, "b"): Link(1e-3, 1e8)})
    assert [s.node for s in plan(slow).stages] == ["b"]
    assert plan(slow, objective="throughput").throughput >= plan(slow).throughput - 1e-9


def test_pipeline_strategy_splits_even_when_one_node_is_faster():
    model = ModelCost(n_layers=8, layer_bytes=MB, activation_bytes=4096)
    nodes = [NodeCost("a", 1e-3), NodeCost("b", 1e-3)]
    problem = Problem(nodes, model, {(GATEWAY, "a"): Link(1e-3, 1e8), (GATEWAY, "b"): Link(1e-3, 1e8)})
    assert len(plan(problem).stages) == 1  # auto: a second hop only costs
    forced = plan(problem, strategy="pipeline")
    assert sorted(s.node for s in forced.stages) == ["a", "b"]
    assert forced.latency > plan(problem).latency
    lonely = Problem(nodes[:1], model, {(GATEWAY, "a"): Link(1e-3, 1e8)})
    with pytest.raises(ValueError, match="at least two edge nodes"):
        plan(lonely, strategy="pipeline")


def test_bad_input():
    model = ModelCost(n_layers=2, layer_bytes=1)
    with pytest.raises(ValueError, match="unique"):
        Problem([NodeCost("a", 1e-3), NodeCost("a", 1e-3)], model, {})
    with pytest.raises(ValueError, match="3 values for 2 layers"):
        Problem([NodeCost("a", [1, 2, 3])], model, {})
    p = Problem([NodeCost("a", 1e-3)], model, {})
    with pytest.raises(ValueError, match="no link cost"):
        plan(p)
    with pytest.raises(ValueError, match="strategy"):
        plan(p, strategy="magic")
    with pytest.raises(ValueError, match="contiguously"):
        p.evaluate([Stage("a", 1, 2)])


def _standby_oracle(problem: Problem, stages: list[Stage]) -> tuple[int, float]:
    """(stages covered, total cost) of the best standby assignment, by enumerating every one."""
    index = {n.name: j for j, n in enumerate(problem.nodes)}
    best = (0, 0.0)
    for choice in itertools.product([-1, *range(len(problem.nodes))], repeat=len(stages)):
        used = [0.0] * len(problem.nodes)
        for st in stages:
            used[index[st.node]] += problem.stage_need(st.start, st.end)
        ok, cost = True, 0.0
        for j, st in zip(choice, stages, strict=True):
            if j < 0:
                continue
            if problem.nodes[j].local or problem.nodes[j].name == st.node:
                ok = False
                break
            used[j] += problem.stage_need(st.start, st.end)
            cost += standby_cost(problem, j, st)
        if not ok or any(u > problem.nodes[j].memory for j, u in enumerate(used)):
            continue
        covered = sum(j >= 0 for j in choice)
        if (covered, -cost) > (best[0], -best[1]):
            best = (covered, cost)
    return best


def test_standbys_respect_memory_and_match_brute_force():
    rng = random.Random(11)
    checked = 0
    for _ in range(150):
        problem = random_problem(rng, local=False)
        try:
            chosen = plan(problem, "latency", "auto")
        except InfeasiblePlan:
            continue
        spare = place_standbys(problem, chosen.stages, replicas=1)
        assert len(spare) == len(chosen.stages)
        used = {n.name: 0.0 for n in problem.nodes}
        for st in chosen.stages:
            used[st.node] += problem.stage_need(st.start, st.end)
        cost = 0.0
        index = {n.name: j for j, n in enumerate(problem.nodes)}
        for st, sb in zip(chosen.stages, spare, strict=True):
            if sb is None:
                continue
            assert (sb.start, sb.end) == (st.start, st.end) and sb.node != st.node
            used[sb.node] += problem.stage_need(sb.start, sb.end)
            cost += standby_cost(problem, index[sb.node], sb)
        assert all(used[n.name] <= n.memory for n in problem.nodes)
        covered, best_cost = _standby_oracle(problem, chosen.stages)
        assert sum(sb is not None for sb in spare) == covered
        assert cost == pytest.approx(best_cost, rel=1e-9, abs=1e-12)
        checked += covered > 0
    assert checked >= 20  # enough instances where a standby fits at all


def test_no_standbys_without_replicas_or_room():
    nodes = [NodeCost("a", 1e-3, memory=10 * MB), NodeCost("b", 1e-3, memory=10 * MB)]
    model = ModelCost(n_layers=2, layer_bytes=6 * MB)
    links = {(GATEWAY, "a"): Link(1e-3, 1e8), (GATEWAY, "b"): Link(1e-3, 1e8)}
    problem = Problem(nodes, model, links)
    chosen = plan(problem)
    assert place_standbys(problem, chosen.stages, replicas=0) == [None] * len(chosen.stages)
    assert place_standbys(problem, chosen.stages, replicas=1) == [None, None]  # 6 + 6 MB > 10 MB
    roomy = Problem([NodeCost("a", 1e-3), NodeCost("b", 1e-3)], model, links)
    one = plan(roomy, strategy="single")
    assert place_standbys(roomy, one.stages, 1)[0].node != one.stages[0].node


def test_kv_cache_of_a_full_context_is_reserved_beside_the_weights():
    """The nodes count KV caches in their ceiling: a stage needs its weights plus its layers' KV cache for
    one full context. 4 layers of 2 MB fit one 10 MB node by weights alone, not with 1 MB of KV each."""
    links = {(GATEWAY, "a"): Link(1e-3, 1e8), (GATEWAY, "b"): Link(1e-3, 1e8)}
    nodes = [NodeCost("a", 1e-3, memory=10 * MB), NodeCost("b", 1.2e-3, memory=10 * MB)]
    weights_only = Problem(nodes, ModelCost(n_layers=4, layer_bytes=2 * MB), links)
    assert len(plan(weights_only).stages) == 1
    with_kv = Problem(nodes, ModelCost(n_layers=4, layer_bytes=2 * MB, kv_bytes=1 * MB), links)
    chosen = plan(with_kv)
    assert len(chosen.stages) == 2 and chosen.stages == brute_force(with_kv).stages
    for r in chosen.breakdown:
        assert r.kv == (r.end - r.start) * MB and r.memory + r.kv <= 10 * MB and r.fits
    assert with_kv.evaluate([Stage("a", 0, 4)])[2][0].fits is False
    # a standby needs the same room: none fits next to a 2-layer stage (6 MB used, 6 MB more needed)
    assert place_standbys(with_kv, chosen.stages, 1) == [None, None]
    tight = Problem(nodes, ModelCost(n_layers=4, layer_bytes=2 * MB, kv_bytes=4 * MB), links)
    with pytest.raises(InfeasiblePlan, match="KV cache"):
        plan(tight)
