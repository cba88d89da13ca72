"""On the test-bed, the planner's predicted per-token latency is within 25 % of the measured one
(Gemma 3 270M split over two namespaced nodes behind 100 Mbit/s links)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from edgeinfer.cluster.gateway import load_cluster
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import complete
from edgeinfer.testbed import netns
from edgeinfer.testbed.cluster import start_nodes

REASON = netns.available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}"),
]


def test_predicted_latency_within_25_percent_of_measured(gemma_path: Path, tmp_path: Path):
    with netns.Testbed(2, rate="100mbit") as tb:
        specs = start_nodes(tb, threads=1, log_dir=tmp_path)
        doc = {
            "model": str(gemma_path),
            "nodes": [{"name": s.name, "address": s.address} for s in specs],
            "planner": {"stages": [{"node": "n0", "layers": [0, 9]}, {"node": "n1", "layers": [9, 18]}]},
        }
        cfg = tmp_path / "cluster.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        backend = load_cluster(cfg)
        try:
            predicted = backend.plan.latency
            params = SamplingParams(temperature=0.0, max_tokens=40)
            complete(backend, backend.tokenize("Once upon a time"), params)  # warm-up
            result = complete(backend, backend.tokenize("The capital of France is"), params)
        finally:
            backend.close()
    measured = statistics.median(result.token_times)
    assert len(result.token_times) >= 10
    assert abs(predicted - measured) / measured <= 0.25, (
        f"predicted {predicted * 1e3:.1f} ms, measured {measured * 1e3:.1f} ms"
    )
