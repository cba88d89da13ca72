"""Tiny random-weight GGUF models (llama / qwen2 / qwen3 architecture) that llama.cpp can load, for tests.

The file has a minimal SentencePiece-style vocabulary (specials, the 256 byte tokens, a few words) so that
llama.cpp's tokenizer works on any text, and weights in several storage types (F32 norms, F16, BF16, Q8_0,
Q5_0, Q4_0 matrices) so that the dequantization paths are exercised too. Random weights are scaled so that
activations stay O(1) and logits have clear winners, which makes top-1 comparisons meaningful.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ARCHS = ("llama", "qwen2", "qwen3")  # qwen2: llama + q/k/v biases; qwen3: llama + per-head q/k RMSNorm
WORDS = (
    "▁the",
    "▁a",
    "▁of",
    "▁and",
    "▁to",
    "▁in",
    "▁is",
    "▁it",
    "▁that",
    "▁on",
    "▁was",
    "▁for",
    "▁sea",
    "▁ship",
)
# storage type per matrix, cycling through the layers (all quantizable by gguf.quants)
MATRIX_TYPES = ("Q8_0", "Q5_0", "F16", "Q4_0", "BF16")


def _vocab(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    # SentencePiece merges adjacent pieces only into pieces in the vocabulary: add letters and word prefixes
    pieces = ["▁", *"abcdefghijklmnopqrstuvwxyz.,"]
    for word in WORDS:
        pieces += [word[:i] for i in range(2, len(word) + 1) if word[:i] not in pieces]
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    if vocab_size < len(tokens):
        raise ValueError(f"vocab_size must be >= {len(tokens)} (specials + 256 bytes + words)")
    extra = vocab_size - len(tokens)
    tokens += [f"▁w{i}" for i in range(extra)]
    types += [TokenType.NORMAL] * extra
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: str | Path,
    arch: str = "llama",
    n_layers: int = 4,
    hidden: int = 128,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn: int = 256,
    vocab_size: int = 384,
    ctx_len: int = 1024,
    seed: int = 0,
    tied: bool = False,
    matrix_types: tuple[str, ...] = MATRIX_TYPES,
    output_type: str = "Q8_0",
) -> Path:
    """Write a random model and return its path. ``hidden``, ``ffn`` must be multiples of 32 (block size).

    ``matrix_types`` (cycled over the layers) and ``output_type`` pick the storage of the layer matrices and
    the LM head; all ``"F32"`` gives a model that llama.cpp evaluates without quantizing activations."""
    import gguf

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if hidden % 32 or ffn % 32 or hidden % n_heads or n_heads % n_kv_heads:
        raise ValueError(
            "hidden and ffn must be multiples of 32; n_heads must divide hidden; n_kv_heads n_heads"
        )
    head_dim = hidden // n_heads
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}-{n_layers}L-random")
    w.add_block_count(n_layers)
    w.add_context_length(ctx_len)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0 if arch == "llama" else 1_000_000.0)
    w.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    tokens, scores, types = _vocab(vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    def mat(name: str, out_f: int, in_f: int, qtype: str, gain: float = 1.0) -> None:
        data = (rng.standard_normal((out_f, in_f)) * gain / np.sqrt(in_f)).astype(np.float32)
        kind = gguf.GGMLQuantizationType[qtype]
        if kind == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        elif kind == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)

    def vec(name: str, n: int, center: float, spread: float) -> None:
        w.add_tensor(name, (center + spread * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", vocab_size, hidden, "Q8_0", gain=np.sqrt(hidden))
    vec("output_norm.weight", hidden, 1.0, 0.1)
    if not tied:
        mat("output.weight", vocab_size, hidden, output_type, gain=16.0)
    kv = n_kv_heads * head_dim
    for i in range(n_layers):
        p, q = f"blk.{i}.", matrix_types[i % len(matrix_types)]
        vec(p + "attn_norm.weight", hidden, 1.0, 0.1)
        mat(p + "attn_q.weight", hidden, hidden, q)
        mat(p + "attn_k.weight", kv, hidden, q)
        mat(p + "attn_v.weight", kv, hidden, q)
        if arch == "qwen2":
            vec(p + "attn_q.bias", hidden, 0.0, 0.5)
            vec(p + "attn_k.bias", kv, 0.0, 0.5)
            vec(p + "attn_v.bias", kv, 0.0, 0.5)
        if arch == "qwen3":
            vec(p + "attn_q_norm.weight", head_dim, 1.0, 0.1)
            vec(p + "attn_k_norm.weight", head_dim, 1.0, 0.1)
        mat(p + "attn_output.weight", hidden, hidden, q, gain=0.5)
        vec(p + "ffn_norm.weight", hidden, 1.0, 0.1)
        mat(p + "ffn_gate.weight", ffn, hidden, q)
        mat(p + "ffn_up.weight", ffn, hidden, q)
        mat(p + "ffn_down.weight", hidden, ffn, q, gain=0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
