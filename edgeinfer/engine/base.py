"""The contract every inference backend fulfils, so that the API, the CLI and the gateway serve any of them.

A backend knows its tokenizer and how to produce the next token ids; everything that is the same for all
backends (stop strings, max_tokens, UTF-8 reassembly, cancellation, timing) lives in ``engine.generate``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from edgeinfer.engine.logprobs import TokenLogprobs


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI-style sampling parameters. ``temperature == 0`` means greedy."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int | None = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0  # 0 = disabled, as in OpenAI
    # None: plain token ids; k >= 0: the backend yields ``engine.logprobs.TokenLogprobs`` with k alternatives
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded backend tells its callers about the model (the API, the CLI, the benchmarks)."""

    name: str  # the served name
    path: str
    architecture: str
    n_ctx: int  # context length this instance was loaded with
    backend: str  # "llamacpp" | "shard" | "cluster"
    vocab_size: int
    bos_token: str = ""  # text of the BOS token, "" if the model has none (for chat templates)
    eos_token: str = ""
    chat_template: str | None = None
    n_ctx_train: int | None = None  # context length the model was trained with
    threads: int | None = None
    weight_format: str | None = None  # shard engine: gguf, int8, bf16 or f32
    weight_bytes: int | None = None  # shard engine: bytes of weights held by this process


@runtime_checkable
class Backend(Protocol):
    """A loaded model able to tokenize and to stream sampled token ids."""

    info: ModelInfo

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids; with ``special=False`` special-token spellings in ``text`` stay plain text."""
        ...

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        """Raw bytes of tokens (may end inside a UTF-8 sequence)."""
        ...

    def is_eog(self, token_id: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...)."""
        ...

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int | TokenLogprobs]:
        """Yield sampled token ids forever (the caller stops); prefill happens before the first yield. With
        ``params.logprobs`` set, yield ``TokenLogprobs`` (the token id and its log probabilities) instead."""
        ...

    def close(self) -> None: ...
