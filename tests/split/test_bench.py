"""The split benchmark's results print through the bench harness's tables (the recorded run as input)."""

from __future__ import annotations

import json
from pathlib import Path

from edgeinfer.split.bench import tables

RECORDED = Path(__file__).resolve().parents[2] / "docs" / "bench" / "split_bench.json"


def test_recorded_split_bench_renders_as_markdown_tables() -> None:
    result = json.loads(RECORDED.read_text())
    rates, exits, wire = tables(result)
    assert [r[0] for r in rates.rows] == [r["rate"] for r in result["rates"]]
    assert len(exits.rows) == len(result["exits"]) + len(result["cascades"])
    assert len(wire.rows) == len(result["bytes"]) and "f16+lz4" in wire.header
    text = "\n".join(line for t in (rates, exits, wire) for line in t.markdown("##"))
    assert "| rate | estimate Mbit/s | device-only ms | edge-only ms | best split |" in text
    assert "| cascade (entropy) |" in text and "| 0 | (input) | 16,384 |" in text
