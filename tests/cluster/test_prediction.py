"""On the test-bed, the planner's predicted per-token latency is within 25 % of the measured one
(Gemma 3 270M split over two namespaced nodes behind 100 Mbit/s links).

The machine's cores are shared with whatever else runs, so a load burst between profiling (when the gateway
starts) and generating can skew one comparison: the test makes up to three attempts, each on a fresh
test-bed with freshly profiled nodes, and fails only if none is within 25 % (all attempts in the message).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from edgeinfer.cluster.bringup import load_cluster
from edgeinfer.cluster.config import load_config
from edgeinfer.cluster.testbed import start_nodes
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import complete
from edgeinfer.testbed import netns

REASON = netns.available()
ATTEMPTS = 3
TOLERANCE = 0.25
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}"),
    pytest.mark.timeout(ATTEMPTS * 200),
]


def _predicted_and_measured(model: Path, work: Path) -> tuple[float, float]:
    with netns.Testbed(2, rate="100mbit") as tb:
        specs = start_nodes(tb, threads=1, log_dir=work)
        doc = {
            "model": str(model),
            "nodes": [{"name": s.name, "address": s.address} for s in specs],
            "planner": {"stages": [{"node": "n0", "layers": [0, 9]}, {"node": "n1", "layers": [9, 18]}]},
        }
        cfg = work / "cluster.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        backend = load_cluster(load_config(cfg))
        try:
            predicted = backend.plan.latency
            params = SamplingParams(temperature=0.0, max_tokens=40)
            complete(backend, backend.tokenize("Once upon a time"), params)  # warm-up
            result = complete(backend, backend.tokenize("The capital of France is"), params)
        finally:
            backend.close()
    assert len(result.token_times) >= 10
    return predicted, statistics.median(result.token_times)


def test_predicted_latency_within_25_percent_of_measured(gemma_path: Path, tmp_path: Path):
    tries = []
    for i in range(ATTEMPTS):
        work = tmp_path / f"try{i}"
        work.mkdir()
        predicted, measured = _predicted_and_measured(gemma_path, work)
        tries.append(f"predicted {predicted * 1e3:.1f} ms, measured {measured * 1e3:.1f} ms")
        if abs(predicted - measured) / measured <= TOLERANCE:
            return
    pytest.fail(f"no attempt within {TOLERANCE:.0%}: " + "; ".join(tries))
