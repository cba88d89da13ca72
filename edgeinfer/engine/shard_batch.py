"""Several sequences on the shard engine: one forward pass per step, chunked prefill, per-slot sampling.

A step feeds ``Shard.forward_batch`` the last sampled token of every decoding slot plus chunks of the
prompts still being prefilled (first come, first served), so a new request joins the running batch and a
long prompt is spread over several steps. The linear layers see the rows of every slot at once -- the native
kernel unpacks each weight block once for all of them, which is where a memory-bound CPU gains -- while
attention runs per sequence over its own KV cache (``models.kv_cache.KVBatch``). Each row's arithmetic is
the one it gets alone, so a sequence's greedy tokens in a batch equal its tokens served alone. Each slot
samples its logits with the project's ``Sampler`` (greedy = argmax, seeded per request).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.batch import NoFreeSlot
from edgeinfer.engine.generate import check_context
from edgeinfer.engine.logprobs import TokenLogprobs, token_logprobs
from edgeinfer.engine.sampling import Sampler
from edgeinfer.engine.shard import Shard, layer_count
from edgeinfer.engine.shard_backend import shard_model_info
from edgeinfer.engine.vocab import Vocab, VocabMixin

DEFAULT_BATCH = 512  # most positions in one forward pass (decode rows plus prompt chunks)


@dataclass
class _Sequence:
    seq_id: str  # the shard's KV cache key
    pending: list[int]  # tokens not yet in the KV cache: the prompt's rest, then the last sampled token
    sampler: Callable[[torch.Tensor], int]
    admitted: int  # admission order: prompts are prefilled first come, first served
    decoding: bool = False  # True once the prompt is in the cache and tokens are being sampled
    logprobs: int | None = None  # how many alternatives to report with each token; None = no logprobs


class ShardBatchBackend(VocabMixin):
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
        self.n_slots = n_slots
        self.n_batch = n_batch
        self.prefill_chunk = prefill_chunk or n_batch
        self._seqs: dict[int, _Sequence] = {}
        self._admitted = 0
        self.info = shard_model_info(name or path.stem, path, [self.shard], self.vocab)

    @property
    def n_active(self) -> int:
        return len(self._seqs)

    def add(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        sampler: Callable[[torch.Tensor], int] | None = None,
    ) -> int:
        """Take a free slot; ``sampler`` (logits row -> token) replaces the default ``Sampler(params)``."""
        check_context(len(prompt), self.info.n_ctx)
        if not prompt:
            raise ValueError("the prompt must hold at least one token")
        if min(prompt) < 0 or max(prompt) >= self.info.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.info.vocab_size})")
        free = [s for s in range(self.n_slots) if s not in self._seqs]
        if not free:
            raise NoFreeSlot(f"all {self.n_slots} slots are busy")
        slot = free[0]
        self._admitted += 1
        self._seqs[slot] = _Sequence(
            seq_id=f"slot{slot}-{self._admitted}",
            pending=list(prompt),
            sampler=sampler or Sampler(params),
            admitted=self._admitted,
            logprobs=params.logprobs,
        )
        return slot

    def remove(self, slot: int) -> None:
        s = self._seqs.pop(slot, None)
        if s is not None:
            self.shard.drop(s.seq_id)

    def _plan(self) -> list[tuple[int, int]]:
        """(slot, n_tokens) to feed this step: every decoding slot's token, then prompt chunks, FIFO."""
        plan = [(slot, 1) for slot, s in self._seqs.items() if s.decoding]
        chunk = min(self.n_batch - len(plan), self.prefill_chunk)
        for slot, s in sorted(self._seqs.items(), key=lambda kv: kv[1].admitted):
            if s.decoding or chunk <= 0:
                continue
            take = min(len(s.pending), chunk)
            plan.append((slot, take))
            chunk -= take
        return plan

    def step(self) -> dict[int, int | TokenLogprobs]:
        plan = self._plan()
        if not plan:
            return {}
        batch = []
        outputs = []
        for slot, take in plan:
            s = self._seqs[slot]
            batch.append((s.seq_id, torch.tensor(s.pending[:take], dtype=torch.long)))
            outputs.append(take == len(s.pending))
        logits = self.shard.forward_batch(batch, outputs)
        sampled: dict[int, int | TokenLogprobs] = {}
        for (slot, take), row in zip(plan, logits, strict=True):
            s = self._seqs[slot]
            del s.pending[:take]
            if row is None:
                continue
            token = s.sampler(row)
            s.pending = [token]
            s.decoding = True
            sampled[slot] = token if s.logprobs is None else token_logprobs(row, token, s.logprobs)
        return sampled

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int | TokenLogprobs]:
        """One sequence alone (the ``Backend`` protocol); only while no other slot is in use."""
        slot = self.add(prompt, params)
        try:
            while True:
                out = self.step()
                if slot in out:
                    yield out[slot]
        finally:
            self.remove(slot)

    def close(self) -> None:
        self._seqs.clear()
        self.shard.close()
        self.vocab.close()
