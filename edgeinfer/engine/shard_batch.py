"""Several sequences on the shard engine: one forward pass per step, chunked prefill, per-slot sampling.

A step feeds ``Shard.forward_batch`` the last sampled token of every decoding slot plus a chunk of the
oldest prompt still being prefilled (first come, first served), so a new request joins the running batch and a
long prompt is spread over several steps. The linear layers see the rows of every slot at once -- the native
kernel unpacks each weight block once for all of them, which is where a memory-bound CPU gains -- while
attention runs per sequence over its own KV cache (``models.kv_cache.KVBatch``). Each row's arithmetic is
the one it gets alone, so a sequence's greedy tokens in a batch equal its tokens served alone. Each slot
samples its logits with the project's ``Sampler`` (greedy = argmax, seeded per request); the slots and the
step's plan are ``engine.slots``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgeinfer.engine.logprobs import TokenLogprobs
from edgeinfer.engine.shard import Shard, layer_count
from edgeinfer.engine.shard_backend import shard_model_info
from edgeinfer.engine.slots import Slot, SlotBackend, SlotTable
from edgeinfer.engine.vocab import Vocab, VocabMixin

DEFAULT_BATCH = 512  # most positions in one forward pass (decode rows plus prompt chunks)


class ShardBatchBackend(SlotBackend, VocabMixin):
    """``n_slots`` sequences of up to ``n_ctx`` tokens each on the whole model, advanced together by
    ``step``; every slot has its own KV cache (allocated as it grows, freed by ``remove``)."""

    def __init__(
        self,
        model_path: str | Path,
        name: str | None = None,
        n_ctx: int = 4096,
        n_slots: int = 4,
        threads: int | None = None,
        weight_format: str = "auto",
        n_batch: int = DEFAULT_BATCH,
        prefill_chunk: int | None = None,
    ):
        if n_slots < 1:
            raise ValueError(f"n_slots must be at least 1, got {n_slots}")
        if n_batch < n_slots:
            raise ValueError(f"n_batch ({n_batch}) must hold one token of each of the {n_slots} slots")
        path = Path(model_path)
        self.shard = Shard(
            path, 0, layer_count(path), threads=threads, max_seq_len=n_ctx, weight_format=weight_format
        )
        self.vocab = Vocab(path)
        self.n_batch = n_batch
        self.prefill_chunk = prefill_chunk or n_batch
        self.info = shard_model_info(name or path.stem, path, [self.shard], self.vocab)
        self.slots = SlotTable(n_slots, self.info.n_ctx, self.info.vocab_size)

    def _release(self, slot: int, s: Slot) -> None:
        self.shard.drop(s.key)

    def step(self) -> dict[int, int | TokenLogprobs]:
        plan = self.slots.plan(self.n_batch, self.prefill_chunk)
        if not plan:
            return {}
        batch = []
        outputs = []
        for slot, take in plan:
            s = self.slots[slot]
            batch.append((s.key, torch.tensor(s.pending[:take], dtype=torch.long)))
            outputs.append(take == len(s.pending))
        logits = self.shard.forward_batch(batch, outputs)
        sampled: dict[int, int | TokenLogprobs] = {}
        for (slot, take), row in zip(plan, logits, strict=True):
            self.slots.fed(slot, take)
            if row is not None:
                sampled[slot] = self.slots.sample(slot, row)
        return sampled

    def close(self) -> None:
        self.slots.clear()
        self.shard.close()
        self.vocab.close()
