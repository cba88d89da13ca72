"""The llama family: Llama 2/3, TinyLlama, SmolLM, Qwen2 (llama + q/k/v biases), Qwen3 (llama + q/k RMSNorm).

    x = x + Wo · attn(rope(Wq·n(x) [+b]), rope(Wk·n(x) [+b]), Wv·n(x) [+b])      n = RMSNorm
    x = x + Wdown · (silu(Wgate·n(x)) * Wup·n(x))

Llama stores Q/K rows so that RoPE rotates interleaved pairs (llama.cpp's "normal" rope); Qwen rotates
halves ("neox").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeinfer.models.common import (
    ModelConfig,
    apply_rope,
    default_attn_scale,
    fused_linear,
    linear,
    rms_norm,
    vector,
)
from edgeinfer.models.gguf_file import GGUFError, GGUFFile
from edgeinfer.models.kv_cache import KVView

ARCHS = ("llama", "qwen2", "qwen3")


def config_from_gguf(f: GGUFFile) -> ModelConfig:
    if f.arch not in ARCHS:
        raise GGUFError(f"llama.py handles {ARCHS}, not {f.arch!r}")
    hidden = int(f.arch_get("embedding_length"))
    n_heads = int(f.arch_get("attention.head_count"))
    head_dim = int(f.arch_get("attention.key_length", hidden // n_heads))
    n_rot = int(f.arch_get("rope.dimension_count", head_dim))
    if n_rot != head_dim:
        raise GGUFError(
            f"partial rotary embeddings (rope.dimension_count={n_rot} < head_dim={head_dim}) unsupported"
        )
    scaling = f.arch_get("rope.scaling.type", "none")
    rope_scale = 1.0
    if scaling == "linear":
        rope_scale = float(f.arch_get("rope.scaling.factor", 1.0))
    elif scaling not in ("none", ""):
        raise GGUFError(f"rope scaling {scaling!r} is not supported (only linear)")
    return ModelConfig(
        arch=f.arch,
        n_layers=int(f.arch_get("block_count")),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=int(f.arch_get("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        ffn=int(f.arch_get("feed_forward_length")),
        vocab=f.shape("token_embd.weight")[0],
        eps=float(f.arch_get("attention.layer_norm_rms_epsilon", 1e-5)),
        ctx_len=int(f.arch_get("context_length", 2048)),
        rope_base=float(f.arch_get("rope.freq_base", 10000.0)),
        rope_neox=f.arch != "llama",
        rope_scale=rope_scale,
    )


class Block:
    def __init__(self, f: GGUFFile, cfg: ModelConfig, layer: int, fmt: str):
        p = f"blk.{layer}."
        self.cfg = cfg
        self.rope_key = (cfg.rope_base, cfg.rope_scale)  # which RoPE table this layer uses
        self.window = 0
        self.scale = default_attn_scale(cfg)
        self.attn_norm = vector(f, p + "attn_norm.weight")
        qkv = [p + f"attn_{m}.weight" for m in "qkv"]
        self.wqkv = fused_linear(f, qkv, fmt, biases=[p + f"attn_{m}.bias" for m in "qkv"])
        self.qkv_split = (
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
        )
        self.wo = linear(f, p + "attn_output.weight", fmt)
        self.q_norm = vector(f, p + "attn_q_norm.weight") if f.has(p + "attn_q_norm.weight") else None
        self.k_norm = vector(f, p + "attn_k_norm.weight") if f.has(p + "attn_k_norm.weight") else None
        self.ffn_norm = vector(f, p + "ffn_norm.weight")
        self.gate_up = fused_linear(f, [p + "ffn_gate.weight", p + "ffn_up.weight"], fmt)
        self.down = linear(f, p + "ffn_down.weight", fmt)

    @property
    def nbytes(self) -> int:
        mats = (self.wqkv, self.wo, self.gate_up, self.down)
        vecs = [v for v in (self.attn_norm, self.ffn_norm, self.q_norm, self.k_norm) if v is not None]
        return sum(m.nbytes for m in mats) + sum(v.numel() * 4 for v in vecs)

    def __call__(self, x: torch.Tensor, cache: KVView, li: int, rope: tuple[torch.Tensor, torch.Tensor]):
        cfg, t = self.cfg, x.shape[0]
        h = rms_norm(x, self.attn_norm, cfg.eps)
        q, k, v = self.wqkv(h).split(self.qkv_split, dim=-1)
        q = q.view(t, cfg.n_heads, cfg.head_dim).transpose(0, 1)
        k = k.view(t, cfg.n_kv_heads, cfg.head_dim).transpose(0, 1)
        v = v.view(t, cfg.n_kv_heads, cfg.head_dim).transpose(0, 1)
        if self.q_norm is not None:
            q = rms_norm(q, self.q_norm, cfg.eps)
            k = rms_norm(k, self.k_norm, cfg.eps)
        cos, sin = rope
        q = apply_rope(q, cos, sin, cfg.rope_neox)
        k = apply_rope(k, cos, sin, cfg.rope_neox)
        a = cache.attend(li, q, k, v, self.scale, self.window)
        x = x + self.wo(a)
        h = rms_norm(x, self.ffn_norm, cfg.eps)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)
