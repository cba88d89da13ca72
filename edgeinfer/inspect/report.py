"""What inspection sampling can detect: detection probability vs substitution fraction vs inspection rate.

A service that answers a fraction ``f`` of requests with a substitute fails each ID check with probability
``f x d`` (``d``: the chance that one ID exposes the substitute; 1 for IDs kept by ``generate_ids``, which
every required substitute answers differently). With ``r`` IDs per real request, the model test
(``stats.model_test``) sees ``r x N`` checks in ``N`` real requests (the stratified schedule).
``detection`` simulates that test (the real SPRT, seeded) to give the probability of a "substituted"
verdict within ``N`` requests; ``requests_to_verdict`` is Wald's expected number of checks divided by
``r``. ``plot_detection`` draws both, with measured points from ``benchmarks/bench_inspect.py`` when given.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from edgeinfer.inspect.stats import model_test

RATES = (0.001, 0.002, 0.004, 0.01, 0.05)
FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def detection(
    fraction: float, rate: float, n_requests: int, per_id: float = 1.0, trials: int = 400, seed: int = 0
) -> float:
    """Probability that the model test decides "substituted" within ``n_requests`` real requests."""
    rng = random.Random(seed)
    p_fail = fraction * per_id
    hits = 0
    for _ in range(trials):
        test = model_test()
        checks = int(n_requests * rate)  # the stratified schedule: one ID per 1/rate requests
        for _ in range(checks):
            if test.update(rng.random() < p_fail).decided:
                break
        hits += test.verdict.decision.value == "substituted"
    return hits / trials


def requests_to_verdict(fraction: float, rate: float, per_id: float = 1.0) -> float:
    """Expected real requests until the model test decides, at a substituted fraction ``fraction``."""
    return model_test().expected_n(min(1.0 - 1e-9, max(1e-9, fraction * per_id))) / rate


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_detection(
    out_dir: str | Path,
    n_requests: int = 10000,
    per_id: float = 1.0,
    measured: dict[str, Any] | None = None,
    rates: tuple[float, ...] = RATES,
    fractions: tuple[float, ...] = FRACTIONS,
) -> list[Path]:
    """Two PNGs: detection probability within ``n_requests`` and expected requests to a verdict, both vs the
    substituted fraction, one line per inspection rate. ``measured``: ``{"detection": [{"rate", "fraction",
    "probability"}], "requests": [{"rate", "fraction", "requests"}]}`` drawn as points."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    measured = measured or {}
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, rate in enumerate(rates):
        color = f"C{i}"
        probs = [detection(f, rate, n_requests, per_id, trials=200, seed=i) for f in fractions]
        ax.plot(fractions, probs, "-", color=color, label=f"rate {100 * rate:g} %")
        pts = [m for m in measured.get("detection", ()) if abs(m["rate"] - rate) < 1e-12]
        if pts:
            ax.plot([m["fraction"] for m in pts], [m["probability"] for m in pts], "o", color=color)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of requests answered by a substitute")
    ax.set_ylabel(f"P(substituted verdict within {n_requests} requests)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("detection (lines: simulated SPRT, dots: measured)", fontsize=10)
    fig.tight_layout()
    paths.append(out / "inspect-detection.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, rate in enumerate(rates):
        color = f"C{i}"
        ax.plot(
            fractions,
            [requests_to_verdict(f, rate, per_id) for f in fractions],
            "-",
            color=color,
            label=f"rate {100 * rate:g} %",
        )
        pts = [m for m in measured.get("requests", ()) if abs(m["rate"] - rate) < 1e-12]
        if pts:
            ax.plot([m["fraction"] for m in pts], [m["requests"] for m in pts], "o", color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of requests answered by a substitute")
    ax.set_ylabel("real requests to a verdict")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("cost of a verdict (lines: Wald's expectation, dots: measured)", fontsize=10)
    fig.tight_layout()
    paths.append(out / "inspect-requests.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
