"""The split benchmark's confidence interval of a median (distribution-free, order statistics)."""

from __future__ import annotations

import math
import random

from edgeinfer.split.bench import median_ci95


def test_median_ci95_uses_the_order_statistics_around_the_median():
    assert median_ci95([float(i) for i in range(1, 32)]) == (10.0, 22.0)  # n = 31: ranks 10 and 22
    rng = random.Random(0)
    xs = [rng.gauss(50, 5) for _ in range(101)]
    lo, hi = median_ci95(xs)
    s = sorted(xs)
    assert lo < s[50] < hi and lo >= s[0] and hi <= s[-1]
    assert all(math.isnan(v) for v in median_ci95([1.0, 2.0, 3.0]))  # too few for an interval
