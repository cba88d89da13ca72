"""Pipelines across test-bed namespaces over real gRPC, served by the real gateway to the openai client.

Nodes run in network namespaces joined by tbf-limited veth links; each node may hold only ~60 % of the
model, so one node cannot serve it and the planner has to split it.

Identity with the single-node engine is exact with ``wire_dtype: f32``. With the default f16 wire the tokens
equal those of an in-process chain that rounds the hidden states to f16 at the same cuts: rounding is the only
difference the transport makes (and it can flip near-tie greedy choices, see docs/cluster.md).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
import yaml

from edgeinfer.cluster import wire
from edgeinfer.cluster.bringup import load_cluster
from edgeinfer.cluster.client import NodeClient
from edgeinfer.cluster.config import load_config
from edgeinfer.cluster.planner import InfeasiblePlan
from edgeinfer.cluster.testbed import start_nodes
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import complete
from edgeinfer.engine.shard import Shard
from edgeinfer.engine.shard_backend import ShardBackend
from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.process import ServerProcess
from edgeinfer.testbed import netns

REASON = netns.available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=f"test-bed: {REASON}"),
    pytest.mark.timeout(300),  # per test, incl. building the test-bed; fixtures tear it down on timeout
]
PROMPT = "the ship sails"
N_TOKENS = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", arch="llama", n_layers=6)


@pytest.fixture(scope="module")
def reference(tiny) -> str:
    """Greedy text of the single-node shard engine."""
    backend = ShardBackend(tiny, threads=1)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=N_TOKENS)
        return complete(backend, backend.tokenize(PROMPT), params).text
    finally:
        backend.close()


@pytest.fixture(scope="module")
def bed(tiny, tmp_path_factory) -> Iterator[tuple[netns.Testbed, list, int]]:
    whole = Shard(tiny, 0, 6, threads=1)
    limit = int(whole.weight_bytes * 0.6)  # the planner's share of each node (the YAML's memory_limit) ...
    whole.close()
    logs = tmp_path_factory.mktemp("nodes")
    with netns.Testbed(3, rate="100mbit") as tb:
        # ... and the node's own ceiling, which also holds the KV caches
        specs = start_nodes(tb, threads=1, memory_limit=str(limit + (256 << 10)), log_dir=logs)
        yield tb, specs, limit


def _yaml(path: Path, model: Path, specs, **extra) -> Path:
    whole = Shard(model, 0, 6, threads=1)
    share = int(whole.weight_bytes * 0.6)  # as in `bed`
    whole.close()
    # the planner reserves a full context's KV cache per stage: 3 layers x 64 KiB at ctx_size 256
    nodes = [{"name": s.name, "address": s.address, "memory_limit": share + (192 << 10)} for s in specs]
    doc = {"model": str(model), "nodes": nodes, "ctx_size": 256} | extra
    path.write_text(yaml.safe_dump(doc))
    return path


def _loaded_nodes(specs) -> set[str]:
    used = set()
    for s in specs:
        c = NodeClient(s.address, s.name, timeout=5)
        if c.capabilities().shards:
            used.add(s.name)
        c.close()
    return used


def _stream(url: str, model: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    chunks = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, stream=True
    )
    return "".join(c.choices[0].text for c in chunks if c.choices)


def test_two_node_pipeline_streams_the_single_node_tokens(bed, tiny, reference, tmp_path):
    _, specs, _ = bed
    cfg = _yaml(tmp_path / "two.yaml", tiny, specs[:2], wire_dtype="f32")
    with ServerProcess(["--cluster", str(cfg)], log=tmp_path / "gw.log") as srv:
        assert _loaded_nodes(specs) == {"n0", "n1"}  # neither node alone may hold the model
        assert _stream(srv.url, "tiny") == reference
    assert _loaded_nodes(specs) == set()  # the gateway unloads on shutdown


def test_three_node_pipeline_streams_the_single_node_tokens(bed, tiny, reference, tmp_path):
    _, specs, _ = bed
    stages = [
        {"node": "n0", "layers": [0, 2]},
        {"node": "n1", "layers": [2, 4]},
        {"node": "n2", "layers": [4, 6]},
    ]
    cfg = _yaml(tmp_path / "three.yaml", tiny, specs, planner={"stages": stages}, wire_dtype="f32")
    with ServerProcess(["--cluster", str(cfg)], log=tmp_path / "gw.log") as srv:
        assert _loaded_nodes(specs) == {"n0", "n1", "n2"}
        assert _stream(srv.url, "tiny") == reference


def test_device_edge_runs_first_layers_on_the_gateway(bed, tiny, reference, tmp_path):
    _, specs, _ = bed
    planner = {"strategy": "device-edge", "local": True}
    cfg = _yaml(tmp_path / "dev.yaml", tiny, specs[:1], planner=planner, wire_dtype="f32")
    backend = load_cluster(load_config(cfg))
    try:
        assert backend.plan.stages[0].node == "local" and len(backend.plan.stages) == 2
        text = complete(
            backend, backend.tokenize(PROMPT), SamplingParams(temperature=0.0, max_tokens=N_TOKENS)
        )
        assert text.text == reference
    finally:
        backend.close()


def test_f16_wire_only_rounds(bed, tiny, tmp_path):
    """Default f16 wire, 3 stages: the tokens of an in-process chain rounding through the same codec."""
    _, specs, _ = bed
    stages = [
        {"node": "n0", "layers": [0, 2]},
        {"node": "n1", "layers": [2, 4]},
        {"node": "n2", "layers": [4, 6]},
    ]
    backend = load_cluster(load_config(_yaml(tmp_path / "f16.yaml", tiny, specs, planner={"stages": stages})))
    try:
        ids = backend.tokenize(PROMPT)
        got = list(itertools.islice(backend.generate_tokens(ids, SamplingParams(temperature=0.0)), N_TOKENS))
    finally:
        backend.close()
    shards = [Shard(tiny, a, b, threads=1) for a, b in ((0, 2), (2, 4), (4, 6))]
    x, want = torch.tensor(ids), []
    for _ in range(N_TOKENS):
        for s in shards:
            x = s.forward("r", x)
            if not s.is_last:
                x = wire.decode(wire.encode(x, "f16"))
        want.append(int(torch.argmax(x)))
        x = torch.tensor([want[-1]])
    assert got == want


def test_cluster_too_small_is_refused_clearly(bed, tiny, tmp_path):
    _, specs, limit = bed
    cfg = _yaml(tmp_path / "one.yaml", tiny, specs[:1])  # one node holds only 60 % of the model
    with pytest.raises(InfeasiblePlan, match=r"needs .* GiB for weights but the 1 usable node\(s\)"):
        load_cluster(load_config(cfg))
    assert _loaded_nodes(specs) == set()


def test_node_failure_is_a_clear_error_not_a_hang(bed, tiny, tmp_path):
    tb, specs, _ = bed
    cfg = _yaml(tmp_path / "two.yaml", tiny, specs[:2], rpc_timeout=3)
    backend = load_cluster(load_config(cfg))
    try:
        tb.cut(1)
        with pytest.raises(Exception, match=r"node n1 .*failed during forward"):
            complete(backend, backend.tokenize(PROMPT), SamplingParams(temperature=0.0, max_tokens=4))
    finally:
        tb.restore(1)
        backend.close()


PROMPTS = ["the ship sails", "a cat sat on the", "one two three four", "the crew sings to the sea"]


def test_concurrent_streams_are_in_flight_together_and_each_equals_its_solo_tokens(bed, tiny, tmp_path):
    """4 greedy streams at once through a 2-node pipeline (``--parallel 4``): each yields exactly the tokens
    the single-node engine gives its prompt alone, and they were generated side by side (every stream
    started before any ended), not one after the other."""
    _, specs, _ = bed
    backend = ShardBackend(tiny, threads=1)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=N_TOKENS)
        solo = [complete(backend, backend.tokenize(p), params).text for p in PROMPTS]
    finally:
        backend.close()
    cfg = _yaml(tmp_path / "two.yaml", tiny, specs[:2], wire_dtype="f32")
    with ServerProcess(["--cluster", str(cfg), "--parallel", "4"], log=tmp_path / "gw.log") as srv:
        got: dict[int, str] = {}
        spans: dict[int, tuple[float, float]] = {}
        go = threading.Barrier(len(PROMPTS))

        def one(i: int) -> None:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
            go.wait()
            chunks = client.completions.create(
                model="tiny", prompt=PROMPTS[i], max_tokens=N_TOKENS, temperature=0, stream=True
            )
            text, first = [], None
            for c in chunks:
                if c.choices and c.choices[0].text:
                    first = first or time.monotonic()
                    text.append(c.choices[0].text)
            spans[i] = (first or time.monotonic(), time.monotonic())
            got[i] = "".join(text)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [got.get(i) for i in range(len(PROMPTS))] == solo
        assert max(a for a, _ in spans.values()) < min(b for _, b in spans.values()), spans
        metrics = httpx.get(srv.url + "/metrics", timeout=5).text
        assert 'edgeinfer:num_requests_running{model_name="tiny"} 0.0' in metrics
