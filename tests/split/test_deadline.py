"""The deadline guard: the planner's budget is the deadline shrunk by the recent tail of measured ÷
predicted latency (conservative until enough requests were seen)."""

from __future__ import annotations

import pytest

from edgeinfer.split.deadline import DeadlineGuard


def test_no_data_plans_against_the_deadline_itself():
    g = DeadlineGuard()
    assert g.stretch == 1.0 and g.budget(50.0) == 50.0


def test_few_samples_use_the_worst_ratio_seen_and_never_stretch_below_one():
    g = DeadlineGuard(min_samples=20)
    g.observe(8.0, 10.0)
    assert g.stretch == 1.0  # faster than predicted: not trusted before enough samples
    g.observe(15.0, 10.0)
    g.observe(11.0, 10.0)
    assert g.stretch == pytest.approx(1.5) and g.budget(30.0) == pytest.approx(20.0)


def test_the_budget_follows_the_99th_percentile_of_a_full_window():
    g = DeadlineGuard(quantile=0.99, window=200, min_samples=20)
    for i in range(200):
        g.observe(10.0 * (1.0 + i / 100), 10.0)  # ratios 1.00 .. 2.99
    assert g.stretch == pytest.approx(2.97)  # nearest rank: the 198th of 200 (1 + 197/100)
    assert g.budget(29.7) == pytest.approx(10.0)
    for _ in range(200):  # the machine calms down: the window forgets the slow requests
        g.observe(9.0, 10.0)
    assert g.stretch == pytest.approx(0.9) and g.budget(18.0) == pytest.approx(20.0)


def test_bad_samples_are_ignored_and_a_bad_quantile_refused():
    g = DeadlineGuard()
    for measured, predicted in ((5.0, 0.0), (0.0, 5.0), (float("inf"), 1.0)):
        g.observe(measured, predicted)
    assert not g.ratios
    with pytest.raises(ValueError, match="quantile"):
        DeadlineGuard(quantile=0.0)


def test_an_option_whose_own_tail_misses_the_deadline_is_excluded_until_its_samples_age_out():
    from edgeinfer.split.deadline import TailTracker

    t = TailTracker(quantile=0.99, window_s=30.0, min_samples=20)
    fast, slow = ("exit1", 36), ("final", 10)
    for i in range(19):
        t.observe(fast, 10.0, now=i)
        t.observe(slow, 20.0, now=i)
    assert t.over(25.0, now=19) == frozenset()  # 19 answers: not enough to judge
    t.observe(fast, 10.0, now=19)
    t.observe(slow, 26.0, now=19)  # the slowest 1 % of 20 answers is the worst one
    assert t.tail_ms(slow, now=19) == 26.0 and t.tail_ms(fast, now=19) == 10.0
    assert t.over(25.0, now=19) == {slow}
    assert t.over(30.0, now=19) == frozenset()
    assert t.over(25.0, now=40) == frozenset()  # older than the window: tried again


def test_the_planner_skips_excluded_options_as_the_oracle_does():
    from edgeinfer.split.planner import LinkEstimate, PathCosts, exhaustive, plan_split

    paths = [
        PathCosts("exit1", (1.0, 1.0), (0.5, 0.5), (1000, 100, 10), accuracy=0.9),
        PathCosts("final", (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), (1000, 100, 100, 10), accuracy=0.95),
    ]
    link = LinkEstimate(8e6, 0.001)
    best = plan_split(paths, link, deadline_ms=10.0)
    assert best.exit == "final"
    skip = frozenset({(best.exit, best.split)})
    again = plan_split(paths, link, deadline_ms=10.0, excluded=skip)
    assert (again.exit, again.split) != (best.exit, best.split)
    assert again == exhaustive(paths, link, deadline_ms=10.0, excluded=skip)
    every = frozenset((p.exit, s) for p in paths for s in range(p.n + 1))
    nothing = plan_split(paths, link, 10.0, excluded=every)
    assert nothing.feasible is False and nothing == exhaustive(paths, link, 10.0, excluded=every)
    assert exhaustive(paths, link, 0.1, excluded=skip) == plan_split(paths, link, 0.1, excluded=skip)
