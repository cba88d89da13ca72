"""Blocks shared by the architectures: config, RMSNorm, RoPE, weight-only-quantized linear, cached attention.

Numerics follow llama.cpp (the oracle in the tests): norms, RoPE and softmax run in float32; only the large
matrix products use the weight format chosen at load time: ``gguf`` (``GGUFLinear``, the stored blocks with
llama.cpp's integer arithmetic) or a dequantized int8 / bf16 / float32 copy (``Linear``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgeinfer import kernels
from edgeinfer.models.gguf_file import GGUFFile

WEIGHT_FORMATS = ("gguf", "int8", "bf16", "f32")
# bf16 matrix products through oneDNN with pre-packed weights (decode: 3x faster than F.linear, see
# docs/shard-engine.md); absent on builds without oneDNN or without the op, and on CPUs whose instruction set
# oneDNN's bf16 path does not support (no AVX-512 BW/VL/DQ nor AVX-NE-CONVERT: most AVX2-only x86, ARM):
# there the bf16 format falls back to F.linear on bf16 tensors
MKLDNN_BF16 = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    and bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
)


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    eps: float
    ctx_len: int
    rope_base: float
    rope_neox: bool  # True: rotate halves (qwen2, qwen3, gemma3); False: rotate interleaved pairs (llama)
    rope_scale: float = 1.0  # linear position scaling (positions are divided by it)
    rope_base_local: float | None = None  # gemma3: sliding-window layers use another base
    sliding_window: int = 0  # 0 = none
    swa_pattern: int = 0  # gemma3: every n-th layer is global, the others slide
    attn_scale: float | None = None  # None: 1/sqrt(head_dim)
    embed_scale: float = 1.0
    final_softcap: float = 0.0

    def is_sliding(self, layer: int) -> bool:
        return bool(
            self.sliding_window and self.swa_pattern and (layer % self.swa_pattern) < self.swa_pattern - 1
        )


# ---- small functions ------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_tables(
    positions: torch.Tensor,
    head_dim: int,
    base: float,
    scale: float = 1.0,
    freq_factors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_dim/2] for the given absolute positions."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if freq_factors is not None:  # llama 3.1 style per-frequency scaling (tensor rope_freqs.weight)
        inv_freq = inv_freq / freq_factors.double()
    angles = (positions.double()[:, None] / scale) * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """x: [heads, T, head_dim]."""
    if neox:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


# ---- weights ----------------------------------------------------------------------------------------------
class Linear:
    """y = x W^T (+ b) with W dequantized and held as per-row symmetric int8, bf16 or float32 (PyTorch's own
    kernels). Input/output are float32; activations are not rounded to 8 bits (see docs/shard-engine.md)."""

    def __init__(self, weight: np.ndarray | torch.Tensor, bias: np.ndarray | None, fmt: str):
        if fmt not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {fmt!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
        w = torch.as_tensor(weight, dtype=torch.float32)
        self.fmt = fmt
        self.out_features, self.in_features = w.shape
        self.bias = None if bias is None else torch.as_tensor(bias, dtype=torch.float32)
        if fmt == "int8":  # in row blocks, so that converting a large head needs no full-size temporaries
            self.weight = torch.empty(w.shape, dtype=torch.int8)
            scale = torch.empty(self.out_features)
            for i in range(0, self.out_features, 4096):
                rows = w[i : i + 4096]
                scale[i : i + 4096] = rows.abs().amax(dim=1).clamp(min=1e-12) / 127.0
                self.weight[i : i + 4096] = torch.round(rows / scale[i : i + 4096, None]).clamp(-127, 127)
            self.scale = scale.to(torch.bfloat16)
        elif fmt == "bf16":
            self.weight = w.to(torch.bfloat16)
            # oneDNN's blocked layout: its bf16 kernel is fast for one row too (F.linear is not)
            if MKLDNN_BF16:
                self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, 1)
        else:
            self.weight = w

    @property
    def nbytes(self) -> int:
        n = self.weight.numel() * self.weight.element_size()
        if self.fmt == "int8":
            n += self.scale.numel() * 2
        return n + (0 if self.bias is None else self.bias.numel() * 4)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scale).float()
        elif self.fmt == "bf16" and MKLDNN_BF16:
            y = torch.ops.mkldnn._linear_pointwise(
                x.to(torch.bfloat16), self.weight, None, "none", [], ""
            ).float()
        elif self.fmt == "bf16":
            y = F.linear(x.to(torch.bfloat16), self.weight).float()
        else:
            y = F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias


class GGUFLinear:
    """y = x W^T (+ b) computed on W's GGUF blocks as stored (format ``gguf``): the native kernel
    ``edgeinfer.kernels.qmatmul`` rounds x to 8-bit blocks and takes integer dot products, as llama.cpp does,
    reading 4.5-8.5 bits per weight. Storage types the kernel does not read (F32, Q4_1, Q5_1) are dequantized
    to float32. Matrices of the same type are stacked into one product."""

    def __init__(self, f: GGUFFile, names: list[str], bias: np.ndarray | None):
        self.parts: list[tuple[int | None, torch.Tensor]] = []  # (kernel type id or None = float32, weight)
        for name in names:
            type_id = kernels.TYPES.get(f.type_name(name))
            w = torch.from_numpy(f.blocks(name) if type_id is not None else f.load(name))
            if self.parts and type_id is not None and self.parts[-1][0] == type_id:
                w = torch.cat((self.parts.pop()[1], w))
            self.parts.append((type_id, w))
        self.in_features = f.shape(names[0])[1]
        self.bias = None if bias is None else torch.as_tensor(bias, dtype=torch.float32)

    @property
    def nbytes(self) -> int:
        n = sum(w.numel() * w.element_size() for _, w in self.parts)
        return n + (0 if self.bias is None else self.bias.numel() * 4)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        ys = [F.linear(x2, w) if t is None else kernels.qmatmul(x2, w, t) for t, w in self.parts]
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
        y = y.view(*x.shape[:-1], y.shape[-1])
        return y if self.bias is None else y + self.bias


def loaded_bytes(f: GGUFFile, name: str, fmt: str) -> int:
    """Bytes tensor ``name`` occupies once loaded in format ``fmt`` (as ``Linear`` / ``GGUFLinear`` hold
    matrices; vectors are float32), from the file's metadata alone."""
    shape = f.shape(name)
    numel = int(np.prod(shape))
    if len(shape) != 2:
        return numel * 4
    if fmt == "gguf":  # as GGUFLinear: stored bytes where the kernel reads the type, else float32
        return f.nbytes(name) if f.type_name(name) in kernels.TYPES else numel * 4
    return {"int8": numel + 2 * shape[0], "bf16": 2 * numel, "f32": 4 * numel}[fmt]


def linear(f: GGUFFile, name: str, fmt: str) -> Linear | GGUFLinear:
    """Load matrix ``name`` in format ``fmt`` (biased matrices are all fused: see ``fused_linear``)."""
    if fmt == "gguf":
        return GGUFLinear(f, [name], None)
    return Linear(f.load(name), None, fmt)


def fused_linear(
    f: GGUFFile, names: list[str], fmt: str, biases: list[str] | None = None
) -> Linear | GGUFLinear:
    """Matrices that read the same input (q/k/v; gate/up) stacked into one ``Linear``: one matrix product
    per step instead of several (the per-row int8 scales and bf16 values are the same as unfused). Biases
    the file lacks count as zero."""
    bias = None
    if biases is not None and any(f.has(b) for b in biases):
        bias = np.concatenate(
            [
                f.load(b) if f.has(b) else np.zeros(f.shape(n)[0], np.float32)
                for b, n in zip(biases, names, strict=True)
            ]
        )
    if fmt == "gguf":
        return GGUFLinear(f, names, bias)
    return Linear(np.concatenate([f.load(n) for n in names]), bias, fmt)


def vector(f: GGUFFile, name: str) -> torch.Tensor:
    return torch.from_numpy(f.load(name))


# ---- attention --------------------------------------------------------------------------------------------
# decode (few query rows per kv head): both products run on the fp16 cache through the native kernel, which
# rounds the other operand to fp16 as llama.cpp does, instead of converting the cache to float32 every step
DIRECT_ROWS = 16


def attention(
    q: torch.Tensor, k: torch.Tensor, vt: torch.Tensor, q_start: int, scale: float, window: int = 0
) -> torch.Tensor:
    """Causal (optionally sliding-window) attention of new queries over the cached keys.

    q: [n_heads, T, d] at absolute positions q_start..q_start+T-1; k: [n_kv, L, d] and vt (values,
    transposed): [n_kv, d, L] for positions 0..L-1 (L = q_start + T), fp16 as in llama.cpp's cache. A query
    at position p sees keys p0 with p0 <= p and, with a window, p - p0 < window. Like llama.cpp, q and the
    probabilities are rounded to fp16 for the two products, which sum in float32. Returns [T, n_heads * d].
    """
    n_heads, t, d = q.shape
    n_kv, length, _ = k.shape
    first = 0
    if window and length > window:  # keys no query of this batch can see are skipped entirely
        first = max(0, q_start - window + 1)
        k, vt = k[:, first:], vt[:, :, first:]
    groups = n_heads // n_kv
    qg = q.reshape(n_kv, groups * t, d)  # heads sharing a kv head are stacked
    direct = groups * t <= DIRECT_ROWS and kernels.available()
    if direct:
        scores = kernels.qmatmul(qg, k.view(torch.uint8), kernels.TYPES["F16"])
    else:
        scores = qg.half().float() @ k.float().transpose(1, 2)
    scores = scores.view(n_kv, groups, t, -1) * scale
    if t > 1 or (window and q_start - first >= window):
        qpos = torch.arange(q_start, q_start + t)[:, None]
        kpos = torch.arange(first, length)[None, :]
        visible = kpos <= qpos
        if window:
            visible &= (qpos - kpos) < window
        scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(n_kv, groups * t, -1)
    if direct:
        out = kernels.qmatmul(probs, vt.view(torch.uint8), kernels.TYPES["F16"])
    else:
        out = probs.half().float() @ vt.transpose(1, 2).float().contiguous()  # [n_kv, L, d]
    return out.view(n_heads, t, d).transpose(0, 1).reshape(t, n_heads * d)


def default_attn_scale(cfg: ModelConfig) -> float:
    return cfg.attn_scale if cfg.attn_scale is not None else 1.0 / math.sqrt(cfg.head_dim)
