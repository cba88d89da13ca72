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
