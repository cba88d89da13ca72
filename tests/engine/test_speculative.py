"""Speculative decoding (engine/draft.py, engine/speculative.py): the drafters, the acceptance rule, and the
whole loop on both backends -- greedy output token-identical to plain decoding on the real models, sampled
output distributed as the model's (chi-square tests that a wrong rule fails), options and /metrics."""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import torch

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.chat import build_chat_prompt
from edgeinfer.engine.draft import Draft, DraftLength, ModelDrafter, NgramDrafter
from edgeinfer.engine.load import LoadOptions, open_backend
from edgeinfer.engine.logprobs import TokenLogprobs
from edgeinfer.engine.sampling import Sampler
from edgeinfer.engine.shard import Shard
from edgeinfer.engine.shard_backend import ShardBackend, ShardSequence
from edgeinfer.engine.speculative import (
    SpecStats,
    SpeculativeDecoder,
    SpeculativeOptions,
    accept,
    speculative_tokens,
)
from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.process import ServerProcess

CODE = """def area(w, h):
    # the area of a rectangle
    result = w * h
    return result


def perimeter(w, h):
    return 2 * (w + h)
"""
PROMPTS = [
    f"Rename the function area to rect_area and return the whole code:\n```python\n{CODE}```",
    f"Add type hints (float) to both functions and return the whole code:\n```python\n{CODE}```",
    "Write a short poem about the sea.",
]


# ---- drafters ----------------------------------------------------------------------------------------------
def test_ngram_drafter_proposes_the_continuation_of_the_latest_match():
    d = NgramDrafter(n_max=3, n_min=1)
    history = [5, 6, 7, 8, 9, 1, 5, 6, 7, 2, 3, 5, 6, 7]
    assert d.propose(history, 3).tokens == [2, 3, 5]  # [5, 6, 7] last seen before 2, 3
    assert d.propose(history, 0).tokens == []
    history += [2, 3, 5, 6]  # grows incrementally
    assert d.propose(history, 2).tokens == [7, 2]
    assert d.propose([1, 2, 3, 4], 4).tokens == []  # a new sequence: the index is rebuilt, nothing repeats
    assert d.propose([4, 4, 4], 5).tokens == [4]  # the match is followed by one known token only
    assert NgramDrafter(n_max=4, n_min=2).propose([1, 2, 9, 8, 2], 3).tokens == []  # 1-grams too short


def test_ngram_draft_is_as_long_as_the_match_is_deep():
    """A match that extends far back (the answer copies that span) earns a long draft; a shallow one a short
    draft."""
    d = NgramDrafter(n_max=2, n_min=2)
    source = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    shallow = [*source, 99, 98, 12, 13]  # [12, 13] matches, but 98 != 11 before it: depth 2
    assert d.propose(shallow, 6).tokens == [14, 15]
    deep = [*source, 99, 10, 11, 12, 13]  # the copy reaches back to 10: depth 4
    assert d.propose(deep, 6).tokens == [14, 15, 16, 17]
    assert d.propose(deep, 3).tokens == [14, 15, 16]  # never longer than asked


def test_draft_length_grows_shrinks_and_pauses_when_nothing_is_accepted():
    n = DraftLength(k_max=6, patience=2, max_pause=4)
    assert n.next() == 6
    n.update(6, 2)
    assert n.next() == 3  # what was accepted, plus one
    n.update(3, 3)
    assert n.next() == 6  # all accepted: twice as many (up to k_max)
    n.update(6, 0)
    n.update(1, 0)  # two rejected drafts in a row: pause one step, then two, then four (max)
    assert [n.next() for _ in range(2)] == [0, 1]
    n.update(1, 0)
    n.update(1, 0)
    assert [n.next() for _ in range(3)] == [0, 0, 1]
    for _ in range(6):
        n.update(1, 0)
    assert [n.next() for _ in range(5)] == [0, 0, 0, 0, 1]
    n.update(1, 1)  # an accepted token resets the pauses
    n.update(2, 0)
    n.update(1, 0)
    assert [n.next() for _ in range(2)] == [0, 1]


def _drafting_steps(position_cost: float, acceptance: float, steps: int = 200) -> int:
    """How many of ``steps`` passes draft, when a pass of n positions takes 1 + position_cost * (n - 1)
    seconds and each draft of k tokens has round(acceptance * k) accepted (never all, so k stays put)."""
    n, drafting = DraftLength(k_max=4), 0
    for _ in range(steps):
        k = n.next()
        n.record_pass(k + 1, 1.0 + position_cost * k)
        if k:
            drafting += 1
            n.update(k, min(k - 1, round(acceptance * k)))
    return drafting


def test_draft_length_stops_drafting_where_a_drafted_position_costs_more_than_it_saves():
    assert _drafting_steps(position_cost=0.25, acceptance=0.5) > 150  # cheap positions: draft (almost) always
    assert _drafting_steps(position_cost=1.0, acceptance=0.5) < 20  # a position costs a pass: probes only
    n = DraftLength(k_max=4)
    assert n.pays() and n.position_cost is None  # drafts until both kinds of pass were timed
    n.record_pass(1, 0.1)
    n.record_pass(5, 0.3)
    assert n.position_cost == pytest.approx(0.5)


def test_speculative_options_parse_and_refuse_bad_values():
    assert SpeculativeOptions.parse("ngram").mode == "ngram"
    assert SpeculativeOptions.parse("exit:12", 4) == SpeculativeOptions("exit", 12, 4)
    assert not SpeculativeOptions.parse("off").enabled
    for bad in ("fast", "exit:", "exit:x", "exit:0"):
        with pytest.raises(ValueError, match="exit|speculative"):
            SpeculativeOptions.parse(bad)
    with pytest.raises(ValueError, match="draft-max"):
        SpeculativeOptions.parse("ngram", 0)
    with pytest.raises(ValueError, match="--parallel"):
        LoadOptions(speculative="ngram", parallel=2)
    assert LoadOptions(speculative="ngram", parallel=1).parallel == 1


# ---- the acceptance rule -----------------------------------------------------------------------------------
def chi2_critical(df: int, z: float = 3.72) -> float:
    """Upper quantile of chi-square (Wilson-Hilferty); z = 3.72: a 1e-4 false-alarm rate."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: Counter, probs: dict, n: int) -> tuple[float, int]:
    """Pearson statistic of ``counts`` (n draws) against ``probs`` over its keys, and its degrees of
    freedom."""
    assert abs(sum(probs.values()) - 1) < 1e-4
    stat = sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in probs.items())
    assert sum(counts.values()) == n and set(counts) <= set(probs), "a draw outside the support"
    return stat, len(probs) - 1


P0 = torch.tensor([0.05, 0.4, 0.25, 0.2, 0.1])  # next-token distribution before the draft
P1 = torch.tensor([0.3, 0.1, 0.2, 0.15, 0.25])  # after the first drafted token (2)


def first_two(q: torch.Tensor | None, seed: int, wrong: bool = False) -> tuple[int, ...]:
    """The first token, and the second when the first drafted token was accepted, with the first drafted
    token. The n-gram drafter (``q`` None) always drafts [2, 4]; a draft model samples its tokens from q."""
    sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
    tokens = [2, 4]
    if q is not None:
        g = torch.Generator().manual_seed(10_000 + seed)
        tokens = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(2)]
    logits = torch.stack([P0.log(), P1.log(), P1.log()])
    if wrong:  # always keep the first drafted token: what a broken rule would do
        return (tokens[0], -1, tokens[0])
    out = accept(logits, Draft(tokens, q), sampler)
    return (out[0], out[1] if len(out) > 1 else -1, tokens[0])


@pytest.mark.parametrize("drafter", ["ngram", "model"])
def test_accept_keeps_the_model_distribution(drafter):
    n = 6000
    q = None
    if drafter == "model":  # a draft model that likes token 2 and 4 more than the target does
        q = torch.tensor([[0.1, 0.1, 0.5, 0.1, 0.2], [0.1, 0.1, 0.2, 0.1, 0.5]])
    first = Counter()
    second = Counter()
    for seed in range(n):
        t1, t2, d1 = first_two(q, seed)
        first[t1] += 1
        if t1 == d1 == 2:
            second[t2] += 1
    stat, df = chi2(first, {t: float(p) for t, p in enumerate(P0)}, n)
    assert stat < chi2_critical(df), (stat, first)
    stat, df = chi2(second, {t: float(p) for t, p in enumerate(P1)}, sum(second.values()))
    assert stat < chi2_critical(df), (stat, second)
    # the same test rejects a rule that keeps every drafted token
    wrong = Counter(first_two(q, s, wrong=True)[0] for s in range(n))
    assert chi2(wrong, {t: float(p) for t, p in enumerate(P0)}, n)[0] > chi2_critical(df)


def test_accept_greedy_keeps_the_argmax_prefix_and_adds_one():
    sampler = Sampler(SamplingParams(temperature=0))
    logits = torch.eye(6)[[3, 4, 5, 1]] * 5  # argmax 3, then 4, then 5, then 1
    assert accept(logits, Draft([3, 4, 5]), sampler) == [3, 4, 5, 1]  # all accepted + the bonus token
    assert accept(logits, Draft([3, 0, 5]), sampler) == [3, 4]  # the correction replaces the first miss
    assert accept(logits[:1], Draft([]), sampler) == [3]
    with pytest.raises(ValueError, match="logits rows"):
        accept(logits, Draft([3]), sampler)


# ---- the loop on a tiny model: distribution of sampled output, rollback ------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ShardBackend:
    path = write_tiny_gguf(
        tmp_path_factory.mktemp("spec") / "tiny.gguf",
        "llama",
        n_layers=4,
        matrix_types=("F32",),
        output_type="F32",
    )
    b = ShardBackend(path, threads=1, n_ctx=256, weight_format="f32")
    yield b
    b.close()


# the prompt repeats [300, 301, 302] so prompt lookup drafts [274, 365, ...]; 274 has probability ~0.5
TINY_PROMPT = [1, 300, 301, 302, 274, 365, 300, 301, 302]


def next_probs(b: ShardBackend, ids: list[int]) -> torch.Tensor:
    seq = b.open_sequence()
    try:
        return torch.softmax(seq.feed(ids)[-1], -1)
    finally:
        seq.close()


class PairBuckets:
    """Exact probabilities of the first two sampled tokens in buckets with enough mass for a chi-square
    test: every pair of probability >= ``floor`` (among the ``top`` likeliest first tokens and their ``top``
    likeliest second tokens), and one bucket for the rest (merged into the smallest bucket if too small)."""

    def __init__(self, b: ShardBackend, top: int = 4, floor: float = 0.02):
        p1 = next_probs(b, TINY_PROMPT)
        pairs: dict = {}
        for t1 in p1.topk(top).indices.tolist():
            p2 = next_probs(b, [*TINY_PROMPT, t1])
            for t2 in p2.topk(top).indices.tolist():
                pairs[(t1, t2)] = float(p1[t1] * p2[t2])
        self.probs = {k: v for k, v in pairs.items() if v >= floor}
        rest = 1.0 - sum(self.probs.values())
        self.rest: object = "rest"
        if rest < floor:
            self.rest = min(self.probs, key=self.probs.__getitem__)
            self.probs[self.rest] += rest
        else:
            self.probs["rest"] = rest

    def __call__(self, pair: tuple[int, int]) -> object:
        return pair if pair in self.probs else self.rest


@pytest.mark.parametrize("mode", ["ngram", "exit:2"])
def test_sampled_output_follows_the_model_distribution(tiny, mode):
    buckets = PairBuckets(tiny)
    p274 = float(next_probs(tiny, TINY_PROMPT)[274])
    assert 0.2 < p274 < 0.8  # the first drafted token is accepted sometimes, rejected sometimes
    options = SpeculativeOptions.parse(mode, 4)
    draft_model = None
    if options.mode == "exit":
        shard = Shard(tiny.info.path, 0, 4, exit_at=2, threads=1, weight_format="f32")
        draft_model = lambda: ShardSequence([shard])  # noqa: E731
    spec = SpeculativeDecoder(tiny, options, draft_model)
    n = 1200
    counts: Counter = Counter()
    for seed in range(n):
        gen = spec.generate_tokens(TINY_PROMPT, SamplingParams(temperature=1.0, seed=seed))
        pair = (next(gen), next(gen))
        gen.close()
        counts[buckets(pair)] += 1
    stat, df = chi2(counts, buckets.probs, n)
    assert df >= 2 and stat < chi2_critical(df), (stat, counts, buckets.probs)
    s = spec.spec_stats
    assert s.drafted > n / 2 and 0 < s.accepted < s.drafted  # drafts were made, kept and rejected


def test_rollback_leaves_the_cache_as_plain_decoding_would(tiny):
    """After rejected drafts the KV cache holds exactly the accepted tokens: the logits of the next position
    equal those of a fresh sequence fed the same tokens."""
    seq = tiny.open_sequence()
    stats = SpecStats()
    params = SamplingParams(temperature=0)
    tokens = []
    for t in speculative_tokens(seq, NgramDrafter(n_min=1), TINY_PROMPT, params, 6, 256, stats):
        tokens.append(t)
        if len(tokens) == 20:
            break
    assert stats.drafted > stats.accepted  # something was rolled back
    assert seq.length == len(TINY_PROMPT) + len(tokens) - 1  # the last token is pending, not yet fed
    history = [*TINY_PROMPT, *tokens]
    got = seq.feed(history[-1:])[-1]
    seq.close()
    fresh = tiny.open_sequence()
    want = fresh.feed(history)[-1]
    fresh.close()
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-2)  # float noise of multi-position passes only


class _SlowMultiPositionPasses:
    """A sequence whose passes of several positions take ~5 ms per position: drafting does not pay."""

    def __init__(self, seq):  # type: ignore[no-untyped-def]
        self.seq = seq

    @property
    def length(self) -> int:
        return self.seq.length

    def feed(self, ids, all_logits=False):  # type: ignore[no-untyped-def]
        time.sleep(0.005 * (len(ids) - 1) if len(ids) > 1 else 0)
        return self.seq.feed(ids, all_logits)

    def truncate(self, length: int) -> None:
        self.seq.truncate(length)

    def close(self) -> None:
        self.seq.close()


def test_cost_aware_drafting_keeps_seeded_samples_reproducible(tiny):
    """Sampling: the stream of a seed (and what is drafted) does not depend on the machine's timing, though
    multi-position passes here cost far more than they save; greedy: the same tokens either way."""

    def run(params, slow):  # type: ignore[no-untyped-def]
        seq = tiny.open_sequence()
        stats = SpecStats()
        model = _SlowMultiPositionPasses(seq) if slow else seq
        gen = speculative_tokens(model, NgramDrafter(n_min=1), TINY_PROMPT, params, 6, 256, stats)
        out = [t for t, _ in zip(gen, range(40), strict=False)]
        gen.close()
        seq.close()
        return out, stats

    sampled = SamplingParams(temperature=0.8, seed=3)
    fast, slow = run(sampled, slow=False), run(sampled, slow=True)
    assert fast[0] == slow[0]
    assert slow[1].drafted == fast[1].drafted > 10 and fast[1].accepted > 0  # the same drafts, some kept
    greedy = SamplingParams(temperature=0)
    assert run(greedy, slow=False)[0] == run(greedy, slow=True)[0]


def test_model_drafter_follows_the_history_through_rollbacks(tiny):
    shard = Shard(tiny.info.path, 0, 4, exit_at=2, threads=1, weight_format="f32")
    d = ModelDrafter(lambda: ShardSequence([shard]))
    sampler = Sampler(SamplingParams(temperature=0))
    first = d.propose(TINY_PROMPT, 3, sampler).tokens
    assert len(first) == 3
    diverged = [*TINY_PROMPT, first[0], (first[1] + 1) % 384]  # the second drafted token was rejected
    again = d.propose(diverged, 2, sampler).tokens
    fresh = ModelDrafter(lambda: ShardSequence([shard])).propose(diverged, 2, sampler).tokens
    assert again == fresh
    d.close()


# ---- greedy: token-identical to plain decoding on the real models, both backends ---------------------------
def prompt_tokens(b, text: str) -> list[int]:
    if b.info.chat_template:
        return build_chat_prompt(b, [{"role": "user", "content": text}]).tokens
    return b.tokenize(text)


def run(b, tokens: list[int], params: SamplingParams, n: int) -> list:
    out = []
    for t in b.generate_tokens(tokens, params):
        out.append(t)
        tid = t.token_id if isinstance(t, TokenLogprobs) else t
        if len(out) >= n or b.is_eog(tid):
            break
    return out


@pytest.fixture(scope="module", params=["llamacpp", "shard"])
def backend_kind(request) -> str:
    return request.param


# a position's logits differ slightly between a single-position pass and a multi-position pass (llama.cpp:
# up to ~0.1, its batched kernels round differently), so a near-tie can flip: only there may they differ
NEAR_TIE = 0.3


def assert_same_or_near_tie(b, tokens: list[int], plain: list[int], spec: list[int]) -> int:
    """``spec`` equals ``plain``, or they first differ where plain decoding's top two logits lie within
    ``NEAR_TIE`` of each other and speculation took the runner-up; returns the tokens that agree."""
    i = next((i for i, (a, c) in enumerate(zip(plain, spec, strict=False)) if a != c), None)
    if i is None:
        assert len(spec) == len(plain)
        return len(plain)
    seq = b.open_sequence()  # plain decoding's logits at the divergence: prompt in one pass, then one by one
    try:
        logits = seq.feed(tokens)[-1]
        for t in plain[:i]:
            logits = seq.feed([t])[-1]
    finally:
        seq.close()
    assert int(logits.argmax()) == plain[i]
    gap = float(logits[plain[i]] - logits[spec[i]])
    assert gap < NEAR_TIE, (
        f"speculative output diverged at token {i} where plain decoding was sure ({gap:.3f})"
    )
    return i


@pytest.mark.parametrize("model", ["qwen", "gemma"])
def test_greedy_output_is_token_identical_to_plain_decoding(backend_kind, model):
    b = open_backend(model, LoadOptions(backend_kind, n_ctx=1024, threads=1))
    try:
        # drafts on every backend, whatever a pass costs here (cost-aware drafting may stop on llama.cpp)
        spec = SpeculativeDecoder(b, SpeculativeOptions("ngram", None, 6, cost_aware=False))
        greedy = SamplingParams(temperature=0)
        identical = 0
        for text in PROMPTS:
            tokens = prompt_tokens(b, text)
            plain = run(b, tokens, greedy, 32)
            identical += assert_same_or_near_tie(b, tokens, plain, run(spec, tokens, greedy, 32)) == len(
                plain
            )
        assert identical >= 1  # not every comparison may end at a near-tie
        s = spec.spec_stats
        assert s.accepted > 10 and s.tokens_per_pass > 1.2, s  # the code edits copy from their prompts
        # logprobs come from the verification pass: the same tokens, the same values within float noise
        tokens = prompt_tokens(b, PROMPTS[0])
        lp_params = SamplingParams(temperature=0, logprobs=2)
        plain_lp, spec_lp = run(b, tokens, lp_params, 8), run(spec, tokens, lp_params, 8)
        ids = [t.token_id for t in plain_lp]
        same = assert_same_or_near_tie(b, tokens, ids, [t.token_id for t in spec_lp])
        assert same >= 1
        assert (
            max(abs(a.logprob - c.logprob) for a, c in zip(plain_lp[:same], spec_lp[:same], strict=True))
            < 0.1
        )
    finally:
        b.close()


def test_exit_drafter_is_exact_on_both_backends(backend_kind):
    b = open_backend("qwen", LoadOptions(backend_kind, n_ctx=1024, threads=1, speculative="exit:18"))
    try:
        assert isinstance(b, SpeculativeDecoder)
        tokens = prompt_tokens(b, PROMPTS[0])
        greedy = SamplingParams(temperature=0)
        plain = run(b.target, tokens, greedy, 12)
        assert assert_same_or_near_tie(b.target, tokens, plain, run(b, tokens, greedy, 12)) >= 8
        assert b.spec_stats.drafted > 0
    finally:
        b.close()
    with pytest.raises(ValueError, match="before the last layer"):
        open_backend("qwen", LoadOptions(backend_kind, n_ctx=256, speculative="exit:24"))


# ---- serve: options and /metrics ---------------------------------------------------------------------------
def test_server_speculates_and_reports_acceptance(tmp_path: Path):
    from openai import OpenAI

    with ServerProcess(
        ["-m", "qwen", "-t", "1", "--ctx-size", "1024", "--speculative", "ngram", "--draft-max", "6"],
        log=tmp_path / "serve.log",
    ) as srv:
        client = OpenAI(base_url=f"{srv.url}/v1", api_key="none")
        answer = client.chat.completions.create(
            model="qwen",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            temperature=0,
            max_tokens=48,
        )
        assert "rect_area" in answer.choices[0].message.content
        text = httpx.get(f"{srv.url}/metrics").text
    rate = float(
        re.search(r'^edgeinfer:spec_decode_draft_acceptance_rate\{model_name="[^"]+"\} (\S+)', text, re.M)[1]
    )
    per_pass = float(
        re.search(r'^edgeinfer:spec_decode_tokens_per_pass\{model_name="[^"]+"\} (\S+)', text, re.M)[1]
    )
    assert 0 < rate <= 1 and per_pass > 1
    assert "edgeinfer:spec_decode_num_accepted_tokens_total" in text


def test_serve_refuses_speculation_with_parallel_batches(tmp_path: Path):
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeinfer.cli",
            "serve",
            "-m",
            "qwen",
            "--speculative",
            "ngram",
            "--parallel",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--parallel" in out.stderr, out.stderr
