"""The split solver equals exhaustive search on generated chains, for every objective and deadline."""

from __future__ import annotations

import random

import pytest

from edgeinfer.split.planner import LinkEstimate, PathCosts, evaluate, exhaustive, plan_split
from edgeinfer.split.profile import PowerModel


def _chain(rng: random.Random, name: str, n: int, acc: float) -> PathCosts:
    return PathCosts(
        name,
        tuple(rng.uniform(0.01, 5.0) for _ in range(n)),
        tuple(rng.uniform(0.001, 0.5) for _ in range(n)),
        tuple(rng.choice([64, 500, 2_000, 20_000, 200_000]) for _ in range(n + 1)),
        acc,
        reply_bytes=rng.randint(0, 200),
    )


@pytest.mark.parametrize("seed", range(40))
def test_plan_equals_exhaustive_search(seed):
    rng = random.Random(seed)
    paths = [
        _chain(rng, f"e{i}", rng.randint(1, 12), rng.uniform(0.5, 1.0)) for i in range(rng.randint(1, 4))
    ]
    link = LinkEstimate(rng.choice([1e5, 1e6, 2e7, 1e9]), rng.uniform(0, 0.02))
    power = PowerModel(rng.uniform(0.5, 5), rng.uniform(0.5, 3), rng.uniform(0.1, 2))
    for objective in ("latency", "energy"):
        for deadline in (None, rng.uniform(1, 40), 0.0001):
            got = plan_split(paths, link, deadline, objective, power)
            want = exhaustive(paths, link, deadline, objective, power)
            assert (got.exit, got.split, got.feasible) == (want.exit, want.split, want.feasible), (
                objective,
                deadline,
            )
            assert got.total_ms == pytest.approx(want.total_ms)
            assert got.energy_j == pytest.approx(want.energy_j)


def test_cost_model_ends():
    p = PathCosts("final", (2.0, 3.0), (0.2, 0.3), (1000, 500, 40), 0.9, reply_bytes=60)
    link = LinkEstimate(8e6, 0.001)  # 1 MB/s
    dev = evaluate(p, 2, link)
    assert (dev.where, dev.total_ms, dev.wire_bytes) == ("device-only", 5.0, 0)
    edge = evaluate(p, 0, link)
    assert edge.where == "edge-only" and edge.transfer_ms == pytest.approx(1 + 1.06)
    assert edge.total_ms == pytest.approx(2.06 + 0.5)


def test_bandwidth_moves_the_split():
    p = PathCosts("final", (0.2, 0.2, 5.0, 5.0), (0.1, 0.1, 0.5, 0.5), (5_000, 20_000, 500, 400, 40), 0.9)
    assert plan_split([p], LinkEstimate(1e9, 0.001)).split == 0  # fast link: ship the input
    assert plan_split([p], LinkEstimate(2e6, 0.001)).split == 2  # slow link: cut where the tensor is small
    assert plan_split([p], LinkEstimate(1e3, 0.001)).split == 4  # no link to speak of: stay on the device


def test_deadline_picks_the_most_accurate_exit_that_fits():
    early = PathCosts("early", (1.0,), (0.1,), (10_000, 40), 0.8)
    late = PathCosts("late", (1.0, 9.0), (0.1, 0.9), (10_000, 300, 40), 0.95)
    slow = LinkEstimate(1e5, 0.0)
    assert plan_split([early, late], slow, deadline_ms=5).exit == "early"
    assert plan_split([early, late], slow, deadline_ms=20).exit == "late"
    hopeless = plan_split([early, late], slow, deadline_ms=0.5)
    assert not hopeless.feasible and hopeless.exit == "early"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="objective"):
        plan_split([PathCosts("a", (1.0,), (1.0,), (1, 1))], LinkEstimate(1e6), objective="speed")
    with pytest.raises(ValueError, match="n\\+1 cut_bytes"):
        PathCosts("a", (1.0,), (1.0,), (1,))
    with pytest.raises(ValueError, match="bandwidth"):
        LinkEstimate(0)
