"""A chain of ``Shard`` objects in one process, served through the ``Backend`` protocol.

This is the whole model when there is one shard, and the reference for distributed pipelines otherwise:
the cluster code moves the same hidden states between machines that this class passes between shards.
Tokenization is llama.cpp's, on the same GGUF file (``vocab_only``: no weights are loaded twice).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from edgeinfer.engine.base import ModelInfo, SamplingParams
from edgeinfer.engine.decode import decode_tokens
from edgeinfer.engine.shard import Shard, layer_count
from edgeinfer.engine.vocab import Vocab, VocabMixin


def chain_bounds(n_layers: int, splits: Sequence[int] | None) -> list[tuple[int, int]]:
    """Layer ranges of a chain. ``splits`` are the interior cut points, e.g. ``[12]`` -> [(0, 12), (12, n)];
    a list that already starts with 0 and ends with n is accepted as the full boundary list."""
    cuts = list(splits or [])
    if cuts and cuts[0] == 0 and cuts[-1] == n_layers:
        cuts = cuts[1:-1]
    bounds = [0, *cuts, n_layers]
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)) or n_layers <= 0:
        raise ValueError(f"splits {list(splits or [])} must be strictly increasing inside (0, {n_layers})")
    return list(zip(bounds, bounds[1:], strict=False))


class ShardSequence:
    """One sequence on a chain of shards (a ``engine.draft.TokenModel``): feed several positions, get
    their logits, truncate the KV cache of every shard (speculative decoding)."""

    def __init__(self, shards: Sequence[Shard]):
        self.shards = list(shards)
        self.seq = uuid.uuid4().hex
        self.length = 0

    def feed(self, ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        x: torch.Tensor = torch.tensor(list(ids), dtype=torch.long)
        for shard in self.shards:
            x = shard.forward(self.seq, x, all_logits=all_logits and shard.outputs_logits)
        self.length += len(ids)
        return x if all_logits else x.unsqueeze(0)

    def truncate(self, length: int) -> None:
        for shard in self.shards:
            shard.truncate(self.seq, length)
        self.length = length

    def close(self) -> None:
        for shard in self.shards:
            shard.drop(self.seq)


def shard_model_info(name: str, path: Path, shards: Sequence[Shard], vocab: Vocab) -> ModelInfo:
    """What a backend made of shard-engine shards (a chain from layer 0) tells its callers."""
    first = shards[0]
    return ModelInfo(
        name=name,
        path=str(path),
        architecture=first.arch,
        n_ctx=first.max_seq_len,
        backend="shard",
        vocab_size=first.vocab_size,
        bos_token=vocab.bos_token,
        eos_token=vocab.eos_token,
        chat_template=first.chat_template,
        n_ctx_train=first.cfg.ctx_len,
        threads=first.threads,
        weight_format=first.weight_format,
        weight_bytes=sum(s.weight_bytes for s in shards),
    )


class ShardBackend(VocabMixin):
    def __init__(
        self,
        model_path: str | Path,
        splits: list[int] | None = None,
        threads: int | None = None,
        *,
        name: str | None = None,
        n_ctx: int = 4096,
        weight_format: str = "auto",
    ):
        path = Path(model_path)
        bounds = chain_bounds(layer_count(path), splits)
        self.shards = [
            Shard(path, a, b, threads=threads, max_seq_len=n_ctx, weight_format=weight_format)
            for a, b in bounds
        ]
        self.vocab = Vocab(path)
        self.info = shard_model_info(name or path.stem, path, self.shards, self.vocab)

    # ---- compute ------------------------------------------------------------------------------------------
    def forward(self, seq_id: str, ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        """Run token ids through the chain; logits of the last position ([T, vocab] with all_logits)."""
        x: torch.Tensor = torch.tensor(list(ids), dtype=torch.long)
        for shard in self.shards:
            x = shard.forward(seq_id, x, all_logits=all_logits and shard.is_last)
        return x

    def drop(self, seq_id: str) -> None:
        for shard in self.shards:
            shard.drop(seq_id)

    def open_sequence(self) -> ShardSequence:
        """A new sequence as a ``TokenModel`` (speculative decoding: several positions, KV rollback)."""
        return ShardSequence(self.shards)

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int]:
        if not prompt:
            raise ValueError("the prompt must contain at least one token")
        if len(prompt) >= self.info.n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.info.n_ctx}")
        return self._generate(list(prompt), params)

    def _generate(self, prompt: list[int], params: SamplingParams) -> Iterator[int]:
        seq = uuid.uuid4().hex
        try:
            yield from decode_tokens(lambda ids, _: self.forward(seq, ids), prompt, params, self.info.n_ctx)
        finally:
            self.drop(seq)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()
        self.vocab.close()
