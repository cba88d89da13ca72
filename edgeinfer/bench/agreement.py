"""Greedy decoding of several prompts together through a ``BatchBackend``, recording each position's top-2
logit margin: what the batched-vs-alone agreement benchmark (benchmarks/bench_batch_agreement.py) and the
batch tests compare."""

from __future__ import annotations

import torch

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.batch import BatchBackend

GREEDY = SamplingParams(temperature=0, max_tokens=None)


class Recorder:
    """A greedy sampler that remembers, for every position, the top-2 logit margin."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.margins: list[float] = []

    def __call__(self, logits: torch.Tensor) -> int:
        top = torch.topk(logits.float(), 2)
        self.margins.append(float(top.values[0] - top.values[1]))
        self.tokens.append(int(top.indices[0]))
        return self.tokens[-1]


def decode_together(
    backend: BatchBackend, prompts: list[list[int]], n_tokens: int, join_after: int = 0
) -> list[Recorder]:
    """Greedy-decode ``prompts`` together for ``n_tokens`` each; with ``join_after`` > 0 the last one joins
    that many steps late (prefilled next to decoding rows). Every slot is freed on return."""
    recs = [Recorder() for _ in prompts]
    slots: dict[int, int] = {}
    late = len(prompts) - 1 if join_after else None
    for i, p in enumerate(prompts):
        if i != late:
            slots[backend.add(p, GREEDY, sampler=recs[i])] = i
    steps = 0
    while any(len(r.tokens) < n_tokens for r in recs):
        if late is not None and steps == join_after:
            slots[backend.add(prompts[late], GREEDY, sampler=recs[late])] = late
        for slot in [s for s, i in slots.items() if len(recs[i].tokens) >= n_tokens]:
            backend.remove(slot)
            del slots[slot]
        backend.step()
        steps += 1
    for slot in slots:
        backend.remove(slot)
    return recs
