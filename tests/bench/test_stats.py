"""Statistics helpers on inputs with known answers."""

from __future__ import annotations

import math

import pytest

from edgeinfer.bench.stats import mean_std, percentile, summary, wilson


def test_mean_std_sample_deviation() -> None:
    m, sd = mean_std([2, 4, 4, 4, 5, 5, 7, 9])
    assert m == 5
    assert sd == pytest.approx(math.sqrt(32 / 7))
    assert mean_std([3.0]) == (3.0, 0.0)


def test_percentile_interpolates_like_numpy() -> None:
    xs = [10, 20, 30, 40, 50]
    assert percentile(xs, 50) == 30
    assert percentile(xs, 90) == pytest.approx(46)
    assert percentile(xs, 99) == pytest.approx(49.6)
    assert percentile(list(reversed(xs)), 0) == 10
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_summary_fields() -> None:
    s = summary([1.0, 2.0, 3.0])
    assert s is not None and set(s.to_dict()) == {"mean", "std", "n", "p50", "p90", "p99"}
    assert (s.mean, s.n, s.p50, s.p90) == (2.0, 3.0, 2.0, pytest.approx(2.8))
    assert summary([]) is None


def test_wilson_known_values() -> None:
    lo, hi = wilson(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-4)
    with pytest.raises(ValueError):
        wilson(3, 2)
