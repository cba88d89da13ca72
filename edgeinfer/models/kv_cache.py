"""The key/value cache of one sequence on one shard: per local layer, the keys and values of all positions.

Storage grows by doubling (no context-length-sized allocation up front). A forward pass of T new tokens
calls ``update`` once per layer (which writes positions [length, length+T) and returns the keys/values of
positions [0, length+T)), then ``advance(T)``. ``truncate`` rolls the sequence back, e.g. after a rejected
speculative draft or for a retried request. Entries are fp16, as in llama.cpp's default cache. Values are
stored transposed ([n_kv, head_dim, positions], as llama.cpp does without flash attention) so that the
attention's probability-weighted sum reads each output dimension as one contiguous row.

A block reaches its cache through ``attend`` (store the new keys / values, attend over all positions), so
``KVBatch`` -- several sequences' caches behind one batch of rows -- can stand in for one cache: the linear
layers then see the rows of every sequence at once while attention runs per sequence over its own cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from edgeinfer.models.common import attention


class KVView(Protocol):
    """What a model block needs from its cache: one call per layer for the rows of a forward pass."""

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int = 0
    ) -> torch.Tensor: ...


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_len: int, dtype=torch.float16):
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.max_len = max_len
        self.dtype = dtype
        self.length = 0
        self._capacity = 0
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []

    def _grow(self, needed: int) -> None:
        capacity = min(self.max_len, max(needed, 2 * self._capacity, 64))
        k_shape = (self.n_kv_heads, capacity, self.head_dim)
        v_shape = (self.n_kv_heads, self.head_dim, capacity)
        new_k = [torch.empty(k_shape, dtype=self.dtype) for _ in range(self.n_layers)]
        new_v = [torch.empty(v_shape, dtype=self.dtype) for _ in range(self.n_layers)]
        if self._capacity:
            for old, new in zip(self._k, new_k, strict=True):
                new[:, : self.length] = old[:, : self.length]
            for old, new in zip(self._v, new_v, strict=True):
                new[:, :, : self.length] = old[:, :, : self.length]
        self._k, self._v, self._capacity = new_k, new_v, capacity

    def reserve(self, n_new: int) -> None:
        """Make room for ``n_new`` more positions; raises if the sequence would exceed ``max_len``."""
        needed = self.length + n_new
        if needed > self.max_len:
            raise ValueError(
                f"sequence would have {needed} positions; this shard's max_seq_len is {self.max_len}"
            )
        if needed > self._capacity:
            self._grow(needed)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([n_kv, T, d]) after the current length; return the keys [n_kv, L, d] and the values,
        transposed, [n_kv, d, L] of all L positions (views of the cache)."""
        end = self.length + k.shape[1]
        self._k[layer][:, self.length : end] = k
        self._v[layer][:, :, self.length : end] = v.transpose(1, 2)
        return self._k[layer][:, :end], self._v[layer][:, :, :end]

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int = 0
    ) -> torch.Tensor:
        """Store k, v ([n_kv, T, d]) after the current length and return the causal attention of q
        ([n_heads, T, d], at the positions after the current length) over all positions: [T, n_heads * d]."""
        keys, values_t = self.update(layer, k, v)
        return attention(q, keys, values_t, self.length, scale, window)

    def advance(self, n_new: int) -> None:
        self.length += n_new

    def truncate(self, length: int) -> None:
        if length < 0:
            raise ValueError(f"cannot truncate to a negative length ({length})")
        self.length = min(self.length, length)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._k + self._v)


class KVBatch:
    """The caches of several sequences behind one batch of rows: ``parts`` are (cache, rows) in row order.
    Each sequence's rows attend over its own cache only, exactly as when it runs alone."""

    def __init__(self, parts: Sequence[tuple[KVCache, int]]):
        self.parts = list(parts)

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int = 0
    ) -> torch.Tensor:
        out = []
        start = 0
        for cache, n in self.parts:
            end = start + n
            out.append(cache.attend(layer, q[:, start:end], k[:, start:end], v[:, start:end], scale, window))
            start = end
        return out[0] if len(out) == 1 else torch.cat(out)
