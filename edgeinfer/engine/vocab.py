"""The GGUF file's own tokenizer, through llama.cpp (llama-cpp-python), shared by every backend.

The shard engine and the cluster gateway load it vocabulary-only (no weights); the llama.cpp backend passes
its loaded model. Either way tokenization and detokenization are exactly llama.cpp's.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hold back what native code writes to stderr; show it only if the block fails.

    A vocabulary-only llama.cpp load logs a context-size error line at ERROR level (it has no context length)
    even with ``verbose=False``; users should not see it on every start."""
    sys.stderr.flush()
    saved = os.dup(2)
    python_side = io.StringIO()  # llama-cpp-python's log callback prints through sys.stderr
    with tempfile.TemporaryFile() as held, redirect_stderr(python_side):
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                native = held.read().decode("utf-8", errors="replace")
                print(native + python_side.getvalue(), file=sys.__stderr__)


class Vocab:
    def __init__(self, model_path: str | Path | None = None, *, llm: Any = None):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._owned = llm is None
        if llm is None:
            with _quiet_native_stderr():
                llm = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
        self.llm = llm

    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata)

    def piece(self, token: int, special: bool = True) -> str:
        """Text of one token ("" for none, e.g. a model without a BOS token)."""
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=special).decode("utf-8", errors="replace")

    @property
    def bos_token(self) -> str:
        return self.piece(self.llm.token_bos())

    @property
    def eos_token(self) -> str:
        return self.piece(self.llm.token_eos())

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``special=False`` reads special-token spellings (``<|im_end|>``) as plain
        text, for text a user wrote."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        return self.llm.detokenize(list(ids))

    def is_eog(self, token_id: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token_id))

    def close(self) -> None:
        if self._owned:
            self.llm.close()


class VocabMixin:
    """The tokenizer half of the ``Backend`` protocol, for backends holding a ``Vocab`` as ``self.vocab``."""

    vocab: Vocab

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, add_bos=add_bos, special=special)

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        return self.vocab.token_bytes(ids)

    def is_eog(self, token_id: int) -> bool:
        return self.vocab.is_eog(token_id)
