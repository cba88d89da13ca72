"""Several sequences on one llama.cpp context: multi-sequence batches, chunked prefill, per-slot sampling.

One context holds ``n_slots`` sequences (``n_seq_max``), each with its own part of the KV cache
(``kv_unified = false``: ``n_ctx = n_slots x`` the context per slot). A step is one ``llama_decode`` over a
batch that carries the last sampled token of every decoding slot plus chunks of the prompts still being
prefilled, so a new request joins the running batch and a long prompt is spread over several steps. Each
slot samples its logits row with the project's ``Sampler`` (greedy = argmax, seeded per request).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeinfer.engine.base import ModelInfo, SamplingParams
from edgeinfer.engine.batch import NoFreeSlot
from edgeinfer.engine.generate import check_context
from edgeinfer.engine.logprobs import TokenLogprobs, token_logprobs
from edgeinfer.engine.sampling import Sampler
from edgeinfer.engine.threads import default_threads
from edgeinfer.engine.vocab import Vocab, VocabMixin, _quiet_native_stderr


@dataclass
class _Sequence:
    pending: list[int]  # tokens not yet in the KV cache: the prompt's rest, then the last sampled token
    pos: int  # position of pending[0]
    sampler: Callable[[torch.Tensor], int]
    admitted: int  # admission order: prompts are prefilled first come, first served
    decoding: bool = False  # True once the prompt is in the cache and tokens are being sampled
    n_prompt: int = 0
    logprobs: int | None = None  # how many alternatives to report with each token; None = no logprobs


class LlamaCppBatchBackend(VocabMixin):
    """``n_slots`` sequences of up to ``n_ctx`` tokens each, advanced together by ``step``."""

    def __init__(
        self,
        model_path: str | Path,
        name: str | None = None,
        n_ctx: int = 4096,
        n_slots: int = 4,
        threads: int | None = None,
        n_batch: int = 512,
        prefill_chunk: int | None = None,
    ):
        import llama_cpp
        from llama_cpp import _internals

        if n_slots < 1:
            raise ValueError(f"n_slots must be at least 1, got {n_slots}")
        self._lib = llama_cpp
        path = Path(model_path)
        threads = threads or default_threads()
        # The Llama object owns the weights and the tokenizer; its own context is kept minimal and unused.
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=256, n_batch=32, n_threads=threads, verbose=False
        )
        self.vocab = Vocab(llm=self.llm)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_slots
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_slots
        params.kv_unified = False
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        with _quiet_native_stderr():  # llama.cpp logs its KV cache layout (e.g. full-size SWA) at WARN
            self._ctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        self.ctx = self._ctx.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_slots = n_slots
        self.n_batch = n_batch
        self.prefill_chunk = prefill_chunk or n_batch
        self.n_vocab = self.llm.n_vocab()
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._seqs: dict[int, _Sequence] = {}
        self._admitted = 0
        n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self.ctx))
        meta = self.vocab.metadata
        self.info = ModelInfo(
            name=name or path.stem,
            path=str(path),
            architecture=meta.get("general.architecture", "unknown"),
            n_ctx=min(n_ctx, n_ctx_seq),
            backend="llamacpp",
            vocab_size=self.n_vocab,
            bos_token=self.vocab.bos_token,
            eos_token=self.vocab.eos_token,
            chat_template=meta.get("tokenizer.chat_template"),
            n_ctx_train=self.llm._model.n_ctx_train(),
            threads=threads,
        )

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
        free = [s for s in range(self.n_slots) if s not in self._seqs]
        if not free:
            raise NoFreeSlot(f"all {self.n_slots} slots are busy")
        slot = free[0]
        self._admitted += 1
        self._seqs[slot] = _Sequence(
            pending=list(prompt),
            pos=0,
            sampler=sampler or Sampler(params),
            admitted=self._admitted,
            n_prompt=len(prompt),
            logprobs=params.logprobs,
        )
        return slot

    def remove(self, slot: int) -> None:
        if self._seqs.pop(slot, None) is not None:
            self._lib.llama_memory_seq_rm(self.memory, slot, -1, -1)

    def _plan(self) -> list[tuple[int, int]]:
        """(slot, n_tokens) to feed this step: every decoding slot's token, then prompt chunks, FIFO."""
        plan = [(slot, 1) for slot, s in self._seqs.items() if s.decoding]
        room = self.n_batch - len(plan)
        chunk = min(room, self.prefill_chunk)
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
        b = self._batch
        n = 0
        outputs: list[tuple[int, int]] = []  # (slot, batch index whose logits are sampled)
        for slot, take in plan:
            s = self._seqs[slot]
            last = take == len(s.pending)
            for k in range(take):
                b.token[n] = s.pending[k]
                b.pos[n] = s.pos + k
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = slot
                b.logits[n] = 1 if (last and k == take - 1) else 0
                n += 1
            if last:
                outputs.append((slot, n - 1))
        b.n_tokens = n
        rc = self._lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc} on a batch of {n} tokens")
        for slot, take in plan:
            s = self._seqs[slot]
            s.pos += take
            del s.pending[:take]
        sampled: dict[int, int | TokenLogprobs] = {}
        for slot, i in outputs:
            s = self._seqs[slot]
            logits = self._logits(i)
            token = s.sampler(logits)
            s.pending = [token]
            s.decoding = True
            sampled[slot] = token if s.logprobs is None else token_logprobs(logits, token, s.logprobs)
        return sampled

    def _logits(self, i: int) -> torch.Tensor:
        ptr = self._lib.llama_get_logits_ith(self.ctx, i)
        row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
        return torch.from_numpy(row)  # read before the next decode overwrites it

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
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self.llm.close()
