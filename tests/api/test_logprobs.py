"""OpenAI's ``logprobs`` through the real server and the official client, on every backend.

Chat (``logprobs`` + ``top_logprobs``) and completions (legacy ``logprobs: int``), whole and streamed, from
the llama.cpp backend with one sequence (``--parallel 1``, llama.cpp's own generate loop) and with continuous
batching (the default), the shard engine, and a two-node pipeline on loopback. The backends compute the same
model with different kernels, so they agree on the top token and its log probability within a tolerance
wherever the model is decided (a clear margin between the two best tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import Delta, stream
from edgeinfer.process import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "qwen2.5-coder-0.5b-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
PROMPT = "def fibonacci(n):\n    "
TOL = 0.1  # nats: llama.cpp (ggml kernels, batched or not) vs the shard engine (its own kernels)
MARGIN = 0.5  # positions whose two best tokens are closer than this may differ between backends


def _serve(args: list[str], tmp: Path) -> Iterator[str]:
    with ServerProcess(["-m", MODEL, "-t", "2", "--ctx-size", "1024", *args], log=tmp / "serve.log") as srv:
        yield srv.url


@pytest.fixture(scope="module")
def single_url(tmp_path_factory) -> Iterator[str]:
    """llama.cpp, one sequence at a time: ``LlamaCppBackend.generate_tokens``."""
    yield from _serve(["--parallel", "1"], tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def shard_url(tmp_path_factory) -> Iterator[str]:
    yield from _serve(["--backend", "shard"], tmp_path_factory.mktemp("shard"))


@pytest.fixture(scope="module")
def urls(real_server: str, single_url: str, shard_url: str) -> dict[str, str]:
    # real_server: llama.cpp with the default --parallel (continuous batching, ``engine.llamacpp_batch``)
    return {"batched": real_server, "single": single_url, "shard": shard_url}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _check_distribution(token: str, logprob: float, top: list[tuple[str, float]], k: int) -> None:
    """Greedy: the sampled token is the best of the top list; the list is sorted and is a distribution."""
    assert len(top) == k
    values = [lp for _, lp in top]
    assert values == sorted(values, reverse=True)
    assert all(lp <= 0.0 for lp in values)
    assert sum(math.exp(lp) for lp in values) <= 1.0 + 1e-4
    assert top[0][0] == token and abs(top[0][1] - logprob) < 1e-6


def _chat(url: str, k: int = 5, stream: bool = False, **kwargs):
    params = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True, top_logprobs=k)
    return _client(url).chat.completions.create(**(params | kwargs), stream=stream)


@pytest.mark.parametrize("backend", ["single", "batched", "shard"])
def test_chat_logprobs_are_the_greedy_tokens_distribution(urls, backend):
    r = _chat(urls[backend])
    choice = r.choices[0]
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert b"".join(bytes(t.bytes) for t in content).decode() == choice.message.content
    for t in content:
        assert t.token == bytes(t.bytes).decode("utf-8", errors="replace") or t.token.startswith("bytes:")
        _check_distribution(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs], 5)
        assert all(bytes(a.bytes).decode("utf-8", "replace") == a.token for a in t.top_logprobs[:1])


@pytest.mark.parametrize("backend", ["single", "batched", "shard"])
def test_streamed_chat_chunks_carry_their_tokens_logprobs(urls, backend):
    whole = _chat(urls[backend]).choices[0]
    chunks = list(_chat(urls[backend], stream=True))
    got = []
    for c in chunks:
        if not c.choices:
            continue
        delta, lp = c.choices[0].delta, c.choices[0].logprobs
        if delta.content:
            assert lp is not None and lp.content  # every chunk with text has the logprobs of its tokens
            assert b"".join(bytes(t.bytes) for t in lp.content).decode() == delta.content
            got += lp.content
        else:
            assert lp is None
    assert [t.token for t in got] == [t.token for t in whole.logprobs.content]
    for a, b in zip(got, whole.logprobs.content, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-3
        assert [x.token for x in a.top_logprobs] == [x.token for x in b.top_logprobs]


@pytest.mark.parametrize("backend", ["single", "batched", "shard"])
def test_completion_logprobs_in_the_legacy_shape(urls, backend):
    client = _client(urls[backend])
    kwargs = dict(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=10, logprobs=3)
    choice = client.completions.create(**kwargs).choices[0]
    lp = choice.logprobs
    n = len(lp.tokens)
    assert n == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) > 0
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(n)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 3 <= len(top) <= 4  # the 3 best, and the sampled token if it is not among them
        best = max(top.items(), key=lambda kv: kv[1])
        assert best[0] == token and abs(best[1] - logprob) < 1e-6  # greedy
        assert sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-4

    streamed_tokens, offsets = [], []
    for c in client.completions.create(**kwargs, stream=True):
        if c.choices and c.choices[0].text:
            clp = c.choices[0].logprobs
            assert "".join(clp.tokens) == c.choices[0].text
            streamed_tokens += clp.tokens
            offsets += clp.text_offset
    assert streamed_tokens == lp.tokens and offsets == lp.text_offset  # offsets continue across chunks


def _decided_prefix(content) -> list[tuple[str, float]]:
    """(token, logprob) up to the first position whose two best tokens are within ``MARGIN``."""
    out = []
    for t in content:
        top = t.top_logprobs
        if len(top) > 1 and top[0].logprob - top[1].logprob < MARGIN:
            break
        out.append((t.token, t.logprob))
    return out


def test_backends_agree_on_top_token_and_logprob(urls):
    results = {name: _chat(url, k=2).choices[0].logprobs.content for name, url in urls.items()}
    prefixes = {name: _decided_prefix(c) for name, c in results.items()}
    n = min(len(p) for p in prefixes.values())
    assert n >= 3, prefixes  # the answer starts with tokens the model is sure of
    ref = prefixes["single"][:n]
    for name, p in prefixes.items():
        assert [t for t, _ in p[:n]] == [t for t, _ in ref], name
        for (_, a), (_, b) in zip(p[:n], ref, strict=True):
            assert abs(a - b) < TOL, (name, a, b)


def test_logprobs_are_of_the_raw_logits_not_the_sampling_settings(single_url):
    """Temperature, top_p and top_k change what is drawn, not the reported distribution (as vLLM)."""
    greedy = _chat(single_url, max_tokens=1).choices[0].logprobs.content[0]
    hot = _chat(single_url, max_tokens=1, temperature=1.7, top_p=0.3, seed=7).choices[0].logprobs.content[0]
    assert [a.token for a in hot.top_logprobs] == [a.token for a in greedy.top_logprobs]
    for a, b in zip(hot.top_logprobs, greedy.top_logprobs, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-4


def test_top_logprobs_zero_and_no_logprobs(single_url):
    r = _chat(single_url, k=0, max_tokens=4)
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    plain = _client(single_url).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("chat/completions", {"top_logprobs": 3}, "top_logprobs"),  # needs logprobs: true
        ("chat/completions", {"logprobs": 3}, "logprobs"),
        ("chat/completions", {"logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"logprobs": -1}, "logprobs"),
        ("completions", {"logprobs": True}, "logprobs"),
    ],
)
def test_bad_logprobs_values_are_400_naming_the_field(single_url, route, extra, param):
    body = {"model": MODEL, "max_tokens": 1}
    body |= {"messages": QUESTION} if route.startswith("chat") else {"prompt": PROMPT}
    r = httpx.post(f"{single_url}/v1/{route}", json=body | extra, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


# ---- the cluster gateway: the last stage sends the logits row (even for greedy) ---------------------------


def test_two_node_pipeline_serves_the_shard_engines_logprobs(tmp_path):
    from edgeinfer.cluster.host import ShardHost
    from edgeinfer.cluster.node import start
    from edgeinfer.engine.shard import Shard
    from edgeinfer.engine.shard_backend import ShardBackend
    from edgeinfer.models.synthetic import write_tiny_gguf

    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", arch="llama", n_layers=4)
    whole = Shard(tiny, 0, 4, threads=1)
    share = int(whole.weight_bytes * 0.6) + (200 << 10)  # + KV at ctx 64; no node holds the whole model
    whole.close()
    hosts, servers, nodes = [], [], []
    for name in ("n0", "n1"):
        host = ShardHost(name, threads=1, memory_limit=None)
        server, port = start(host, "127.0.0.1:0")
        hosts.append(host)
        servers.append(server)
        nodes.append({"name": name, "address": f"127.0.0.1:{port}", "memory_limit": share})
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny), "nodes": nodes, "wire_dtype": "f32", "ctx_size": 64}))
    prompt, k = "the ship sails", 4

    reference = ShardBackend(tiny, threads=1)
    try:
        ref = []
        for item in stream(
            reference, reference.tokenize(prompt), SamplingParams(0.0, max_tokens=8, logprobs=k)
        ):
            if isinstance(item, Delta):
                ref += item.logprobs or []
    finally:
        reference.close()
    try:
        with ServerProcess(["--cluster", str(cfg)], log=tmp_path / "gw.log") as srv:
            assert all(h.capabilities().shards for h in hosts)  # a real split: both nodes hold a part
            client = _client(srv.url)
            kwargs = dict(model="tiny", prompt=prompt, max_tokens=8, logprobs=k)
            lp = client.completions.create(**kwargs, temperature=0).choices[0].logprobs
            assert len(lp.tokens) == len(ref) > 0
            for logprob, top, want in zip(lp.token_logprobs, lp.top_logprobs, ref, strict=True):
                assert abs(logprob - want.logprob) < 1e-3
                assert max(top.values()) == pytest.approx(want.top[0].logprob, abs=1e-3)
            streamed = [
                v
                for c in client.completions.create(**kwargs, temperature=0, stream=True)
                if c.choices and c.choices[0].logprobs
                for v in c.choices[0].logprobs.token_logprobs
            ]
            assert streamed == pytest.approx(lp.token_logprobs, abs=1e-4)
            sampled = client.completions.create(**kwargs, temperature=1.0, seed=3).choices[0].logprobs
            assert len(sampled.tokens) > 0 and all(v <= 0 for v in sampled.token_logprobs)
            first = sampled.top_logprobs[0]  # the same first position's distribution, whatever was drawn
            assert max(first.values()) == pytest.approx(max(lp.top_logprobs[0].values()), abs=1e-3)
    finally:
        for server, host in zip(servers, hosts, strict=True):
            server.stop(0)
            host.close()


# ---- tokens that hold part of a character --------------------------------------------------------------


def test_a_character_split_over_tokens_arrives_with_both_tokens(qwen_path):
    """Qwen spells the parrot emoji as two tokens, neither valid UTF-8 alone: the delta with the character
    carries both logprobs, each spelled ``bytes:...`` with its exact bytes, and offsets count characters."""
    from edgeinfer.api.responses import ResponseBuilder
    from edgeinfer.engine.generate import SequencePolicy
    from edgeinfer.engine.logprobs import TokenLogprobs, TopLogprob
    from edgeinfer.engine.vocab import Vocab

    vocab = Vocab(qwen_path)
    try:
        ids = vocab.tokenize("🦜 ok", add_bos=False)
        policy = SequencePolicy(vocab, 1, 64, SamplingParams(0.0, max_tokens=8, logprobs=1))
        items = [policy.feed(TokenLogprobs(t, -0.5, (TopLogprob(t, -0.5),))) for t in ids]
        deltas = [d for d in items if d is not None] + [d for d in policy.finish() if isinstance(d, Delta)]
    finally:
        vocab.close()
    assert ids[:2] == [123918, 250] and deltas[0].text == "🦜" and len(deltas[0].logprobs) == 2
    assert [t.bytes for t in deltas[0].logprobs] == [b"\xf0\x9f\xa6", b"\x9c"]
    assert sum(len(d.logprobs) for d in deltas) == len(ids)

    chat = ResponseBuilder("r", 0, "m", chat=True, logprobs=True).logprobs_body(deltas[0].logprobs)
    assert [t["token"] for t in chat["content"]] == ["bytes:\\xf0\\x9f\\xa6", "bytes:\\x9c"]
    assert chat["content"][0]["bytes"] == [0xF0, 0x9F, 0xA6]
    assert chat["content"][0]["top_logprobs"][0]["token"] == "bytes:\\xf0\\x9f\\xa6"
    legacy = ResponseBuilder("r", 0, "m", chat=False, logprobs=True)
    offsets = [o for d in deltas for o in legacy.logprobs_body(d.logprobs)["text_offset"]]
    assert offsets[:3] == [0, 0, 1]  # the emoji is one character, complete only with its second token
