"""Several sequences on one llama.cpp context: multi-sequence batches, chunked prefill, per-slot sampling.

One context holds ``n_slots`` sequences (``n_seq_max``), each with its own part of the KV cache
(``kv_unified = false``: ``n_ctx = n_slots x`` the context per slot). A step is one ``llama_decode`` over a
batch that carries the last sampled token of every decoding slot plus a chunk of the oldest prompt still
being prefilled, so a new request joins the running batch and a long prompt is spread over several steps. Each
slot samples its logits row with the project's ``Sampler`` (greedy = argmax, seeded per request); the
slots and the step's plan are ``engine.slots``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from edgeinfer.engine.base import ModelInfo
from edgeinfer.engine.logprobs import TokenLogprobs
from edgeinfer.engine.slots import Slot, SlotBackend, SlotTable
from edgeinfer.engine.threads import default_threads
from edgeinfer.engine.vocab import Vocab, VocabMixin, _quiet_native_stderr


class LlamaCppBatchBackend(SlotBackend, VocabMixin):
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
        self.n_batch = n_batch
        self.prefill_chunk = prefill_chunk or n_batch
        self.n_vocab = self.llm.n_vocab()
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
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
        self.slots = SlotTable(n_slots, self.info.n_ctx, self.n_vocab)

    def _release(self, slot: int, s: Slot) -> None:
        self._lib.llama_memory_seq_rm(self.memory, slot, -1, -1)

    def step(self) -> dict[int, int | TokenLogprobs]:
        plan = self.slots.plan(self.n_batch, self.prefill_chunk)
        if not plan:
            return {}
        b = self._batch
        n = 0
        outputs: list[tuple[int, int]] = []  # (slot, batch index whose logits are sampled)
        for slot, take in plan:
            s = self.slots[slot]
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
            self.slots.fed(slot, take)
        return {slot: self.slots.sample(slot, self._logits(i)) for slot, i in outputs}

    def _logits(self, i: int) -> torch.Tensor:
        ptr = self._lib.llama_get_logits_ith(self.ctx, i)
        row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
        return torch.from_numpy(row)  # read before the next decode overwrites it

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self.llm.close()
