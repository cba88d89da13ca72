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

    def close(self) -> None:
        self.llm.close()
