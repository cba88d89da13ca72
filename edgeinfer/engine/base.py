"""The contract every inference backend fulfils, so that the API, the CLI and the gateway serve any of them.

A backend knows its tokenizer and how to produce the next token ids; everything that is the same for all
backends (stop strings, max_tokens, UTF-8 reassembly, cancellation, timing) lives in ``engine.generate``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI-style sampling parameters. ``temperature == 0`` means greedy."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int | None = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0  # 0 = disabled, as in OpenAI

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class ModelInfo:
    name: str
    path: str
    architecture: str
    n_ctx: int
    n_params: int | None = None
    chat_template: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A loaded model able to tokenize and to stream sampled token ids."""

    info: ModelInfo

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]: ...

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        """Raw bytes of tokens (may end inside a UTF-8 sequence)."""
        ...

    def is_eog(self, token_id: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...)."""
        ...

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int]:
        """Yield sampled token ids forever (the caller stops); prefill happens before the first yield."""
        ...

    def close(self) -> None: ...
