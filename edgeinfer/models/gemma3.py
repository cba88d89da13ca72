"""Gemma 3 (text): the llama skeleton with Gemma's twists, as llama.cpp computes it.

    x = embed(tokens) * sqrt(hidden)
    per layer:  h = Wo · attn(rope(qnorm(Wq·n(x))), rope(knorm(Wk·n(x))), Wv·n(x))
                x = x + post_attn_norm(h)
                x = x + post_ffn_norm(Wdown · (gelu_tanh(Wgate·n(x)) * Wup·n(x)))
    logits = Wembed · n(x)          (tied embeddings; soft-capped only if the file defines a cap)

Five of every six layers use sliding-window attention (window from metadata) with RoPE base 10000; every
sixth layer is global with the file's RoPE base (and its linear scaling, if any). The GGUF converter has
already folded Gemma's ``1 + weight`` into the stored RMSNorm weights, so the norm is the plain one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgeinfer.models.common import ModelConfig, apply_rope, fused_linear, linear, rms_norm, vector
from edgeinfer.models.gguf_file import GGUFError, GGUFFile
from edgeinfer.models.kv_cache import KVView

ARCHS = ("gemma3",)
SWA_PATTERN = 6  # llama.cpp: layers il with il % 6 < 5 slide
LOCAL_ROPE_BASE = 10000.0


def config_from_gguf(f: GGUFFile) -> ModelConfig:
    if f.arch not in ARCHS:
        raise GGUFError(f"gemma3.py handles {ARCHS}, not {f.arch!r}")
    hidden = int(f.arch_get("embedding_length"))
    n_heads = int(f.arch_get("attention.head_count"))
    n_layers = int(f.arch_get("block_count"))
    head_dim = int(f.arch_get("attention.key_length", 256))
    window = int(f.arch_get("attention.sliding_window", 0))
    scaling = f.arch_get("rope.scaling.type", "none")
    rope_scale = float(f.arch_get("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    if scaling not in ("none", "", "linear"):
        raise GGUFError(f"rope scaling {scaling!r} is not supported (only linear)")
    # query_pre_attn_scalar: head_dim for all sizes except the 27B (62 layers), which uses hidden / n_heads
    attn_scale = 1.0 / math.sqrt(hidden / n_heads if n_layers == 62 else head_dim)
    return ModelConfig(
        arch=f.arch,
        n_layers=n_layers,
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=int(f.arch_get("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        ffn=int(f.arch_get("feed_forward_length")),
        vocab=f.shape("token_embd.weight")[0],
        eps=float(f.arch_get("attention.layer_norm_rms_epsilon", 1e-6)),
        ctx_len=int(f.arch_get("context_length", 32768)),
        rope_base=float(f.arch_get("rope.freq_base", 1_000_000.0)),
        rope_neox=True,
        rope_scale=rope_scale,
        rope_base_local=LOCAL_ROPE_BASE,
        sliding_window=window,
        swa_pattern=SWA_PATTERN if window > 0 else 0,
        attn_scale=attn_scale,
        embed_scale=math.sqrt(hidden),
        final_softcap=float(f.arch_get("final_logit_softcapping", 0.0)),
    )


class Block:
    def __init__(self, f: GGUFFile, cfg: ModelConfig, layer: int, fmt: str):
        p = f"blk.{layer}."
        self.cfg = cfg
        sliding = cfg.is_sliding(layer)
        self.window = cfg.sliding_window if sliding else 0
        self.rope_key = (cfg.rope_base_local, 1.0) if sliding else (cfg.rope_base, cfg.rope_scale)
        self.attn_norm = vector(f, p + "attn_norm.weight")
        self.q_norm = vector(f, p + "attn_q_norm.weight")
        self.k_norm = vector(f, p + "attn_k_norm.weight")
        self.post_attn_norm = vector(f, p + "post_attention_norm.weight")
        self.ffn_norm = vector(f, p + "ffn_norm.weight")
        self.post_ffn_norm = vector(f, p + "post_ffw_norm.weight")
        self.wqkv = fused_linear(f, [p + f"attn_{m}.weight" for m in "qkv"], fmt)
        self.qkv_split = (
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
        )
        self.wo = linear(f, p + "attn_output.weight", fmt)
        self.gate_up = fused_linear(f, [p + "ffn_gate.weight", p + "ffn_up.weight"], fmt)
        self.down = linear(f, p + "ffn_down.weight", fmt)

    @property
    def nbytes(self) -> int:
        mats = (self.wqkv, self.wo, self.gate_up, self.down)
        vecs = (
            self.attn_norm,
            self.q_norm,
            self.k_norm,
            self.post_attn_norm,
            self.ffn_norm,
            self.post_ffn_norm,
        )
        return sum(m.nbytes for m in mats) + sum(v.numel() * 4 for v in vecs)

    def __call__(self, x: torch.Tensor, cache: KVView, li: int, rope: tuple[torch.Tensor, torch.Tensor]):
        cfg, t = self.cfg, x.shape[0]
        h = rms_norm(x, self.attn_norm, cfg.eps)
        q, k, v = self.wqkv(h).split(self.qkv_split, dim=-1)
        q = rms_norm(q.view(t, cfg.n_heads, cfg.head_dim).transpose(0, 1), self.q_norm, cfg.eps)
        k = rms_norm(k.view(t, cfg.n_kv_heads, cfg.head_dim).transpose(0, 1), self.k_norm, cfg.eps)
        v = v.view(t, cfg.n_kv_heads, cfg.head_dim).transpose(0, 1)
        cos, sin = rope
        q = apply_rope(q, cos, sin, neox=True)
        k = apply_rope(k, cos, sin, neox=True)
        a = cache.attend(li, q, k, v, cfg.attn_scale, self.window)
        x = x + rms_norm(self.wo(a), self.post_attn_norm, cfg.eps)
        h = rms_norm(x, self.ffn_norm, cfg.eps)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        ffn = self.down(F.gelu(gate, approximate="tanh") * up)
        return x + rms_norm(ffn, self.post_ffn_norm, cfg.eps)
