"""Speculative verification through the pipeline (issue 14): nodes over real gRPC on loopback.

The last shard returns the output of every position of one Forward (``all_positions``), a Forward at a lower
``start_pos`` rolls the KV caches back, and the gateway verifies drafted tokens in one pass through every
stage: greedy output is token-identical to plain pipelined decoding.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import httpx
import openai
import pytest
import torch
import yaml

from edgeinfer.cluster.bringup import cluster_opener, load_cluster
from edgeinfer.cluster.client import NodeClient
from edgeinfer.cluster.config import ConfigError, load_config, parse_config, with_speculative
from edgeinfer.cluster.host import ShardHost
from edgeinfer.cluster.node import start
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import complete
from edgeinfer.engine.shard import Shard
from edgeinfer.engine.speculative import ReportsSpeculation, SpeculativeOptions
from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.process import ServerProcess

N_LAYERS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", arch="llama", n_layers=N_LAYERS)


@pytest.fixture(scope="module")
def node(tiny):
    host = ShardHost("s0", threads=1, memory_limit=None)
    server, port = start(host, "127.0.0.1:0")
    client = NodeClient(f"127.0.0.1:{port}", "s0", timeout=30)
    client.wait_ready(10)
    yield client
    client.close()
    server.stop(0)
    host.close()


def test_last_shard_returns_every_position_and_rolls_back(node, tiny):
    """Logits and top-1 of all T positions equal the whole model's; a Forward at a lower start_pos
    truncates the cache on every stage and continues as if the rejected positions were never fed."""
    a = node.load(str(tiny), 0, 2)
    b = node.load(str(tiny), 2, N_LAYERS)
    whole = Shard(tiny, 0, N_LAYERS, threads=1)
    prompt = torch.tensor([5, 17, 33, 2, 99])
    ref = whole.forward("r", prompt, all_logits=True)  # [5, vocab]

    def run(ids, pos, output, all_positions=True):
        h = node.forward(a.shard_id, "s", ids, pos, wire_dtype="f32").output
        return node.forward(b.shard_id, "s", h, pos, output, "f32", all_positions=all_positions).output

    logits = run(prompt, 0, "logits")
    assert logits.shape == (5, whole.vocab_size)
    assert torch.allclose(logits, ref, atol=1e-4)
    top1 = run(prompt, 0, "top1")  # same start_pos: the cache is truncated to 0 and recomputed
    assert top1.shape == (5, 2) and top1.dtype == torch.float32
    assert top1[:, 0].long().tolist() == ref.argmax(-1).tolist()
    assert torch.allclose(top1[:, 1], ref.max(-1).values, atol=1e-4)
    assert run(prompt, 0, "top1", all_positions=False).shape == (2,)  # the plain output is unchanged

    # a verify pass of 4 drafted positions, of which only the first 2 are kept
    drafted = torch.tensor([7, 8, 9, 10])
    run(drafted, 5, "top1")
    assert node.forward(a.shard_id, "s", torch.tensor([1]), 7, wire_dtype="f32").seq_len == 8
    whole.forward("r", drafted[:2])
    after = run(torch.tensor([1, 3]), 7, "logits")  # the caches hold [0, 7) again, then 2 new
    assert torch.allclose(after, whole.forward("r", torch.tensor([1, 3]), all_logits=True), atol=1e-4)
    node.drop("s")
    node.unload(a.shard_id)
    node.unload(b.shard_id)
    whole.close()


@pytest.mark.parametrize(
    ("doc", "mode", "draft_max"),
    [
        ({}, "off", 8),
        ({"speculative": False}, "off", 8),  # YAML's bare `off`
        ({"speculative": "ngram"}, "ngram", 8),
        ({"speculative": {"mode": "ngram", "draft_max": 4}}, "ngram", 4),
    ],
)
def test_yaml_speculative_options(doc, mode, draft_max):
    cfg = parse_config({"model": "qwen", "nodes": [{"address": "h:1"}]} | doc)
    assert (cfg.speculative.mode, cfg.speculative.draft_max) == (mode, draft_max)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("exit:4", "exit:K drafts with the model's own first K layers"),
        ({"mode": "ngram", "draft_max": 0}, "speculative.draft_max"),
        ({"mode": "lookahead"}, "speculative.mode"),
        ({"mod": "ngram"}, "unknown key 'speculative.mod'"),
    ],
)
def test_yaml_speculative_errors_name_the_key(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"model": "qwen", "nodes": [{"address": "h:1"}], "speculative": value})


class Loopback:
    """Node servers on loopback in this process (restartable: ``kill`` stops one's gRPC server)."""

    def __init__(self, n: int):
        self.hosts = [ShardHost(f"n{i}", threads=1, memory_limit=None) for i in range(n)]
        self.servers: list = [None] * n
        self.ports = [0] * n
        for i in range(n):
            self.servers[i], self.ports[i] = start(self.hosts[i], "127.0.0.1:0")

    def nodes(self, limit: int | None = None) -> list[dict]:
        extra = {"memory_limit": limit} if limit else {}
        return [{"name": f"n{i}", "address": f"127.0.0.1:{p}"} | extra for i, p in enumerate(self.ports)]

    def kill(self, name: str) -> None:
        self.servers[int(name.removeprefix("n"))].stop(0)

    def close(self) -> None:
        for server, host in zip(self.servers, self.hosts, strict=True):
            server.stop(0)
            host.close()


@pytest.fixture(scope="module")
def loopback():
    nodes = Loopback(3)
    yield nodes
    nodes.close()


def _backend(tmp_path: Path, model: Path, nodes: list[dict], speculative, **extra):
    doc = {"model": str(model), "nodes": nodes, "wire_dtype": "f32", "speculative": speculative} | extra
    path = tmp_path / f"c-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_cluster(load_config(path))


def _tokens(backend, prompt: str, n: int, **params) -> list[int]:
    gen = backend.generate_tokens(backend.tokenize(prompt), SamplingParams(**({"temperature": 0.0} | params)))
    try:
        return list(itertools.islice(gen, n))
    finally:
        gen.close()


PROMPTS = ("def add(a, b): return a + b", "hello world hello world", "the ship sails")
STAGES = [
    {"node": "n0", "layers": [0, 2]},
    {"node": "n1", "layers": [2, 3]},
    {"node": "n2", "layers": [3, 4]},
]


def test_greedy_speculative_pipeline_equals_plain_pipelined_decoding(loopback, tiny, tmp_path):
    """Three stages; drafts are accepted and rejected (rolled back on every node), and every token equals
    the plain pipeline's."""
    planner = {"stages": STAGES}
    plain = _backend(tmp_path, tiny, loopback.nodes(), "off", planner=planner)
    spec = _backend(tmp_path, tiny, loopback.nodes(), {"mode": "ngram", "draft_max": 6}, planner=planner)
    try:
        for prompt in PROMPTS:
            assert _tokens(spec, prompt, 40) == _tokens(plain, prompt, 40), prompt
        s = spec.spec_stats
        assert s.accepted > 0 and s.drafted > s.accepted  # both kept and rolled-back drafts
        assert s.emitted == s.passes + s.accepted and s.tokens_per_pass > 1.0
        assert plain.spec_stats.passes == 0
        assert isinstance(spec, ReportsSpeculation)  # its counters appear on the server's /metrics
        assert all(h.sequence_count() == 0 for h in loopback.hosts)  # every sequence dropped at the end
    finally:
        spec.close()
        plain.close()


def test_sampled_speculative_pipeline_verifies_logits_and_is_seeded(loopback, tiny, tmp_path):
    """Sampling verifies against the logits of every position (the acceptance rule of engine.speculative,
    whose distribution test lives in tests/engine); the same seed gives the same stream."""
    spec = _backend(tmp_path, tiny, loopback.nodes(), "ngram", planner={"stages": STAGES})
    try:
        runs = [_tokens(spec, PROMPTS[1], 32, temperature=0.8, seed=7) for _ in range(2)]
        assert runs[0] == runs[1] and len(runs[0]) == 32
        assert spec.spec_stats.drafted > 0
        assert all(0 <= t < spec.info.vocab_size for t in runs[0])
    finally:
        spec.close()


def test_warm_failover_mid_stream_replays_only_accepted_tokens(tiny, tmp_path):
    """A primary killed while drafts are being rolled back: its warm standby replays the stage's recorded
    inputs, which hold accepted positions only, and the stream equals the undisturbed plain one."""
    nodes = Loopback(3)
    whole = Shard(tiny, 0, N_LAYERS, threads=1)
    share = int(whole.weight_bytes * 0.6) + (256 << 10)  # two nodes needed, the third holds a standby
    whole.close()
    extra = {
        "ctx_size": 256,
        "planner": {"replicas": 1},
        "failover": {"heartbeat": 0.2, "ban": 1.0, "max_ban": 4.0, "adapt": False},
    }
    try:
        plain = _backend(tmp_path, tiny, nodes.nodes(share), "off", **extra)
        reference = _tokens(plain, PROMPTS[0], 48)
        plain.close()
        spec = _backend(tmp_path, tiny, nodes.nodes(share), "ngram", **extra)
        try:
            covered = [i for i, sb in enumerate(spec.standbys) if sb is not None]
            assert covered, f"no standby placed: {spec.plan.describe()}"
            victim = spec.stages[covered[0]].name
            gen = spec.generate_tokens(spec.tokenize(PROMPTS[0]), SamplingParams(temperature=0.0))
            try:
                got = list(itertools.islice(gen, 12))
                assert spec.spec_stats.drafted > spec.spec_stats.accepted  # rejected drafts were fed
                nodes.kill(victim)
                got += list(itertools.islice(gen, 48 - 12))
            finally:
                gen.close()
            assert got == reference
            assert spec.stats.failovers == 1 and spec.stats.replayed_tokens > 0
        finally:
            spec.close()
    finally:
        nodes.close()


def test_serve_speculative_flag_overrides_the_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "qwen", "nodes": [{"address": "h:1"}], "speculative": "off"}))
    cfg = with_speculative(load_config(path), "ngram", 5)
    assert (cfg.speculative.mode, cfg.speculative.draft_max) == ("ngram", 5)
    assert cfg.nodes == load_config(path).nodes
    with pytest.raises(ConfigError, match=r"--speculative: speculative\.mode: exit:K drafts"):
        cluster_opener(path, SpeculativeOptions.parse("exit:3"))
    name, _ = cluster_opener(path, SpeculativeOptions.parse("off"))  # off keeps the YAML's
    assert name


def test_served_cluster_streams_plain_tokens_and_reports_acceptance(loopback, tiny, tmp_path):
    """`serve --cluster` with speculation, through the openai client: the text of the plain pipeline,
    and the acceptance counters on /metrics."""
    planner = {"stages": STAGES}
    plain = _backend(tmp_path, tiny, loopback.nodes(), "off", planner=planner)
    try:
        prompt = plain.tokenize(PROMPTS[1])
        reference = complete(plain, prompt, SamplingParams(temperature=0.0, max_tokens=32)).text
    finally:
        plain.close()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"model": str(tiny), "nodes": loopback.nodes(), "wire_dtype": "f32"} | {"planner": planner}
        )
    )
    with ServerProcess(
        ["--cluster", str(cfg), "--speculative", "ngram", "--draft-max", "4"], log=tmp_path / "gw.log"
    ) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        chunks = client.completions.create(
            model="tiny", prompt=PROMPTS[1], max_tokens=32, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices) == reference
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
    rate = [ln for ln in metrics.splitlines() if ln.startswith("edgeinfer:spec_decode_draft_acceptance_rate")]
    assert rate and 0.0 < float(rate[0].split()[-1]) <= 1.0, rate
