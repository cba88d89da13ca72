"""A shard holds only its share of the weights: resident memory of layers [0, n/2) against the whole model.

Each load runs in a fresh subprocess; the figures are the resident set (VmRSS, and its anonymous part RssAnon,
i.e. without the page cache of the memory-mapped file) after loading and one forward pass, minus the same
after ``import torch`` and the engine, so that the interpreter and libraries do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.engine.shard import layer_count

PROBE = """
import json, sys, torch
from edgeinfer.engine.shard import Shard

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

base, anon = status("VmRSS"), status("RssAnon")
shard = Shard(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), threads=1, max_seq_len=512)
shard.forward("probe", torch.tensor([1, 2, 3]) if shard.is_first else torch.zeros(3, shard.hidden_size))
print(json.dumps({
    "rss": status("VmRSS") - base,  # includes the touched pages of the memory-mapped GGUF
    "anon": status("RssAnon") - anon,  # the engine's own memory: weights, caches, buffers
    "peak": status("VmHWM"),
    "weight_bytes": shard.weight_bytes,
}))
"""


def resident(path: Path, start: int, end: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(start), str(end)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_half_the_layers_take_well_under_the_whole_models_memory(qwen_path, record_property):
    n = layer_count(qwen_path)
    half = resident(qwen_path, 0, n // 2)
    full = resident(qwen_path, 0, n)
    report = {"layers": n, "half": half, "full": full, "rss_ratio": round(half["rss"] / full["rss"], 3)}
    print(f"\nqwen memory: {report}")
    record_property("memory", report)
    # [0, n/2) has half the blocks and no LM head (the embeddings stay in the memory-mapped file)
    assert half["weight_bytes"] < 0.45 * full["weight_bytes"]
    assert half["rss"] < 0.6 * full["rss"] and half["anon"] < 0.6 * full["anon"]
    assert full["anon"] > 0.8 * full["weight_bytes"]  # the measurement does see the weights
