"""What a GGUF file tells the roofline: shapes, parameter counts and the bytes a decode step reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelStats:
    name: str
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_params: int  # every weight in the file
    matmul_params: int  # weights multiplied per token (the output projection included, lookups excluded)
    file_tensor_bytes: int  # sum of all tensor bytes
    decode_weight_bytes: int  # bytes of weights read to produce one token
    tied_embeddings: bool
    output_params: int = 0  # weights of the output projection (n_vocab x n_embd), part of matmul_params

    def kv_bytes_per_position(self, kv_elem_bytes: float = 2.0) -> float:
        """K and V bytes stored per context position over all layers (f16 cache by default)."""
        return self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v) * kv_elem_bytes

    def decode_bytes(self, context: int, kv_elem_bytes: float = 2.0) -> float:
        """Bytes read to decode one token with ``context`` positions already in the KV cache."""
        return self.decode_weight_bytes + context * self.kv_bytes_per_position(kv_elem_bytes)

    def flops_per_token(self, context: int) -> float:
        """2 FLOPs per weight multiply-add plus attention scores and weighted values over ``context``."""
        attn = 2 * self.n_layer * self.n_head * (self.head_dim_k + self.head_dim_v) * context
        return 2.0 * self.matmul_params + attn

    def prefill_flops_per_token(self, n_tokens: int) -> float:
        """FLOPs per prompt token of a prefill of ``n_tokens``: every layer multiplies every token, but the
        output projection runs for the last position only (llama.cpp computes only the logits it returns),
        and attention spans n / 2 positions on average."""
        if n_tokens < 1:
            raise ValueError("n_tokens must be >= 1")
        return self.flops_per_token(n_tokens // 2) - 2.0 * self.output_params * (1 - 1 / n_tokens)


def read_stats(path: str | Path) -> ModelStats:
    """Read shapes and tensor sizes from a GGUF header (tensor data is not touched)."""
    from edgeinfer.models.gguf_file import GGUFError, GGUFFile

    path = Path(path)
    try:
        f = GGUFFile(path)
    except (GGUFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc

    def meta(key: str, default=...):  # type: ignore[no-untyped-def]
        value = f.arch_get(key, default)
        return value[0] if isinstance(value, list) else value  # per-layer lists: the first layer's value

    n_embd = int(meta("embedding_length"))
    n_head = int(meta("attention.head_count"))
    n_head_kv = meta("attention.head_count_kv", n_head)
    n_head_kv = int(n_head_kv[0] if isinstance(n_head_kv, list) else n_head_kv)
    head_k = int(meta("attention.key_length", n_embd // n_head))
    head_v = int(meta("attention.value_length", head_k))
    tensors = f.tensors
    embd = tensors.get("token_embd.weight")
    if embd is None:
        raise ValueError(f"{path}: no token_embd.weight tensor")
    n_vocab = int(max(embd.shape))
    tied = "output.weight" not in tensors
    n_params = sum(int(t.n_elements) for t in tensors.values())
    total_bytes = sum(int(t.n_bytes) for t in tensors.values())
    # the embedding is a lookup (one row per token) unless the output projection reuses it
    embd_read = int(embd.n_bytes) if tied else int(embd.n_bytes) // n_vocab
    decode_bytes = total_bytes - int(embd.n_bytes) + embd_read
    matmul = sum(
        int(t.n_elements) for n, t in tensors.items() if len(t.shape) >= 2 and n != "token_embd.weight"
    )
    if tied:
        matmul += int(embd.n_elements)
    return ModelStats(
        name=str(f.get("general.name", path.stem)),
        architecture=str(f.arch),
        n_layer=int(meta("block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        n_vocab=n_vocab,
        n_params=n_params,
        matmul_params=matmul,
        file_tensor_bytes=total_bytes,
        decode_weight_bytes=decode_bytes,
        tied_embeddings=tied,
        output_params=int(embd.n_elements) if tied else int(tensors["output.weight"].n_elements),
    )
