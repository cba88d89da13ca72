"""The shared llama.cpp tokenizer: round trips, end-of-generation tokens, a quiet vocabulary-only load."""

from __future__ import annotations

import pytest

from edgeinfer.engine.vocab import Vocab
from edgeinfer.models.synthetic import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("vocab") / "tiny.gguf", arch="llama", n_layers=1)


def test_round_trip_and_special_tokens(tiny, capfd):
    vocab = Vocab(tiny)
    try:
        ids = vocab.tokenize("the cat", add_bos=True)
        assert ids[0] == vocab.llm.token_bos() and len(ids) > 1
        assert vocab.token_bytes(ids[1:]).decode().strip() == "the cat"
        assert vocab.tokenize("the cat", add_bos=False) == ids[1:]
        assert vocab.is_eog(vocab.llm.token_eos()) and not vocab.is_eog(ids[-1])
        assert vocab.bos_token and vocab.eos_token and vocab.piece(-1) == ""
        assert vocab.metadata["general.architecture"] == "llama"
    finally:
        vocab.close()
    assert "n_ctx" not in capfd.readouterr().err  # llama.cpp's vocabulary-only chatter is held back


def test_unreadable_file_raises(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError):
        Vocab(bad)
