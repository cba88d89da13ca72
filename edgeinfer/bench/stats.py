"""Small statistics used by every benchmark: mean ± std, percentiles, the Wilson score interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two samples)."""
    if not xs:
        raise ValueError("mean_std of no samples")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 100]."""
    if not xs:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Percentiles:
    """mean, standard deviation, sample count and the 50th / 90th / 99th percentiles of a sample."""

    mean: float
    std: float
    n: float
    p50: float
    p90: float
    p99: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Percentiles:
        return cls(**{k: float(d[k]) for k in ("mean", "std", "n", "p50", "p90", "p99")})


def summary(xs: Sequence[float]) -> Percentiles | None:
    """mean, std and the 50th / 90th / 99th percentiles, or None for no samples."""
    if not xs:
        return None
    m, sd = mean_std(xs)
    return Percentiles(m, sd, float(len(xs)), percentile(xs, 50), percentile(xs, 90), percentile(xs, 99))


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    if n <= 0:
        raise ValueError("wilson interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)  # exact at the edges, not 0.9999...
    return lo, hi
