"""GGUFFile reads metadata and single tensors of a real GGUF file written by the fixture writer."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.models.gguf_file import GGUFError, GGUFFile
from edgeinfer.models.synthetic import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", arch="qwen2", n_layers=5)


def test_metadata(tiny):
    f = GGUFFile(tiny)
    assert f.arch == "qwen2"
    assert f.arch_get("block_count") == 5
    assert f.arch_get("embedding_length") == 128
    assert f.get("tokenizer.ggml.model") == "llama"
    assert f.array_len("tokenizer.ggml.tokens") == 384
    assert f.get("no.such.key", None) is None
    with pytest.raises(GGUFError, match="no.such.key"):
        f.get("no.such.key")


def test_long_arrays_are_skipped_not_lost(tiny, monkeypatch):
    import edgeinfer.models.gguf_file as gf

    monkeypatch.setattr(gf, "LONG_ARRAY", 100)  # the 384-entry vocabulary now counts as long
    f = GGUFFile(tiny)
    assert f.array_len("tokenizer.ggml.tokens") == 384
    assert f.array_len("tokenizer.ggml.scores") == 384
    assert f.load("blk.0.attn_q.weight").shape == (128, 128)  # tensor offsets still right after the skip


@pytest.mark.parametrize("layer", range(5))  # one layer per storage type: Q8_0, Q5_0, F16, Q4_0, BF16
def test_dequantized_matrices_are_close_to_a_gaussian_draw(tiny, layer):
    f = GGUFFile(tiny)
    w = f.load(f"blk.{layer}.ffn_up.weight")
    assert w.shape == (256, 128) and w.dtype == np.float32
    # written as N(0, 1/128): the dequantized values must have that spread, not garbage
    assert abs(float(w.std()) - 128**-0.5) < 0.01
    assert abs(float(w.mean())) < 0.01


def test_rows_equal_full_load(tiny):
    f = GGUFFile(tiny)
    ids = np.array([0, 5, 383, 5])
    np.testing.assert_array_equal(f.rows("token_embd.weight", ids), f.load("token_embd.weight")[ids])
    with pytest.raises(IndexError):
        f.rows("token_embd.weight", np.array([384]))


def test_missing_tensor_and_bad_file(tiny, tmp_path):
    f = GGUFFile(tiny)
    assert f.shape("token_embd.weight") == (384, 128)
    with pytest.raises(GGUFError, match="blk.9"):
        f.load("blk.9.attn_q.weight")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        GGUFFile(junk)
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "absent.gguf")
