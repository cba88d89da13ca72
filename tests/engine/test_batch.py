"""Continuous batching on llama.cpp with the real bundled models: a sequence's greedy output in a batch
against its output alone, slot reuse, chunked prefill, per-slot context limits, and the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeinfer.bench.agreement import GREEDY, decode_together
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.batch import KVShape, ParallelDoesNotFit, check_parallel, default_parallel, kv_shape
from edgeinfer.engine.generate import ContextLengthExceeded, Delta, GenerationResult, stream
from edgeinfer.engine.scheduler import BatchScheduler

N_TOKENS = 24
NEAR_TIE = 0.5  # top-2 logit margin below which batched and single matmuls may round either way

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "1, 2, 3, 4, 5,",
    "Once upon a time, in a small village by the sea,",
]


def _load(path: Path, n_slots: int, **kw):
    from edgeinfer.engine.llamacpp_batch import LlamaCppBatchBackend

    return LlamaCppBatchBackend(path, n_ctx=kw.pop("n_ctx", 512), n_slots=n_slots, threads=2, **kw)


@pytest.fixture(scope="module", params=["qwen", "gemma"])
def model_path(request: pytest.FixtureRequest, qwen_path: Path, gemma_path: Path) -> Path:
    return qwen_path if request.param == "qwen" else gemma_path


@pytest.fixture(scope="module")
def backend(model_path: Path) -> Iterator:
    b = _load(model_path, n_slots=4)
    yield b
    b.close()


def test_kv_shape_from_metadata(qwen_path: Path, gemma_path: Path) -> None:
    # Qwen2.5 0.5B: 24 layers, 2 KV heads of 64; Gemma 3 270M: 18 layers, 1 KV head of 256
    assert kv_shape(str(qwen_path)) == KVShape(n_layer=24, n_embd_k=128, n_embd_v=128)
    assert kv_shape(str(gemma_path)) == KVShape(n_layer=18, n_embd_k=256, n_embd_v=256)
    assert kv_shape(str(qwen_path)).bytes_per_slot(4096) == 24 * 4096 * 256 * 2


def test_parallel_that_does_not_fit_is_refused_with_the_per_slot_size() -> None:
    mib = 1 << 20
    check_parallel(4, 48 * mib, 1024 * mib)
    with pytest.raises(ParallelDoesNotFit, match=r"48\.0 MiB per slot.*--parallel 10 or less"):
        check_parallel(64, 48 * mib, 1024 * mib)
    with pytest.raises(ParallelDoesNotFit, match="at least 1"):
        check_parallel(0, 48 * mib, 1024 * mib)
    assert default_parallel(48 * mib, 1024 * mib) == 4
    assert default_parallel(200 * mib, 1024 * mib) == 2
    assert default_parallel(2000 * mib, 1024 * mib) == 1


@pytest.mark.slow
def test_greedy_in_a_batch_matches_alone_up_to_near_ties(backend, model_path: Path) -> None:
    prompts = [backend.tokenize(p) for p in PROMPTS]
    alone = [decode_together(backend, [p], N_TOKENS)[0] for p in prompts]
    # the last request joins a running batch
    batched = decode_together(backend, prompts, N_TOKENS, join_after=5)
    differing = 0
    for a, b in zip(alone, batched, strict=True):
        first = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens, strict=True)) if x != y), None)
        if first is None:
            continue
        differing += 1
        print(f"{model_path.name}: differs at token {first}, alone margin {a.margins[first]:.3f}")
        assert a.margins[first] < NEAR_TIE, (first, a.margins[first])
        assert b.tokens[first] != a.tokens[first]
    print(f"{model_path.name}: {differing} of {len(prompts)} batched sequences differ from alone")


@pytest.mark.slow
def test_chunked_prefill_and_slot_reuse_give_the_same_tokens(model_path: Path) -> None:
    b = _load(model_path, n_slots=2, prefill_chunk=7)  # prompts spread over several steps
    try:
        long = b.tokenize("Write a short story about a robot who learns to paint. " * 4)
        short = b.tokenize(PROMPTS[2])
        ref = _load(model_path, n_slots=1)
        try:
            want = decode_together(ref, [long], 12)[0]
        finally:
            ref.close()
        # a slot used before (and freed) serves a new sequence as if fresh: its KV cache was dropped
        decode_together(b, [short, short], 12)
        got = decode_together(b, [long, short], 12)
        first = next(
            (i for i, (x, y) in enumerate(zip(want.tokens, got[0].tokens, strict=True)) if x != y), None
        )
        assert first is None or want.margins[first] < NEAR_TIE, (first, want.tokens, got[0].tokens)
    finally:
        b.close()


@pytest.mark.slow
def test_context_is_per_slot(gemma_path: Path) -> None:
    b = _load(gemma_path, n_slots=2, n_ctx=256)
    try:
        assert b.info.n_ctx == 256
        with pytest.raises(ContextLengthExceeded, match="maximum context length is 256"):
            b.add(list(range(10, 266)), GREEDY)
        # both slots may fill their whole context at once
        prompt = b.tokenize("1, 2, 3, 4, 5," * 30)[:200]
        results = _serve(b, [prompt, prompt], SamplingParams(temperature=0, max_tokens=None))
        assert [r.completion_tokens + r.prompt_tokens for r in results] == [256, 256]
        assert {r.finish_reason for r in results} == {"length"}
    finally:
        b.close()


@dataclass
class FakeRequest:
    prompt: list[int]
    params: SamplingParams
    cancel: threading.Event = field(default_factory=threading.Event)
    items: list = field(default_factory=list)

    def emit(self, item) -> None:
        self.items.append(item)

    @property
    def result(self) -> GenerationResult | None:
        return next((x for x in self.items if isinstance(x, GenerationResult)), None)


def _serve(backend, prompts: list[list[int]], params: SamplingParams) -> list[GenerationResult]:
    reqs = [FakeRequest(p, params) for p in prompts]
    sched = BatchScheduler(backend)
    for r in reqs:
        sched.admit(r)
    while sched.n_running:
        sched.step()
    return [r.result for r in reqs]


@pytest.mark.slow
def test_scheduler_applies_the_same_policy_as_stream(backend) -> None:
    prompt = backend.tokenize(PROMPTS[2])
    params = SamplingParams(temperature=0, max_tokens=30, stop=(" 9,",))
    want = list(stream(backend, prompt, params))  # the single-sequence loop over the same backend
    req = FakeRequest(prompt, params)
    sched = BatchScheduler(backend)
    sched.admit(req)
    while sched.n_running:
        sched.step()
    assert [d.text for d in req.items if isinstance(d, Delta)] == [d.text for d in want[:-1]]
    got, ref = req.result, want[-1]
    assert (got.text, got.finish_reason, got.completion_tokens) == (
        ref.text,
        ref.finish_reason,
        ref.completion_tokens,
    )
    assert backend.n_active == 0


@pytest.mark.slow
def test_scheduler_frees_a_cancelled_slot_at_once(backend) -> None:
    batches: list[int] = []
    finished: list[str] = []
    sched = BatchScheduler(
        backend, on_finish=lambda r, x: finished.append(x.finish_reason), on_step=batches.append
    )
    params = SamplingParams(temperature=0, max_tokens=50)
    reqs = [FakeRequest(backend.tokenize(p), params) for p in PROMPTS]
    for r in reqs:
        sched.admit(r)
    assert sched.n_free == 0
    for _ in range(3):
        sched.step()
    reqs[1].cancel.set()
    sched.step()
    assert sched.n_free == 1 and backend.n_active == 3 and finished == ["cancelled"]
    late = FakeRequest(backend.tokenize("The sky is"), SamplingParams(temperature=0, max_tokens=5))
    sched.admit(late)
    while sched.n_running:
        sched.step()
    assert late.result.completion_tokens == 5 and late.result.finish_reason == "length"
    assert max(batches) == 4 and batches[3] == 3 and batches[-1] < 4
    assert finished.count("cancelled") == 1 and len(finished) == 5
    assert set(finished) <= {"cancelled", "length", "stop"}
