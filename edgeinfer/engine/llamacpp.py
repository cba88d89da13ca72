"""Whole-model backend on llama.cpp (llama-cpp-python)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from edgeinfer.engine.base import ModelInfo, SamplingParams
from edgeinfer.engine.logprobs import TokenLogprobs, token_logprobs
from edgeinfer.engine.threads import default_threads
from edgeinfer.engine.vocab import Vocab, VocabMixin

_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp: draw a fresh seed


class LlamaCppBackend(VocabMixin):
    def __init__(
        self,
        model_path: str | Path,
        name: str | None = None,
        n_ctx: int = 4096,
        threads: int | None = None,
        n_batch: int = 512,
    ):
        import llama_cpp

        path = Path(model_path)
        threads = threads or default_threads()
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(n_batch, n_ctx),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.vocab = Vocab(llm=self.llm)
        meta = self.vocab.metadata
        arch = meta.get("general.architecture", "unknown")
        self.info = ModelInfo(
            name=name or path.stem,
            path=str(path),
            architecture=arch,
            n_ctx=self.llm.n_ctx(),
            backend="llamacpp",
            vocab_size=self.llm.n_vocab(),
            bos_token=self.vocab.bos_token,
            eos_token=self.vocab.eos_token,
            chat_template=meta.get("tokenizer.chat_template"),
            n_ctx_train=self.llm._model.n_ctx_train(),
            threads=threads,
        )

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int | TokenLogprobs]:
        seed = _RANDOM_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        self.llm.set_seed(seed)
        tokens = self.llm.generate(
            list(prompt),
            temp=max(params.temperature, 0.0),
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
        )
        return tokens if params.logprobs is None else self._with_logprobs(tokens, params.logprobs)

    def _with_logprobs(self, tokens: Iterator[int], k: int) -> Iterator[TokenLogprobs]:
        """Each token with the log probabilities of the logits it was sampled from: those of the last
        evaluated position, still in the context when ``generate`` yields (it evaluates the token after)."""
        import ctypes

        import llama_cpp
        import numpy as np
        import torch

        n_vocab = self.llm.n_vocab()
        try:
            for token in tokens:
                ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
                row = np.ctypeslib.as_array(
                    ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)
                )
                yield token_logprobs(torch.from_numpy(row), token, k)
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()

    def open_sequence(self) -> LlamaSequence:
        """The context's sequence as a ``TokenModel`` (speculative decoding: several positions scored in one
        ``llama_decode``, KV rollback with ``llama_memory_seq_rm``). One at a time; it takes the context over
        from ``generate_tokens`` (whose prefix cache is reset)."""
        return LlamaSequence(self.llm)

    def close(self) -> None:
        self.llm.close()


class LlamaSequence:
    """Sequence 0 of a ``Llama``'s context, driven through the low-level API (a ``draft.TokenModel``)."""

    def __init__(self, llm):  # type: ignore[no-untyped-def]
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llm
        self.ctx = llm._ctx.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = llm.n_batch
        self.n_vocab = llm.n_vocab()
        self.length = 0
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._release()

    def _release(self) -> None:
        """Empty the KV cache and make ``Llama.generate`` forget its cached prefix."""
        self.llm.reset()
        self._lib.llama_memory_seq_rm(self.memory, -1, -1, -1)

    def feed(self, ids: Sequence[int], all_logits: bool = False):  # type: ignore[no-untyped-def]
        import ctypes

        import numpy as np
        import torch

        ids = list(ids)
        if not ids:
            raise ValueError("nothing to feed")
        if all_logits and len(ids) > self.n_batch:
            raise ValueError(f"at most {self.n_batch} positions per pass with all logits, got {len(ids)}")
        b = self._batch
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            last = start + len(chunk) == len(ids)
            for k, token in enumerate(chunk):
                b.token[k] = token
                b.pos[k] = self.length + k
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = 0
                b.logits[k] = 1 if last and (all_logits or k == len(chunk) - 1) else 0
            b.n_tokens = len(chunk)
            rc = self._lib.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with status {rc} on a batch of {len(chunk)} tokens")
            self.length += len(chunk)
        rows = len(ids) if all_logits else 1
        out = np.empty((rows, self.n_vocab), dtype=np.float32)
        first = len(chunk) - rows
        for r in range(rows):
            ptr = self._lib.llama_get_logits_ith(self.ctx, first + r)
            out[r] = np.ctypeslib.as_array(
                ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
            )
        return torch.from_numpy(out)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a sequence of {self.length} positions to {length}")
        self._lib.llama_memory_seq_rm(self.memory, 0, length, -1)
        self.length = length

    def close(self) -> None:
        if self._batch is not None:
            self._release()
            self._lib.llama_batch_free(self._batch)
            self._batch = None
