"""The slot table both batch backends plan their steps with (``engine.slots``): admission into the lowest
free slot, the step's plan (decode rows first, then prompt chunks first come first served within the
budget), per-slot sampling and logprobs. No model: logits rows are made up."""

from __future__ import annotations

import pytest
import torch

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.batch import NoFreeSlot
from edgeinfer.engine.logprobs import TokenLogprobs
from edgeinfer.engine.slots import SlotTable

GREEDY = SamplingParams(temperature=0)
VOCAB = 10


def _row(best: int) -> torch.Tensor:
    row = torch.zeros(VOCAB)
    row[best] = 5.0
    return row


def test_lowest_free_slot_and_no_free_slot() -> None:
    t = SlotTable(n_slots=2, n_ctx=64, vocab_size=VOCAB)
    assert t.add([1, 2], GREEDY) == 0 and t.add([3], GREEDY) == 1
    with pytest.raises(NoFreeSlot):
        t.add([1], GREEDY)
    first = t[0].key
    assert t.remove(0) is not None and t.remove(0) is None
    assert t.add([4], GREEDY) == 0 and t[0].key != first  # a reused slot is a new sequence
    assert len(t) == 2 and t.ids() == [1, 0]


@pytest.mark.parametrize(
    ("prompt", "match"), [([], "at least one token"), ([1, VOCAB], "token ids"), ([-1], "token ids")]
)
def test_bad_prompts_are_refused(prompt: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SlotTable(n_slots=1, n_ctx=64, vocab_size=VOCAB).add(prompt, GREEDY)


def test_a_prompt_longer_than_the_context_is_refused() -> None:
    with pytest.raises(ValueError):
        SlotTable(n_slots=1, n_ctx=4, vocab_size=VOCAB).add([1] * 5, GREEDY)


def test_plan_decodes_first_then_prompt_chunks_first_come_first_served() -> None:
    t = SlotTable(n_slots=3, n_ctx=64, vocab_size=VOCAB)
    a = t.add([1] * 5, GREEDY)
    b = t.add([2] * 6, GREEDY)
    assert t.plan(n_batch=64, prefill_chunk=8) == [(a, 5)]  # one prompt per step, the oldest first
    assert t.plan(n_batch=64, prefill_chunk=3) == [(a, 3)]
    t.fed(a, 5)
    assert t[a].pos == 5 and t[a].pending == []
    assert t.sample(a, _row(7)) == 7 and t[a].pending == [7] and t[a].decoding
    c = t.add([3] * 4, GREEDY)
    assert t.plan(n_batch=64, prefill_chunk=4) == [(a, 1), (b, 4)]  # decode rows, then b (before c)
    t.fed(b, 4)
    assert t[b].pending == [2, 2]
    assert t.plan(n_batch=2, prefill_chunk=8) == [(a, 1), (b, 1)]  # the batch bounds the chunk
    t.remove(a)
    t.fed(b, 2)
    t.sample(b, _row(1))
    assert t.plan(n_batch=64, prefill_chunk=8) == [(b, 1), (c, 4)]


def test_sample_with_logprobs() -> None:
    t = SlotTable(n_slots=1, n_ctx=64, vocab_size=VOCAB)
    s = t.add([1], SamplingParams(temperature=0, logprobs=2))
    t.fed(s, 1)
    out = t.sample(s, _row(3))
    assert isinstance(out, TokenLogprobs) and out.token_id == 3 and len(out.top) == 2
