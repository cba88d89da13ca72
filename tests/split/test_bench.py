"""The split benchmark's results print through the bench harness's tables (the recorded run as input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeinfer.split.bench import RateResult, SplitBenchResult, tables

BENCH = Path(__file__).resolve().parents[2] / "docs" / "bench"
RECORDED = BENCH / "split_bench.json"


def test_recorded_split_bench_renders_as_markdown_tables() -> None:
    raw = json.loads(RECORDED.read_text())
    result = SplitBenchResult.from_dict(raw)
    assert isinstance(result.rates[0], RateResult) and result.rates[0].splits[0].split == 0
    rates, exits, wire = tables(result)[:3]
    assert [r[0] for r in rates.rows] == [r["rate"] for r in raw["rates"]]
    assert len(exits.rows) == len(raw["exits"]) + len(raw["cascades"])
    assert len(wire.rows) == len(raw["bytes"]) and "f16+lz4" in wire.header
    text = "\n".join(line for t in (rates, exits, wire) for line in t.markdown("##"))
    assert "| rate | estimate Mbit/s | device-only ms | edge-only ms | best split |" in text
    assert "| cascade (entropy) |" in text and "| 0 | (input) | 16,384 |" in text


def _known(new, old):
    """``new`` restricted to the keys ``old`` has, recursively (fields added since ``old`` was recorded)."""
    if isinstance(old, dict):
        return {k: _known(new[k], v) for k, v in old.items()}
    if isinstance(old, list):
        return [_known(n, o) for n, o in zip(new, old, strict=True)]
    return new


@pytest.mark.parametrize("path", sorted(BENCH.glob("split_bench*.json")), ids=lambda p: p.name)
def test_every_recorded_run_round_trips_through_the_dataclasses(path: Path) -> None:
    """The typed result reads every recorded run (older ones lack newer fields) and writes it back with
    the same keys and values (JSON turns int keys into strings, tuples into lists)."""
    raw = json.loads(path.read_text())
    result = SplitBenchResult.from_dict(raw)
    again = json.loads(json.dumps(result.to_dict()))
    for key in ("n_layers", "exits", "cascades", "bytes"):
        assert again[key] == raw[key], key
    for old, new in zip(raw["rates"], again["rates"], strict=True):
        assert json.dumps(_known(new, old), sort_keys=True) == json.dumps(old, sort_keys=True)
    assert json.dumps(SplitBenchResult.from_dict(again).to_dict()) == json.dumps(result.to_dict())
