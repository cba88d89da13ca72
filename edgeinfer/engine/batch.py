"""The contract of a backend that advances several sequences in one decode step (continuous batching).

A batch backend holds up to ``n_slots`` sequences, each with its own KV cache, sampler and position. ``step``
runs one forward pass over every active slot: running sequences contribute their last sampled token, new
ones chunks of their prompt (chunked prefill, so a long prompt does not stall the streams that are decoding),
and it returns the token sampled for each slot that produced one. Everything per request that is not
"compute the next token" (stop strings, max_tokens, UTF-8, timing, cancellation) stays in ``engine.generate``;
the scheduler (``engine.scheduler``) drives both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from edgeinfer.engine.base import ModelInfo, SamplingParams
from edgeinfer.engine.logprobs import TokenLogprobs

KV_BYTES_PER_VALUE = 2  # llama.cpp's default KV cache type is f16


class NoFreeSlot(RuntimeError):
    pass


@runtime_checkable
class BatchBackend(Protocol):
    """A loaded model serving up to ``n_slots`` sequences at once; ``info.n_ctx`` is the context per slot."""

    info: ModelInfo
    n_slots: int

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]: ...

    def token_bytes(self, ids: Sequence[int]) -> bytes: ...

    def is_eog(self, token_id: int) -> bool: ...

    def add(self, prompt: Sequence[int], params: SamplingParams) -> int:
        """Take a free slot for a new sequence (its prompt is prefilled by the next steps); the slot id."""
        ...

    def step(self) -> dict[int, int | TokenLogprobs]:
        """One forward pass over the active slots; the token sampled for each slot that produced one (with
        its log probabilities when the slot's ``SamplingParams.logprobs`` asked for them)."""
        ...

    def remove(self, slot: int) -> None:
        """End a slot's sequence and free its KV cache at once."""
        ...

    @property
    def n_active(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class KVShape:
    """What one token costs in the KV cache of a model: layers x (key + value) widths."""

    n_layer: int
    n_embd_k: int  # key width per token per layer (kv heads x key length)
    n_embd_v: int

    def bytes_per_slot(self, n_ctx: int) -> int:
        return self.n_layer * n_ctx * (self.n_embd_k + self.n_embd_v) * KV_BYTES_PER_VALUE


def kv_shape(model_path: str) -> KVShape:
    """The KV cache shape from a GGUF file's metadata (no weights are read)."""
    from edgeinfer.models.gguf_file import GGUFFile

    f = GGUFFile(model_path)
    try:
        n_layer = int(f.arch_get("block_count"))
        n_head = int(f.arch_get("attention.head_count"))
        n_head_kv = f.arch_get("attention.head_count_kv", n_head)
        if not isinstance(n_head_kv, int):  # per-layer list in some architectures: take the widest
            n_head_kv = max(int(x) for x in n_head_kv)
        head_dim = int(f.arch_get("embedding_length")) // n_head
        k_len = int(f.arch_get("attention.key_length", head_dim))
        v_len = int(f.arch_get("attention.value_length", head_dim))
    finally:
        f.close()
    return KVShape(n_layer=n_layer, n_embd_k=int(n_head_kv) * k_len, n_embd_v=int(n_head_kv) * v_len)


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable)."""
    import psutil

    return int(psutil.virtual_memory().available)


DEFAULT_PARALLEL = 4


class ParallelDoesNotFit(ValueError):
    pass


def check_parallel(n_slots: int, per_slot: int, available: int, headroom: float = 0.5) -> None:
    """Refuse ``n_slots`` KV caches that would take more than ``headroom`` of the available memory."""
    if n_slots < 1:
        raise ParallelDoesNotFit(f"--parallel must be at least 1, got {n_slots}")
    need = n_slots * per_slot
    if need > headroom * available:
        mib = 1 << 20
        fits = max(0, int(headroom * available // per_slot))
        raise ParallelDoesNotFit(
            f"--parallel {n_slots} needs {need / mib:.0f} MiB of KV cache "
            f"({per_slot / mib:.1f} MiB per slot at this --ctx-size) but only "
            f"{available / mib:.0f} MiB of memory is available "
            f"(at most {headroom:.0%} of it is used for KV caches); use --parallel {fits} or less, "
            "or a smaller --ctx-size"
        )


def default_parallel(per_slot: int, available: int, headroom: float = 0.5) -> int:
    """``DEFAULT_PARALLEL`` slots, or as many as fit in ``headroom`` of the available memory (at least 1)."""
    return max(1, min(DEFAULT_PARALLEL, int(headroom * available // max(per_slot, 1))))


def plan_parallel(model_paths: Sequence[str], n_ctx: int, requested: int | None) -> int:
    """The slots per model: ``requested`` if the KV caches of every model fit, else an error; the default
    (``None``) is ``DEFAULT_PARALLEL`` or as many as fit."""
    per_slot = sum(kv_shape(str(p)).bytes_per_slot(n_ctx) for p in model_paths)
    available = available_memory()
    if requested is None:
        return default_parallel(per_slot, available)
    check_parallel(requested, per_slot, available)
    return requested
