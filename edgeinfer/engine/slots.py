"""The slot table of a batch backend: which sequence holds which slot, and what each step feeds it.

Both batch backends (``engine.llamacpp_batch``, ``engine.shard_batch``) keep their sequences here: a new
request takes the lowest free slot, a step's plan is the last sampled token of every decoding slot plus a
chunk of the oldest prompt still being prefilled (first come, first served, up to ``n_batch`` positions), and
each slot samples its own logits row with its own sampler. A backend only turns the plan into its forward
pass and frees its KV cache when a slot is removed (``SlotBackend._release``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.batch import NoFreeSlot
from edgeinfer.engine.generate import check_context
from edgeinfer.engine.logprobs import TokenLogprobs, token_logprobs
from edgeinfer.engine.sampling import Sampler


@dataclass
class Slot:
    """One sequence in a slot."""

    key: str  # unique per admission (the shard engine's KV cache key)
    pending: list[int]  # tokens not yet in the KV cache: the prompt's rest, then the last sampled token
    pos: int  # position of pending[0]
    sampler: Callable[[torch.Tensor], int]
    admitted: int  # admission order: prompts are prefilled first come, first served
    n_prompt: int
    decoding: bool = False  # True once the prompt is in the cache and tokens are being sampled
    logprobs: int | None = None  # how many alternatives to report with each token; None = no logprobs


class SlotTable:
    """Up to ``n_slots`` sequences of at most ``n_ctx`` tokens each (prompt and output)."""

    def __init__(self, n_slots: int, n_ctx: int, vocab_size: int):
        if n_slots < 1:
            raise ValueError(f"n_slots must be at least 1, got {n_slots}")
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.vocab_size = vocab_size
        self._slots: dict[int, Slot] = {}
        self._admitted = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __getitem__(self, slot: int) -> Slot:
        return self._slots[slot]

    def ids(self) -> list[int]:
        """The slots in use."""
        return list(self._slots)

    def add(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        sampler: Callable[[torch.Tensor], int] | None = None,
    ) -> int:
        """Take the lowest free slot for ``prompt``; ``sampler`` (logits row -> token) replaces the default
        ``Sampler(params)``."""
        check_context(len(prompt), self.n_ctx)
        if not prompt:
            raise ValueError("the prompt must hold at least one token")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        slot = next((s for s in range(self.n_slots) if s not in self._slots), None)
        if slot is None:
            raise NoFreeSlot(f"all {self.n_slots} slots are busy")
        self._admitted += 1
        self._slots[slot] = Slot(
            key=f"slot{slot}-{self._admitted}",
            pending=list(prompt),
            pos=0,
            sampler=sampler or Sampler(params),
            admitted=self._admitted,
            n_prompt=len(prompt),
            logprobs=params.logprobs,
        )
        return slot

    def remove(self, slot: int) -> Slot | None:
        return self._slots.pop(slot, None)

    def clear(self) -> None:
        self._slots.clear()

    def plan(self, n_batch: int, prefill_chunk: int) -> list[tuple[int, int]]:
        """(slot, n_tokens) to feed the next step: every decoding slot's token, then a chunk of at most
        ``prefill_chunk`` positions (within ``n_batch``) of the oldest prompt still being prefilled.

        One prompt per step: requests that arrive together get their first tokens one after the other
        (the first after one prompt's prefill, not after all of theirs), and a prompt is cut into the same
        chunks whatever else is in the batch -- so the shard engine's tokens in a batch stay exactly its
        tokens alone."""
        plan = [(slot, 1) for slot, s in self._slots.items() if s.decoding]
        chunk = min(n_batch - len(plan), prefill_chunk)
        prefilling = [(s.admitted, slot) for slot, s in self._slots.items() if not s.decoding]
        if prefilling and chunk > 0:
            slot = min(prefilling)[1]
            plan.append((slot, min(len(self._slots[slot].pending), chunk)))
        return plan

    def fed(self, slot: int, n_tokens: int) -> None:
        """The step put the first ``n_tokens`` pending tokens of ``slot`` in its KV cache."""
        s = self._slots[slot]
        s.pos += n_tokens
        del s.pending[:n_tokens]

    def sample(self, slot: int, logits: torch.Tensor) -> int | TokenLogprobs:
        """Sample ``slot``'s next token from its logits row; it is fed by the next step."""
        s = self._slots[slot]
        token = s.sampler(logits)
        s.pending = [token]
        s.decoding = True
        return token if s.logprobs is None else token_logprobs(logits, token, s.logprobs)


class SlotBackend:
    """What both batch backends do the same way over their ``slots`` table: admission, removal, one
    sequence alone. A subclass sets ``self.slots`` and implements ``step`` and ``_release``."""

    slots: SlotTable

    @property
    def n_slots(self) -> int:
        return self.slots.n_slots

    @property
    def n_active(self) -> int:
        return len(self.slots)

    def add(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        sampler: Callable[[torch.Tensor], int] | None = None,
    ) -> int:
        """Take a free slot; ``sampler`` (logits row -> token) replaces the default ``Sampler(params)``."""
        return self.slots.add(prompt, params, sampler)

    def remove(self, slot: int) -> None:
        """End a slot's sequence and free its KV cache at once."""
        s = self.slots.remove(slot)
        if s is not None:
            self._release(slot, s)

    def _release(self, slot: int, s: Slot) -> None:
        raise NotImplementedError

    def step(self) -> dict[int, int | TokenLogprobs]:
        raise NotImplementedError

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
