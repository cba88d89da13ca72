"""A contiguous range of transformer layers of a GGUF model, with its own per-sequence KV caches.

``Shard(path, 0, n)`` is the whole model. The first shard (start 0) embeds token ids; the last (end n)
applies the final norm and the LM head; the ones in between map hidden states to hidden states. Only the
tensors of the shard's layers (plus embeddings / head where needed) are read from the memory-mapped file.
Chaining shards gives exactly the whole model's computation, so the chain can be cut across machines.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from edgeinfer import kernels
from edgeinfer.engine.threads import default_threads
from edgeinfer.models import gemma3, llama
from edgeinfer.models.common import WEIGHT_FORMATS, linear, loaded_bytes, rms_norm, rope_tables
from edgeinfer.models.gguf_file import GGUFError, GGUFFile
from edgeinfer.models.kv_cache import KVBatch, KVCache

ARCH_MODULES: dict[str, ModuleType] = {a: m for m in (llama, gemma3) for a in m.ARCHS}


def default_weight_format() -> str:
    """``gguf`` (the stored blocks through the native kernels: fastest and llama.cpp's arithmetic) where the
    kernels build; otherwise ``int8`` (docs/shard-engine.md)."""
    return "gguf" if kernels.available() else "int8"


def _arch_module(f: GGUFFile) -> ModuleType:
    try:
        return ARCH_MODULES[f.arch]
    except KeyError:
        raise GGUFError(
            f"{f.path.name}: architecture {f.arch!r} is not supported by the shard engine "
            f"(supported: {', '.join(sorted(ARCH_MODULES))})"
        ) from None


def layer_count(model_path: str | Path) -> int:
    """Number of transformer blocks, read from metadata only."""
    f = GGUFFile(model_path)
    try:
        return int(f.arch_get("block_count"))
    finally:
        f.close()


def layer_weight_bytes(model_path: str | Path, weight_format: str = "auto") -> list[int]:
    """Weight bytes of every layer once loaded in ``weight_format``, from metadata only. Layers differ: a
    Q4_K_M file mixes storage types, and the ``gguf`` format keeps each type's size."""
    fmt = default_weight_format() if weight_format == "auto" else weight_format
    f = GGUFFile(model_path)
    try:
        sizes = [0] * int(f.arch_get("block_count"))
        for name in f.tensors:
            parts = name.split(".")
            if parts[0] == "blk":
                sizes[int(parts[1])] += loaded_bytes(f, name, fmt)
        return sizes
    finally:
        f.close()


def _release_freed_heap() -> None:
    """Hand the dequantization temporaries back to the OS (glibc keeps freed memory otherwise: about 1 GB
    of resident set for Qwen2.5 0.5B)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Shard:
    def __init__(
        self,
        model_path: str | Path,
        start_layer: int,
        end_layer: int,
        *,
        threads: int | None = None,
        max_seq_len: int | None = None,
        exit_at: int | None = None,
        weight_format: str = "auto",
    ):
        fmt = default_weight_format() if weight_format == "auto" else weight_format
        if fmt not in WEIGHT_FORMATS:
            raise ValueError(
                f"weight_format must be 'auto' or one of {', '.join(WEIGHT_FORMATS)}, got {fmt!r}"
            )
        if fmt == "gguf":
            kernels.load()  # a clear error (KernelUnavailable) now rather than at the first product
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads or default_threads()
        torch.set_num_threads(self.threads)

        f = GGUFFile(model_path)
        module = _arch_module(f)
        cfg = module.config_from_gguf(f)
        n = cfg.n_layers
        if not 0 <= start_layer < end_layer <= n:
            raise ValueError(f"layer range [{start_layer}, {end_layer}) is invalid for a model of {n} layers")
        if exit_at is not None and not start_layer < exit_at <= end_layer:
            raise ValueError(f"exit_at={exit_at} must lie in ({start_layer}, {end_layer}]")
        self.cfg = cfg
        self.arch = cfg.arch
        self.n_layers = n
        self.start_layer, self.end_layer, self.exit_at = start_layer, end_layer, exit_at
        self.is_first = start_layer == 0
        self.is_last = end_layer == n
        self.hidden_size = cfg.hidden
        self.vocab_size = cfg.vocab
        self.weight_format = fmt
        self.max_seq_len = min(max_seq_len or cfg.ctx_len, cfg.ctx_len)
        self.outputs_logits = self.is_last or exit_at is not None

        with torch.inference_mode():
            self.blocks = [module.Block(f, cfg, i, fmt) for i in range(start_layer, exit_at or end_layer)]
            self.freq_factors = (
                torch.from_numpy(f.load("rope_freqs.weight")) if f.has("rope_freqs.weight") else None
            )
            self.output_norm = self.head = None
            if self.outputs_logits:
                self.output_norm = torch.from_numpy(f.load("output_norm.weight"))
                head_name = "output.weight" if f.has("output.weight") else "token_embd.weight"  # tied
                self.head = linear(f, head_name, fmt)
        self._rope_keys = sorted({b.rope_key for b in self.blocks})
        self.weight_bytes = sum(b.nbytes for b in self.blocks)
        if self.head is not None:
            self.weight_bytes += self.head.nbytes + self.output_norm.numel() * 4
        self.chat_template: str | None = f.get("tokenizer.chat_template", None)
        # The first shard looks embeddings up in the memory-mapped file; the others release it now.
        self._file = f if self.is_first else None
        if not self.is_first:
            f.close()
        self._caches: dict[str, KVCache] = {}
        self._lock = threading.Lock()
        _release_freed_heap()

    # ---- sequences ----------------------------------------------------------------------------------------
    def _cache(self, seq_id: str) -> KVCache:
        cache = self._caches.get(seq_id)
        if cache is None:
            cfg = self.cfg
            cache = KVCache(len(self.blocks), cfg.n_kv_heads, cfg.head_dim, self.max_seq_len)
            self._caches[seq_id] = cache
        return cache

    def seq_len(self, seq_id: str) -> int:
        cache = self._caches.get(seq_id)
        return 0 if cache is None else cache.length

    def truncate(self, seq_id: str, length: int) -> None:
        if seq_id not in self._caches:
            raise KeyError(f"unknown sequence {seq_id!r}")
        self._caches[seq_id].truncate(length)

    def drop(self, seq_id: str) -> None:
        self._caches.pop(seq_id, None)

    def sequences(self) -> list[str]:
        return list(self._caches)

    # ---- compute ------------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        assert self._file is not None
        rows = self._file.rows("token_embd.weight", ids.numpy().astype(np.int64))
        x = torch.from_numpy(rows)
        return x * self.cfg.embed_scale if self.cfg.embed_scale != 1.0 else x

    def _check_input(self, x: torch.Tensor) -> None:
        if self.is_first:
            if x.dim() != 1 or x.dtype not in (torch.int64, torch.int32) or x.numel() == 0:
                raise ValueError(
                    f"the first shard takes a 1-D tensor of token ids, got {tuple(x.shape)} {x.dtype}"
                )
            if int(x.min()) < 0 or int(x.max()) >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        elif x.dim() != 2 or x.shape[1] != self.hidden_size or x.shape[0] == 0 or not x.is_floating_point():
            raise ValueError(
                f"shard [{self.start_layer}, {self.end_layer}) takes float hidden states "
                f"[T, {self.hidden_size}], "
                f"got {tuple(x.shape)} {x.dtype}"
            )

    def forward(self, seq_id: str, x: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """x: LongTensor [T] token ids if is_first else float tensor [T, hidden] hidden states.
        Appends T positions to seq_id's KV cache (positions implicit = current cache length; creates the
        sequence if new). Returns hidden states [T, hidden] (float32), or on the last shard / exit_at
        logits [vocab] for the last position ([T, vocab] when all_logits)."""
        self._check_input(x)
        with self._lock, torch.inference_mode():
            cache = self._cache(seq_id)
            t = x.shape[0]
            cache.reserve(t)
            h = self.embed(x) if self.is_first else x.float()
            positions = torch.arange(cache.length, cache.length + t)
            ropes = {
                key: rope_tables(positions, self.cfg.head_dim, key[0], key[1], self.freq_factors)
                for key in self._rope_keys
            }
            for li, block in enumerate(self.blocks):
                h = block(h, cache, li, ropes[block.rope_key])
            cache.advance(t)
            if not self.outputs_logits:
                return h
            return self._logits(h if all_logits else h[-1:])[slice(None) if all_logits else 0]

    def forward_batch(
        self, batch: Sequence[tuple[str, torch.Tensor]], outputs: Sequence[bool] | None = None
    ) -> list[torch.Tensor | None]:
        """Several sequences in one pass (continuous batching, ``engine.shard_batch``): ``batch`` holds
        (seq_id, x) as ``forward`` takes them, each sequence at most once. The linear layers see the rows of
        every sequence at once (the weights are read once per step); attention runs per sequence over its
        own KV cache. Returns per sequence what ``forward`` does (on the last shard: the logits of its last
        position), or None where ``outputs`` is False (e.g. a prompt chunk whose logits nobody samples)."""
        if not batch:
            return []
        if len({seq for seq, _ in batch}) != len(batch):
            raise ValueError("a sequence may appear only once in a batch")
        outputs = [True] * len(batch) if outputs is None else list(outputs)
        if len(outputs) != len(batch):
            raise ValueError(f"outputs has {len(outputs)} entries for a batch of {len(batch)}")
        for _, x in batch:
            self._check_input(x)
        with self._lock, torch.inference_mode():
            caches = [self._cache(seq) for seq, _ in batch]
            sizes = [int(x.shape[0]) for _, x in batch]
            for cache, t in zip(caches, sizes, strict=True):
                cache.reserve(t)
            x = torch.cat([x for _, x in batch])
            h = self.embed(x) if self.is_first else x.float()
            positions = torch.cat(
                [torch.arange(c.length, c.length + t) for c, t in zip(caches, sizes, strict=True)]
            )
            ropes = {
                key: rope_tables(positions, self.cfg.head_dim, key[0], key[1], self.freq_factors)
                for key in self._rope_keys
            }
            view = KVBatch(list(zip(caches, sizes, strict=True)))
            for li, block in enumerate(self.blocks):
                h = block(h, view, li, ropes[block.rope_key])
            for cache, t in zip(caches, sizes, strict=True):
                cache.advance(t)
            ends = torch.tensor(sizes).cumsum(0) - 1
            if not self.outputs_logits:
                return [part if want else None for part, want in zip(h.split(sizes), outputs, strict=True)]
            wanted = [i for i, want in enumerate(outputs) if want]
            result: list[torch.Tensor | None] = [None] * len(batch)
            if wanted:
                logits = self._logits(h[ends[wanted]])
                for row, i in enumerate(wanted):
                    result[i] = logits[row]
            return result

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.head(rms_norm(h, self.output_norm, self.cfg.eps))
        cap = self.cfg.final_softcap
        return torch.tanh(logits / cap) * cap if cap > 0 else logits

    def close(self) -> None:
        self._caches.clear()
        self.blocks = []
        self.head = None
        if self._file is not None:
            self._file.close()
            self._file = None
